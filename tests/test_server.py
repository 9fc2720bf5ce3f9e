"""`mnist serve`: the HTTP API over a checked model, and what it does with bad requests."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from mnist_cli.data import load_split
from mnist_cli.infer.backends import open_model
from mnist_cli.infer.httpguard import LOOPBACK_HOSTS, Limits
from mnist_cli.infer.prediction import SAMPLES
from mnist_cli.infer.server import create_app, listen, uvicorn_server


@pytest.fixture(scope="module")
def served(trained, exported):
    path = exported
    app = create_app(open_model(path), Limits(max_upload=200_000, max_images=4, read_timeout=2))
    test = load_split(trained["data_dir"], "test")
    pngs = []
    for i in range(6):
        buffer = io.BytesIO()
        Image.fromarray(255 - test.images[i]).resize((84, 84)).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return TestClient(app), pngs, [int(x) for x in test.labels[:6]], path


def test_health_names_the_model(served):
    client, _, _, path = served
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == str(path)
    assert health["backend"] == "onnxruntime" and health["provider"] and health["version"]


def test_one_image_in_the_body(served):
    client, pngs, labels, _ = served
    response = client.post("/predict", content=pngs[0], headers={"content-type": "image/png"})
    assert response.status_code == 200
    (result,) = response.json()["results"]
    assert result["digit"] == labels[0] and 0.5 < sum(result["probabilities"]) <= 1 + 1e-4
    assert result["text"] == str(labels[0]) and len(result["digits"]) == 1
    assert len(result["top"]) == 3 and result["top"][0][0] == result["digit"]
    assert np.array(result["input"]).shape == (28, 28)


def test_several_images_answer_in_order(served):
    client, pngs, labels, _ = served
    files = [("image", (f"{i}.png", pngs[i], "image/png")) for i in range(4)]
    response = client.post("/predict", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["name"] for r in results] == [f"{i}.png" for i in range(4)]
    assert sum(r["digit"] == t for r, t in zip(results, labels[:4], strict=True)) >= 3


def test_a_bad_file_among_good_ones_is_an_error_in_its_place(served):
    client, pngs, _, _ = served
    files = [("a", ("a.png", pngs[0], "image/png")), ("b", ("b.png", b"not an image", "image/png"))]
    results = client.post("/predict", files=files).json()["results"]
    assert "digit" in results[0] and "not a readable image" in results[1]["error"]


def _bomb() -> bytes:
    """A tiny PNG whose header declares 10,000 x 10,000 pixels."""
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "body, headers, status, fragment",
    [
        (b"plain text", {"content-type": "text/plain"}, 415, "send an image"),
        (b"", {"content-type": "image/png"}, 400, "empty"),
        (bytes(300_000), {"content-type": "image/png"}, 413, "over 200,000 bytes"),
        (b'{"x": 1}', {"content-type": "application/json"}, 415, "not application/json"),
    ],
)
def test_bad_requests_get_a_4xx_and_json(served, body, headers, status, fragment):
    client, _, _, _ = served
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == status and fragment in response.json()["error"]


def test_a_lone_image_the_server_cannot_use_is_a_422(served):
    client, _, _, _ = served
    for body, fragment in ((b"\x89PNG garbage", "not a readable image"), (_bomb(), "too large")):
        response = client.post("/predict", content=body, headers={"content-type": "image/png"})
        assert response.status_code == 422
        answer = response.json()
        assert fragment in answer["error"] and fragment in answer["results"][0]["error"]
        assert " at 0x" not in response.text and "object" not in response.text


def test_too_many_images_in_one_request(served):
    client, pngs, _, _ = served
    files = [("image", (f"{i}.png", pngs[0], "image/png")) for i in range(5)]
    response = client.post("/predict", files=files)
    assert response.status_code == 413 and response.json()["error"] == "over 4 files in one request"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LIVE_LIMITS = Limits(max_upload=200_000, max_images=4, read_timeout=2, header_timeout=1)


@contextmanager
def serving(model, **options):
    """`mnist serve`'s own uvicorn server for `model` on 127.0.0.1, in a thread: its URL."""
    import threading
    import time

    sock = listen("127.0.0.1", 0)
    server = uvicorn_server(
        model, limits=LIVE_LIMITS, log_level="warning", allowed_hosts=LOOPBACK_HOSTS, **options
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def live(served):
    """`mnist serve`'s own server over the served model, for real sockets: URL and port."""
    with serving(open_model(served[3])) as url:
        yield url, int(url.rpartition(":")[2])


def test_a_client_that_stops_sending_times_out(served, live):
    import socket
    import time

    _, pngs, _, _ = served
    _, port = live
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        head = (
            "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(pngs[0])}\r\n\r\n"
        )
        sock.sendall(head.encode() + pngs[0][:100])  # then nothing more
        answer = b""
        while b"took over" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
        answer = answer.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408") and "slower than 4,096 bytes a second" in answer
    assert time.monotonic() - started < 15


def test_metrics_count_requests_and_latency(served):
    client, pngs, _, _ = served
    before = client.get("/metrics").json()["requests"]
    client.post("/predict", content=pngs[1], headers={"content-type": "image/png"})
    client.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    metrics = client.get("/metrics").json()
    assert metrics["requests"] == before + 2 and metrics["by_status"]["415"] >= 1
    assert 0 < metrics["latency_seconds"]["p50"] <= metrics["latency_seconds"]["p99"]


def test_the_page_is_self_contained(served):
    client, _, _, _ = served
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # no CDN
    assert 'fetch("/predict"' in page.text


def test_no_route_reads_a_file_named_by_the_client(served):
    client, _, _, _ = served
    for path in ("/../../etc/passwd", "/static/../cli.py", "/predict?path=/etc/passwd"):
        response = client.get(path)
        assert response.status_code in (404, 405) and "root:" not in response.text


def test_serving_onnx_never_imports_torch(served, fresh_python):
    _, _, _, path = served
    _, imported = fresh_python(
        "from mnist_cli.infer.backends import open_model\n"
        "from mnist_cli.infer.server import create_app\n"
        f"create_app(open_model({str(path)!r}))"
    )
    assert imported == []


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def draw(page, points):
    """Drag the mouse through `points` (canvas fractions) on the drawing pad, as a hand would."""
    box = page.locator("#pad").bounding_box()
    to_page = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    page.mouse.move(*to_page[0])
    page.mouse.down()
    for point in to_page[1:]:
        page.mouse.move(*point, steps=8)
    page.mouse.up()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian package `chromium`)")
