"""`mnist serve` against the floor of its own stack, side by side in one run.

Three servers on 127.0.0.1, each its own process under the same uvicorn: `mnist serve`; a bare
Starlette app that decodes the PNG with Pillow, shrinks it to 28x28 and runs the same ONNX
model (the floor of this job in this stack, without the digit clean-up); and the same app
with no image work and no model (the stack alone). One asyncio client (keep-alive, raw
sockets: it costs far less per request than the servers) posts the same canvas PNG to each in
turn, in rounds, so that drift on a shared machine falls on all three alike. The ratio to the
floor is the figure to read; absolute requests/s vary 3-4x between machines.

    python benchmarks/serve_floor.py [--requests 1000] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import free_port
from PIL import Image, ImageDraw

from mnist_cli.infer.backends import BUNDLED_MODELS
from mnist_cli.options import BackendName

BARE_APP = """
import io, sys
import numpy as np, onnxruntime, uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import Route

port, model, work = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "model"
session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name

def read(data):
    image = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.BILINEAR)
    pixels = (np.asarray(image, np.float32) / 255)[None, None]
    return int(session.run(None, {name: pixels})[0].argmax())

async def predict(request):
    body = await request.body()
    if not work:
        return JSONResponse({"results": [{"name": "image", "digit": 0}]})
    digit = await run_in_threadpool(read, body)
    return JSONResponse({"results": [{"name": "image", "digit": digit}]})

async def health(request):
    return JSONResponse({"status": "ok"})

app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""

DEADLINE_S = 120  # one side's round stops by itself after this


def canvas_png(size: int = 263, seed: int = 0) -> bytes:
    """A digit drawn the way the serve page draws one: white strokes on an opaque black RGBA
    canvas."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGBA", (size, size), (0, 0, 0, 255))
    points = [
        (int(rng.integers(size * 0.3, size * 0.7)), int(rng.integers(size * 0.15, size * 0.85)))
        for _ in range(5)
    ]
    ImageDraw.Draw(image).line(points, fill=(255, 255, 255, 255), width=20, joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def _exchange(reader, writer, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    return int(status_line.split()[1]), body


async def _load(port: int, bodies: list[bytes], requests: int, concurrency: int) -> dict:
    prepared = [
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
        for body in bodies
    ]
    latencies: list[float] = []
    failures: list[str] = []
    sent = 0
    deadline = time.monotonic() + DEADLINE_S

    async def worker() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while sent < requests and time.monotonic() < deadline:
                index, sent = sent, sent + 1
                started = time.perf_counter()
                try:
                    status, body = await _exchange(reader, writer, prepared[index % len(prepared)])
                    ok = status == 200 and b'"digit"' in body
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    status, body, ok = 0, str(error).encode(), False
                latencies.append(time.perf_counter() - started)
                if not ok:
                    failures.append(f"{status} {body[:120].decode(errors='replace')}")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "failures": failures,
        "rate": len(latencies) / wall,
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def _wait_until_up(port: int, process: subprocess.Popen, label: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{label} exited with {process.returncode}")
        try:
            status, _ = asyncio.run(_get(port, "/health"))
            if status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{label} did not start within 60 s")


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        return await _exchange(reader, writer, request)
    finally:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", type=int, default=263, help="side of the canvas PNG")
    parser.add_argument("--workers", type=int, default=1, help="mnist serve --workers")
    args = parser.parse_args()
    model = BUNDLED_MODELS[BackendName.onnxruntime]
    ports = {name: free_port() for name in ("mnist serve", "bare floor", "stack alone")}
    serve = [sys.executable, "-m", "mnist_cli", "serve", "--model", str(model), "--quiet"]
    serve += ["--host", "127.0.0.1", "--port", str(ports["mnist serve"])]
    serve += ["--workers", str(args.workers)] if args.workers > 1 else []
    commands = {
        "mnist serve": serve,
        "bare floor": [sys.executable, "-c", BARE_APP, str(ports["bare floor"]), str(model)],
        "stack alone": [sys.executable, "-c", BARE_APP, str(ports["stack alone"]), str(model)],
    }
    commands["bare floor"].append("model")
    commands["stack alone"].append("none")
    bodies = [canvas_png(args.size, seed) for seed in range(16)]
    processes = {name: subprocess.Popen(command) for name, command in commands.items()}
    results: dict[str, list[dict]] = {name: [] for name in commands}
    try:
        for name, process in processes.items():
            _wait_until_up(ports[name], process, name)
        for name in commands:  # warm-up: first requests pay for imports and allocations
            asyncio.run(_load(ports[name], bodies, 100, args.concurrency))
        for _ in range(args.rounds):
            for name in commands:
                load = _load(ports[name], bodies, args.requests, args.concurrency)
                results[name].append(asyncio.run(load))
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait(timeout=30)
    print(
        f"{args.size}x{args.size} canvas PNGs, {args.requests} requests x {args.rounds} rounds "
        f"per side, concurrency {args.concurrency}, {Path('/proc/cpuinfo').exists() and _cores()}"
        " cores"
    )
    print("| server | requests/s | p50 ms | p99 ms | failed |")
    print("|---|---|---|---|---|")
    summary = {}
    for name, rounds in results.items():
        rate = statistics.median(r["rate"] for r in rounds)
        p50 = statistics.median(r["p50"] for r in rounds) * 1000
        p99 = max(r["p99"] for r in rounds) * 1000
        failed = sum(len(r["failures"]) for r in rounds)
        summary[name] = rate
        print(f"| {name} | {rate:,.0f} | {p50:.1f} | {p99:.1f} | {failed} |")
        for failure in [f for r in rounds for f in r["failures"]][:3]:
            print(f"  failure: {failure}")
    ratio = summary["mnist serve"] / summary["bare floor"]
    print(f"mnist serve / bare floor: {ratio:.2f} (goal: at least 0.5)")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
