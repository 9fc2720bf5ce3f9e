"""Load on `mnist serve` over the loopback address: throughput, latency, memory, failures.

Starts `mnist serve` on 127.0.0.1 (a free port), sends 2,000 requests of one image each at
concurrency 16 (bounded in count and time), reads the server's memory after the first 200
requests and at the end, then stops it. With Chromium installed it also draws a number on the
page and saves a screenshot (--screenshot).

python benchmarks/serve_load.py [--model FILE] [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from _common import free_port, memory_mib
from PIL import Image

DEADLINE_S = 300  # the whole load stops by itself after this


def digit_png(seed: int) -> bytes:
    """A hand-drawn-looking stroke digit, different for each seed."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((120, 120), np.uint8)
    x = int(rng.integers(45, 75))
    canvas[20:100, x : x + int(rng.integers(8, 16))] = 255
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_until_up(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"mnist serve exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("mnist serve did not start within 60 s")


def load(port: int, pid: int, requests: int, concurrency: int) -> dict:
    bodies = [digit_png(seed) for seed in range(32)]
    latencies: list[float] = []
    failures: list[str] = []
    sent = 0
    lock = threading.Lock()
    memory: dict[str, float] = {}
    deadline = time.monotonic() + DEADLINE_S

    def worker() -> None:
        nonlocal sent
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                if sent >= requests or time.monotonic() > deadline:
                    return
                index = sent
                sent += 1
                if index == 200:
                    memory["after 200"] = memory_mib(pid, "VmRSS")
            started = time.perf_counter()
            try:
                connection.request(
                    "POST",
                    "/predict",
                    body=bodies[index % 32],
                    headers={"Content-Type": "image/png"},
                )
                response = connection.getresponse()
                payload = response.read()
                ok = response.status == 200 and "digit" in json.loads(payload)["results"][0]
            except (OSError, ValueError, KeyError) as error:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok, payload = False, str(error).encode()
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if not ok:
                    failures.append(payload[:200].decode(errors="replace"))

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    memory["at the end"] = memory_mib(pid, "VmRSS")
    memory["peak"] = memory_mib(pid, "VmHWM")
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "failures": failures,
        "seconds": wall,
        "throughput": len(latencies) / wall,
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "memory": memory,
    }


def screenshot(url: str, path: Path) -> bool:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return False
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = browser.new_page(viewport={"width": 820, "height": 640})
        page.goto(url)
        box = page.locator("#pad").bounding_box()
        strokes = [
            [(0.2, 0.25), (0.12, 0.6), (0.42, 0.6)],  # a 4 in two strokes
            [(0.33, 0.35), (0.33, 0.85)],
            [(0.56, 0.35), (0.7, 0.22), (0.86, 0.35), (0.58, 0.82), (0.9, 0.82)],  # a 2
        ]
        for points in strokes:
            start = points[0]
            page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
            page.mouse.down()
            for x, y in points[1:]:
                page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=10)
            page.mouse.up()
        expect(page.locator("#guess")).to_have_text("42", timeout=15_000)
        page.wait_for_timeout(300)
        page.screenshot(path=str(path))
        browser.close()
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Model file [default: mnist serve's default]")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--screenshot", type=Path, default=Path("docs/serve.png"))
    args = parser.parse_args()
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mnist_cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--quiet",
    ]
    if args.model:
        command += ["--model", str(args.model)]
    server = subprocess.Popen(command)
    try:
        wait_until_up(port, server)
        result = load(port, server.pid, args.requests, args.concurrency)
        shot = screenshot(f"http://127.0.0.1:{port}/", args.screenshot)
        metrics = json.loads(_get(port, "/metrics"))
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    memory = result["memory"]
    print(
        f"requests {result['requests']}, concurrency {args.concurrency}, "
        f"failed {len(result['failures'])}"
    )
    print(f"throughput {result['throughput']:.0f} requests/s over {result['seconds']:.1f} s")
    print(
        f"latency p50 {1000 * result['p50']:.1f} ms, p99 {1000 * result['p99']:.1f} ms "
        f"(server's own /metrics: p50 {1000 * metrics['latency_seconds']['p50']:.1f} ms, "
        f"p99 {1000 * metrics['latency_seconds']['p99']:.1f} ms)"
    )
    print(
        f"server memory: {memory['after 200']:.0f} MiB after 200 requests, "
        f"{memory['at the end']:.0f} MiB at the end, peak {memory['peak']:.0f} MiB"
    )
    print(f"server stopped on SIGTERM with exit code {code}")
    if shot:
        print(f"screenshot: {args.screenshot}")
    for failure in result["failures"][:5]:
        print(f"failure: {failure}")


def _get(port: int, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    return connection.getresponse().read().decode()


if __name__ == "__main__":
    main()