def test_a_digit_drawn_in_a_real_browser_is_read(live, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    url, _ = live
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(url)
            assert "Draw a digit or a number on the black pad" in page.locator("#bars").inner_text()
            card = page.locator(".panel").nth(1).bounding_box()
            draw(page, [(0.5, 0.15), (0.5, 0.5), (0.5, 0.85)])  # a "1"
            guess = page.locator("#guess")
            sync_api.expect(guess).to_have_text("1", timeout=15_000)
            assert page.locator("#bars .bar").count() == 3
            assert page.locator(".panel").nth(1).bounding_box() == card  # nothing jumped
            page.click("#clear")
            sync_api.expect(guess).to_have_text("", timeout=5_000)
            page.wait_for_timeout(1_000)  # an answer still in flight must not repaint it
            sync_api.expect(guess).to_have_text("", timeout=100)
            draw(page, [(0.25, 0.2), (0.75, 0.2), (0.4, 0.85)])  # a "7"
            sync_api.expect(guess).not_to_have_text("", timeout=15_000)
            page.click("#clear")
            draw(page, [(0.25, 0.2), (0.25, 0.8)])  # a number: "11"
            draw(page, [(0.7, 0.2), (0.7, 0.8)])
            sync_api.expect(guess).to_have_text("11", timeout=15_000)
            assert page.locator("#bars .bar").count() == 2  # a bar per digit
            boxed = page.evaluate(
                "() => document.getElementById('marks').getContext('2d')"
                ".getImageData(0, 0, 280, 280).data.filter((v, i) => i % 4 == 3 && v).length"
            )
            assert boxed > 400  # a box drawn around each digit, on its own layer
            page.screenshot(path=str(tmp_path / "page.png"))
            page.set_input_files("#file", str(SAMPLES / "drawn-7.png"))  # an upload
            sync_api.expect(guess).to_have_text("7", timeout=15_000)
            ink = page.evaluate(
                "() => { const c = document.getElementById('pad').getContext('2d');"
                " return c.getImageData(0, 0, 280, 280).data"
                ".filter((v, i) => i % 4 == 0 && v > 128).length; }"
            )
            assert ink > 500  # the uploaded image is shown on the pad
            phone = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True)
            phone.goto(url)
            assert phone.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways
            draw(phone, [(0.5, 0.15), (0.5, 0.5), (0.5, 0.85)])
            sync_api.expect(phone.locator("#guess")).to_have_text("1", timeout=15_000)
            pad, card = phone.locator("#pad").bounding_box(), phone.locator(".panel").nth(1)
            assert pad["x"] >= 0 and pad["x"] + pad["width"] <= 390
            assert card.bounding_box()["width"] <= 390
            phone.screenshot(path=str(tmp_path / "phone.png"))
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 1000


