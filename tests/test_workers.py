"""`mnist serve --workers N`: several processes on one port, stopped together."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mnist_cli.infer.prediction import SAMPLES

BUNDLED = SAMPLES.parent / "pretrained" / "cnn.onnx"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(model, *extra: str) -> tuple[subprocess.Popen, int]:
    """`mnist serve --workers 2` on a free port, once it answers /health."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mnist_cli", "serve", "-m", str(model), "--port", str(port)]
        + ["--workers", "2", *extra],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError(f"the server did not answer: {server.stderr.read()[-500:]}")


def _workers(pid: int) -> list[int]:
    """The worker processes `pid` has spawned (multiprocessing's spawn_main), from /proc."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                spawned = b"spawn_main" in handle.read()
        except (OSError, IndexError):
            continue
        if parent == pid and spawned:
            found.append(int(entry))
    return found


def _gone(pids: list[int], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]:
            return True
        time.sleep(0.2)
    return False


def test_workers_answer_and_a_signal_stops_them_all():
    server, port = _start(BUNDLED)
    try:
        workers = _workers(server.pid)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        image = (SAMPLES / "drawn-7.png").read_bytes()
        connection.request("POST", "/predict", image, {"content-type": "image/png"})
        response = connection.getresponse()
        status, body = response.status, response.read()
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    log = server.stderr.read()
    assert status == 200 and json.loads(body)["results"][0]["digit"] == 7
    assert len(workers) == 2
    assert code == -signal.SIGTERM and "Traceback" not in log  # 143 in a shell, as one process
    assert _gone(workers)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT])
def test_a_closed_terminal_ends_the_workers_as_it_ends_one_server(sig):
    # uvicorn's supervisor would restart its workers on SIGHUP; one server dies of it.
    server, _ = _start(BUNDLED)
    workers = _workers(server.pid)
    server.send_signal(sig)
    try:
        code = server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert code == -sig and _gone(workers)


def test_workers_stop_when_their_supervisor_is_killed():
    server, _ = _start(BUNDLED)
    workers = _workers(server.pid)
    server.kill()  # SIGKILL: it cannot stop them; they notice and stop themselves
    server.wait(timeout=30)
    assert len(workers) == 2 and _gone(workers)


def test_a_model_that_went_bad_stops_the_workers_with_one_line(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(BUNDLED, model)
    server, _ = _start(model)
    try:
        workers = _workers(server.pid)
        model.write_text("not a model")  # replaced after the check; then a worker restarts
        os.kill(workers[0], signal.SIGKILL)
        code = server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    log = server.stderr.read()
    assert code == 1 and "Traceback" not in log
    assert f"a worker could not open {model}; all workers were stopped" in log
    assert _gone(workers)