def test_mnist_serve_answers_then_stops_on_sigterm(served):
    import http.client
    import signal
    import time

    _, pngs, _, path = served
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mnist_cli", "serve", "-m", str(path), "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline, health = time.monotonic() + 60, None
        while health is None and time.monotonic() < deadline and server.poll() is None:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                health = json.loads(connection.getresponse().read())
            except OSError:
                time.sleep(0.2)
        assert health is not None and health["model"] == str(path)
        connection.request("POST", "/predict", body=pngs[0], headers={"Content-Type": "image/png"})
        assert connection.getresponse().status == 200
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    log = server.stderr.read()
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM) and "Traceback" not in log
    assert "Serving on http://127.0.0.1" in log and "Shutting down" in log
    assert "POST /predict" not in log and "Uvicorn running on" not in log  # no access log


def test_serve_checks_the_model_before_listening(tmp_path):
    from typer.testing import CliRunner

    from mnist_cli.cli import app

    (tmp_path / "m.onnx").write_text("not a model")
    result = CliRunner().invoke(app, ["serve", "-m", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "m.onnx: a text file" in result.output


def _connect(port: int):
    import socket

    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _get(port: int, path: str, headers: dict[str, str] | None = None):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_idle_and_slow_header_connections_neither_stall_others_nor_stay(live):
    import time

    _, port = live
    idle = [_connect(port) for _ in range(300)]  # more than uvicorn's old 256-place cap
    for sock in idle[:100]:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
    started = time.monotonic()
    status, health = _get(port, "/health")
    assert status == 200 and health["status"] == "ok"
    assert time.monotonic() - started < 2  # answered beside the flood, not after it
    deadline = time.monotonic() + 5  # header_timeout is 1 s here
    open_ones = list(idle)
    while open_ones and time.monotonic() < deadline:
        for sock in list(open_ones):
            sock.settimeout(0.05)
            try:
                if sock.recv(1) == b"":
                    open_ones.remove(sock)
            except TimeoutError:
                pass
    for sock in idle:
        sock.close()
    assert not open_ones, f"{len(open_ones)} idle connections were still open"


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Host": "evil.example"}, 421),  # DNS rebinding: a name that resolves to 127.0.0.1
        ({"Host": "localhost.evil.example"}, 421),
        ({"Origin": "http://evil.example"}, 403),  # another site's page
        ({"Host": "localhost:1"}, 200),
        ({"Host": "[::1]:8000"}, 200),
        ({"Host": "[::1]evil.example"}, 421),  # a name glued to an address
        ({"Host": "localhost:1@evil.example"}, 421),  # userinfo
        ({"Origin": "https://127.0.0.1"}, 403),  # another scheme is another origin
    ],
)
def test_only_this_servers_names_and_origin_are_answered(live, headers, status):
    _, port = live
    answered, body = _get(port, "/health", headers)
    assert answered == status and ("error" in body) == (status != 200)


def test_a_page_of_the_same_origin_may_post(live, served):
    import http.client

    _, pngs, _, _ = served
    _, port = live
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    origin = f"http://127.0.0.1:{port}"
    headers = {"Content-Type": "image/png", "Origin": origin}
    connection.request("POST", "/predict", body=pngs[0], headers=headers)
    response = connection.getresponse()
    assert response.status == 200 and "access-control-allow-origin" not in response.headers


def test_allowed_hosts_follow_the_address_bound():
    from mnist_cli.infer.httpguard import allowed_hosts_for

    assert allowed_hosts_for("127.0.0.1") == list(LOOPBACK_HOSTS)
    assert allowed_hosts_for("::1") == list(LOOPBACK_HOSTS)
    assert allowed_hosts_for("localhost", ["digits.lan"]) == [*LOOPBACK_HOSTS, "digits.lan"]
    assert allowed_hosts_for("0.0.0.0") is None  # any name, unless --allowed-host names some
    assert allowed_hosts_for("0.0.0.0", ["digits.lan"]) == [
        *LOOPBACK_HOSTS,
        "digits.lan",
        "0.0.0.0",
    ]


def _webp(side: int) -> bytes:
    """A lossless WebP of side x side pixels: a few KB that decode to side**2 pixels."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 255).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def test_decoding_is_bounded_per_request(served):
    import time

    client, pngs, _, path = served
    app = create_app(open_model(path), Limits(max_images=64, max_pixels=1_000_000))
    small = TestClient(app)
    big = _webp(3000)  # 9 MP from ~1 KB: over the 1 MP budget on its own
    assert len(big) < 20_000
    started = time.monotonic()
    response = small.post("/predict", content=big, headers={"content-type": "image/webp"})
    assert response.status_code == 422
    assert "more than this request may decode" in response.json()["error"]
    files = [(f"f{i}", (f"{i}.webp", _webp(800), "image/webp")) for i in range(64)]
    files[0] = ("f0", ("0.png", pngs[0], "image/png"))
    results = small.post("/predict", files=files).json()["results"]
    assert "digit" in results[0] and results[1]["reason"] == "not a digit (blank)"  # decoded
    refused = [r for r in results if "more than this request may decode" in r.get("error", "")]
    assert len(results) == 64 and len(refused) == 62
    assert time.monotonic() - started < 20


def test_no_images_readable_in_a_form_is_a_422(served):
    client, _, _, _ = served
    files = [("a", ("a.png", b"nope", "image/png")), ("b", ("b.png", b"nor this", "image/png"))]
    response = client.post("/predict", files=files)
    assert response.status_code == 422
    assert response.json()["error"] == "none of the 2 images could be read"


def test_the_page_asks_for_no_icon_and_gets_no_404(served):
    client, _, _, _ = served
    assert 'rel="icon" href="data:,"' in client.get("/").text
    assert client.get("/favicon.ico").status_code == 204


def test_other_answers_are_json_too(served):
    client, _, _, _ = served
    assert client.get("/nowhere").status_code == 404 and client.get("/nowhere").json()["error"]
    response = client.get("/predict")
    assert response.status_code == 405 and response.json()["error"]


class _Broken:
    """A backend that goes wrong after it was opened, as a damaged model would."""

    def __init__(self, backend):
        self.inner = backend

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def probabilities(self, images):
        from mnist_cli.infer.backends import ModelError

        raise ModelError("m.onnx: gave NaN, infinite or absurd scores; refused")


def test_a_model_failing_in_a_request_is_a_json_500(served):
    _, pngs, _, path = served
    client = TestClient(create_app(_Broken(open_model(path))))
    response = client.post("/predict", content=pngs[0], headers={"content-type": "image/png"})
    assert response.status_code == 500 and "refused" in response.json()["error"]


def _start_serve(path, port: int, *extra: str, preexec_fn=None):
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_cli", "serve", "-m", str(path), "--port", str(port), *extra],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def _wait_for_health(port: int, process, seconds: float = 60) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            _get(port, "/health")
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the server did not answer")


def test_a_request_in_flight_at_sigterm_is_answered(served):
    import signal
    import time

    _, pngs, _, path = served
    port = free_port()
    server = _start_serve(path, port)
    try:
        _wait_for_health(port, server)
        with _connect(port) as sock:
            head = (
                "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(pngs[0])}\r\n\r\n"
            )
            sock.sendall(head.encode() + pngs[0][:50])
            time.sleep(0.5)
            server.send_signal(signal.SIGTERM)  # with the upload half sent
            time.sleep(0.5)
            sock.sendall(pngs[0][50:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        code = server.wait(timeout=30)  # it stops by itself once the answer is out
    finally:
        if server.poll() is None:
            server.kill()
    log = server.stderr.read()
    assert answer.startswith(b"HTTP/1.1 200") and b'"digit"' in answer
    # uvicorn finishes the request, then ends by the signal it caught: 143 in a shell
    assert code == -signal.SIGTERM and "Traceback" not in log and "CancelledError" not in log


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigint_ends_serve_with_130_though_it_was_ignored_when_serve_started(served, workers):
    """As in the background of a shell without job control: the signal stops the server, and
    the exit code still says which one did."""
    import signal

    _, _, _, path = served
    port = free_port()
    ignored = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # noqa: E731
    server = _start_serve(path, port, "--workers", workers, preexec_fn=ignored)
    try:
        _wait_for_health(port, server)
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert code == 130 and "Traceback" not in server.stderr.read()


def test_a_busy_port_is_one_line_and_exit_1(served):
    _, _, _, path = served
    sock = listen("127.0.0.1", 0)  # holds the port
    try:
        port = sock.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "mnist_cli", "serve", "-m", str(path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        sock.close()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in done.stderr
    assert "Serving on" not in done.stderr


def test_past_max_uploads_the_answer_is_503(served):
    import threading
    import time

    _, pngs, _, path = served
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    limits = Limits(max_uploads=1, read_timeout=5)
    server = uvicorn_server(open_model(path), limits=limits, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with _connect(port) as slow:  # one upload in flight, its body half sent
            slow.sendall(
                b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                + f"Content-Length: {len(pngs[0])}\r\n\r\n".encode()
                + pngs[0][:50]
            )
            time.sleep(0.3)
            import http.client

            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request(
                "POST", "/predict", body=pngs[0], headers={"Content-Type": "image/png"}
            )
            response = connection.getresponse()
            answer = json.loads(response.read())["error"]
            assert response.status == 503 and answer == "busy: over 1 uploads at once"
            assert _get(port, "/health")[0] == 200  # the rest of the server still answers
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_a_host_that_is_no_address_is_a_usage_error(served):
    _, _, _, path = served
    done = subprocess.run(
        [sys.executable, "-m", "mnist_cli", "serve", "-m", str(path), "--host", "999.1.1.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--host 999.1.1.1: not an address here" in done.stderr
    assert "Traceback" not in done.stderr


def test_uploads_that_trickle_free_their_place_and_predict_keeps_answering(served, live):
    import contextlib
    import http.client
    import time

    _, pngs, _, _ = served
    _, port = live
    tricklers = []
    for _ in range(70):  # more than max_pending, each promising 100 KB at a byte a second
        sock = _connect(port)
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\nx"
        )
        tricklers.append(sock)
    try:
        time.sleep(0.3)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/predict", body=pngs[0], headers={"Content-Type": "image/png"})
        assert connection.getresponse().status == 200  # not 503 behind the tricklers
        deadline, cut = time.monotonic() + 6, 0
        for sock in tricklers:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                cut += b"408" in sock.recv(4096)
        assert cut == len(tricklers)  # each answered 408 within a few seconds
    finally:
        for sock in tricklers:
            sock.close()


def test_a_request_uvicorn_cannot_parse_is_answered_in_json(live):
    _, port = live
    with _connect(port) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"].startswith("not a readable HTTP request")


def test_postscript_never_reaches_ghostscript(served):
    client, _, _, _ = served
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n"
    response = client.post("/predict", content=eps, headers={"content-type": "image/png"})
    assert response.status_code == 422
    assert "not one of the formats read here" in response.json()["error"]
    assert "Ghostscript" not in response.text


def test_a_broken_form_is_a_400_and_no_line_in_the_servers_log(served, caplog):
    client = served[0]
    body = b"--XYQ\r\nContent-Disposition: form-data; name=a; filename=a.png\r\n\r\nabc\r\n"
    headers = {"content-type": "multipart/form-data; boundary=XYZ"}
    with caplog.at_level("WARNING"):
        response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == 400 and "multipart" in response.json()["error"]
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")]


def test_a_number_is_read_with_its_boxes_and_too_many_marks_are_an_error(served):
    client, _, _, _ = served
    from PIL import ImageDraw

    def png(marks: int) -> bytes:
        page = Image.new("L", (60 * marks + 40, 120), 255)
        draw = ImageDraw.Draw(page)
        for k in range(marks):  # upright strokes, far apart: ones
            draw.line([(40 + 60 * k, 20), (40 + 60 * k, 100)], fill=0, width=8)
        buffer = io.BytesIO()
        page.save(buffer, format="PNG")
        return buffer.getvalue()

    (result,) = client.post(
        "/predict", content=png(3), headers={"content-type": "image/png"}
    ).json()["results"]
    assert len(result["digits"]) == 3 and result["digit"] is None
    lefts = [entry["box"][0] for entry in result["digits"]]
    assert lefts == sorted(lefts) and all(len(entry["input"]) == 28 for entry in result["digits"])
    response = client.post("/predict", content=png(120), headers={"content-type": "image/png"})
    assert response.status_code == 422 and "120 separate marks" in response.json()["error"]


def test_a_refused_drawing_still_shows_what_the_model_saw(served):
    client, _, _, _ = served  # the served model may not refuse it; the bundled one does
    app = create_app(open_model(), Limits())
    body = (SAMPLES / "drawn-A.png").read_bytes()
    response = TestClient(app).post("/predict", content=body, headers={"content-type": "image/png"})
    (result,) = response.json()["results"]
    assert result["reason"] == "not a digit" and "top" not in result
    assert np.array(result["input"]).shape == (28, 28)


def test_feedback_saves_a_correction_under_its_digit_and_nothing_else(served, tmp_path):
    from mnist_cli.infer.feedback import Corrections

    _, pngs, _, path = served
    plain = TestClient(create_app(open_model(path), Limits()))
    assert plain.post("/feedback", files={"file": ("a.png", pngs[0])}).status_code == 404
    assert plain.get("/health").json()["collect"] is False

    folder = tmp_path / "collected"
    client = TestClient(create_app(open_model(path), Limits(), corrections=Corrections(folder, 3)))
    assert client.get("/health").json()["collect"] is True
    response = client.post("/feedback", files={"file": ("a.png", pngs[0])}, data={"label": "7"})
    assert response.status_code == 201
    saved = folder / response.json()["saved"]
    assert saved.parent.name == "7" and Image.open(saved).format == "PNG"

    for label in ("../../x", "10", "", "seven"):
        refused = client.post(
            "/feedback", files={"file": ("a.png", pngs[0])}, data={"label": label}
        )
        assert refused.status_code == 400 and "is not one digit" in refused.json()["error"]
    no_label = client.post("/feedback", files={"file": ("a.png", pngs[0])})
    assert no_label.status_code == 400
    broken = client.post("/feedback", files={"file": ("a.png", b"nope")}, data={"label": "1"})
    assert broken.status_code == 422 and "not a readable image" in broken.json()["error"]
    two = [("file", ("a.png", pngs[0])), ("file", ("b.png", pngs[1]))]
    assert client.post("/feedback", files=two, data={"label": "1"}).status_code == 400
    raw = client.post("/feedback", content=pngs[0], headers={"content-type": "image/png"})
    assert raw.status_code == 415
    assert sorted(p.relative_to(folder).parts[0] for p in folder.rglob("*.png")) == ["7"]

    for png in pngs[1:3]:  # up to the cap of 3, then 507 and nothing more written
        ok = client.post("/feedback", files={"file": ("a.png", png)}, data={"label": "3"})
        assert ok.status_code == 201
    full = client.post("/feedback", files={"file": ("a.png", pngs[3])}, data={"label": "3"})
    assert full.status_code == 507 and "--collect-max" in full.json()["error"]
    assert len(list(folder.rglob("*.png"))) == 3


def test_serve_collect_refuses_a_folder_it_cannot_write(tmp_path):
    from typer.testing import CliRunner

    from mnist_cli.cli import app

    (tmp_path / "taken").write_text("a file, not a folder")
    result = CliRunner().invoke(app, ["serve", "--collect", str(tmp_path / "taken")])
    assert result.exit_code == 1 and "--collect" in result.output
    assert "Serving on" not in result.output


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian package `chromium`)")
@pytest.mark.parametrize(
    "most, told", [(10, "Saved as 7/"), (0, "--collect-max")], ids=["saved", "collection full"]
)
def test_a_correction_clicked_before_its_answer_saves_the_pad_and_its_word_stays(
    served, tmp_path, monkeypatch, most, told
):
    import time

    from mnist_cli.infer.feedback import Corrections

    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    mine, model = Corrections(tmp_path / "mine", most=most), open_model(served[3])
    logits = model.logits
    monkeypatch.setattr(model, "logits", lambda images: time.sleep(0.4) or logits(images))  # slow
    with serving(model, corrections=mine) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.goto(url)
        draw(page, [(0.5, 0.15), (0.5, 0.5), (0.5, 0.85)])
        sync_api.expect(page.locator("#guess")).not_to_have_text("", timeout=15_000)
        draw(page, [(0.2, 0.5), (0.8, 0.5)])  # a bar, corrected before it is read
        page.click("#correct button[data-digit='7']")
        sync_api.expect(page.locator("#status")).to_contain_text(told, timeout=10_000)
        page.wait_for_timeout(1_500)  # the bar's own answers come back: the word stays
        sync_api.expect(page.locator("#status")).to_contain_text(told)
        browser.close()
    saved = list((tmp_path / "mine").rglob("*.png"))
    assert len(saved) == (1 if most else 0)
    for picture in saved:
        assert picture.parent.name == "7" and Image.open(picture).size == (280, 280)
        bar = np.asarray(Image.open(picture).convert("L"))[140, 60:220]
        assert bar.min() > 128  # what the pad showed is saved, not the answer's older drawing


# A hand the bundled model misreads: a 7 and a 2 written mirrored (it reads both as 5s).
MIRRORED = {
    "7": [(0.75, 0.2), (0.25, 0.2), (0.65, 0.85)],
    "2": [(0.7, 0.3), (0.5, 0.15), (0.3, 0.3), (0.6, 0.8), (0.25, 0.8)],
}


def _in_my_hand(label, rng):
    """The mirrored `label` as a hand draws it: shifted and shaken by up to 4% of the pad."""
    dx, dy = rng.uniform(-0.04, 0.04, 2)
    return [
        (x + dx + rng.uniform(-0.04, 0.04), y + dy + rng.uniform(-0.04, 0.04))
        for x, y in MIRRORED[label]
    ]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian package `chromium`)")
def test_digits_corrected_on_the_page_teach_a_finetuned_model_to_read_them(data_dir, tmp_path):
    from typer.testing import CliRunner

    from mnist_cli.cli import app
    from mnist_cli.infer.backends import BUNDLED_MODELS
    from mnist_cli.infer.feedback import Corrections

    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    expect, rng, collected = sync_api.expect, np.random.default_rng(0), tmp_path / "mine"
    bundled = open_model(BUNDLED_MODELS["onnxruntime"])
    first_read, read_after = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 700})
        with serving(bundled, corrections=Corrections(collected)) as url:
            page.goto(url)
            for label in ["7", "2"] * 12:  # two dozen digits, each corrected on the page
                page.click("#clear")
                expect(page.locator("#guess")).to_have_text("", timeout=5_000)
                draw(page, _in_my_hand(label, rng))
                expect(page.locator("#guess")).not_to_have_text("", timeout=15_000)
                first_read.append(page.locator("#guess").inner_text())
                page.click(f"#correct button[data-digit='{label}']")
                expect(page.locator("#status")).to_contain_text(f"Saved as {label}/")
        run = tmp_path / "run"
        args = ["train", "--images", str(collected), "--init", "bundled"]  # its own recipe
        tuned = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir), "--out-dir", str(run)])
        assert tuned.exit_code == 0, tuned.output
        with serving(open_model(run / "best.pt")) as url:
            page.goto(url)
            for label in ["7", "2"] * 3:  # new drawings in the same hand
                page.click("#clear")
                expect(page.locator("#guess")).to_have_text("", timeout=5_000)
                draw(page, _in_my_hand(label, rng))
                expect(page.locator("#guess")).not_to_have_text("", timeout=15_000)
                read_after.append(page.locator("#guess").inner_text())
        browser.close()
    assert sorted(p.parent.name for p in collected.rglob("*.png")) == ["2"] * 12 + ["7"] * 12
    wrong = sum(read != label for read, label in zip(first_read, ["7", "2"] * 12, strict=True))
    assert wrong >= 20, first_read  # the bundled model misread this hand
    assert read_after == ["7", "2"] * 3  # the fine-tuned one reads it
    from mnist_cli.infer.evaluation import evaluate_model

    mnist = evaluate_model(run / "best.pt", data_dir=data_dir, device="cpu")[0].accuracy
    assert mnist >= 0.97  # and still reads MNIST's digits


def test_a_correction_is_stored_as_the_model_reads_it(served, tmp_path):
    from mnist_cli.infer.feedback import Corrections
    from mnist_cli.infer.preprocessing import load_digit

    _, pngs, _, path = served
    folder = tmp_path / "mine"
    client = TestClient(create_app(open_model(path), Limits(), corrections=Corrections(folder)))
    digit = np.asarray(Image.open(io.BytesIO(pngs[0])).convert("L"), np.float32) / 255
    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="TIFF")  # 32-bit float pixels in [0, 1]
    saved = client.post(
        "/feedback", files={"file": ("f.tif", buffer.getvalue())}, data={"label": "1"}
    )
    assert saved.status_code == 201
    stored = folder / saved.json()["saved"]
    (tmp_path / "sent.png").write_bytes(pngs[0])
    assert np.abs(load_digit(stored) - load_digit(tmp_path / "sent.png")).max() < 0.05  # not blank

    photo = Image.new("RGB", (60, 20), "white")  # stored wide, shown tall (EXIF turn 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", exif=exif)
    turned = client.post(
        "/feedback", files={"file": ("p.jpg", buffer.getvalue())}, data={"label": "2"}
    )
    assert Image.open(folder / turned.json()["saved"]).size == (20, 60)
