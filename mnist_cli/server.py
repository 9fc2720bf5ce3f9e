"""`mnist serve`: a draw-a-digit page and an HTTP API over one opened model (see `backends`).

Starlette serves it and uvicorn runs it. The model is opened and checked once; every request
goes through the same preprocessing as `mnist predict`. No endpoint reads or writes a file
that a client names. The onnxruntime path never imports torch.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mnist_cli import __version__
from mnist_cli.backends import Backend
from mnist_cli.preprocessing import ImageError, digit_from_bytes

IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Limits:
    """What one request may send; past these the answer is a 4xx, never a crash."""

    max_upload: int = 4 << 20  # bytes in one request body
    max_images: int = 64  # images in one multipart request
    read_timeout: float = 10.0  # seconds to receive the whole body (slow clients)
    top_k: int = 3
    workers: int = max(1, min(4, os.cpu_count() or 1))  # requests decoded at once: bounds memory


class RequestError(Exception):
    """A client mistake: answered with `status` and a JSON error, the server keeps going."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Metrics:
    """Request counts by status and latency quantiles over the last requests, thread-safe."""

    def __init__(self, window: int = 2048) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)  # bounded: memory stays flat
        self._statuses: Counter[int] = Counter()
        self._images = 0

    def record(self, status: int, seconds: float, images: int) -> None:
        with self._lock:
            self._statuses[status] += 1
            self._latencies.append(seconds)
            self._images += images

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latencies = np.array(self._latencies or [0.0])
            quantiles = np.quantile(latencies, [0.5, 0.9, 0.99])
            return {
                "requests": sum(self._statuses.values()),
                "images": self._images,
                "by_status": {str(k): v for k, v in sorted(self._statuses.items())},
                "latency_seconds": {
                    "window": len(self._latencies),
                    "p50": float(quantiles[0]),
                    "p90": float(quantiles[1]),
                    "p99": float(quantiles[2]),
                },
            }


def create_app(backend: Backend, limits: Limits | None = None) -> Starlette:
    """The ASGI app for one opened model."""
    limits = limits or Limits()
    metrics = Metrics()
    decoding = asyncio.Semaphore(limits.workers)  # a 50-megapixel upload decodes to ~200 MB
    page = resources.files("mnist_cli").joinpath("static/index.html").read_text("utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": backend.path,
                "bundled": backend.bundled,
                "backend": backend.name.value,
                "provider": backend.provider,
                "version": __version__,
            }
        )

    async def show_metrics(request: Request) -> Response:
        return JSONResponse(metrics.snapshot())

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        images = 0
        try:
            uploads = await _uploads(request, limits)
            images = len(uploads)
            async with decoding:
                results = await run_in_threadpool(_predict, backend, uploads, limits.top_k)
            response: Response = JSONResponse({"results": results})
        except RequestError as error:
            response = JSONResponse({"error": error.message}, status_code=error.status)
        metrics.record(response.status_code, time.perf_counter() - started, images)
        return response

    return Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/metrics", show_metrics),
            Route("/predict", predict, methods=["POST"]),
        ]
    )


async def _uploads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image in the request: the raw body, or the files of a form."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_upload:
        raise RequestError(413, f"the upload is over {limits.max_upload:,} bytes")
    if kind == "multipart/form-data":
        return await _form_files(request, limits)
    if not kind.startswith(IMAGE_TYPES):
        raise RequestError(
            415, f"send an image (image/png, image/jpeg, ...) or multipart/form-data, not {kind!r}"
        )
    body = await _read_body(request, limits)
    if not body:
        raise RequestError(400, "the request body is empty: send the image's bytes")
    return [("image", body)]


async def _read_body(request: Request, limits: Limits) -> bytes:
    """The body, refused past the size limit or when it trickles in slower than the timeout."""
    chunks: list[bytes] = []
    size = 0

    async def receive() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_upload:
                raise RequestError(413, f"the upload is over {limits.max_upload:,} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), timeout=limits.read_timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the upload took over {limits.read_timeout:g} s") from None
    except ClientDisconnect:
        raise RequestError(400, "the client went away during the upload") from None
    return b"".join(chunks)


async def _form_files(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    body = await _read_body(request, limits)

    async def replay() -> dict[str, Any]:  # hand the checked body to the form parser
        return {"type": "http.request", "body": body, "more_body": False}

    form_request = Request(request.scope, replay)
    try:
        form = await form_request.form(max_files=limits.max_images, max_fields=limits.max_images)
    except Exception as error:  # the multipart parser raises its own types
        status = 413 if "many" in str(error).lower() else 400
        raise RequestError(status, f"not a readable multipart form ({error})") from None
    files = [value for _, value in form.multi_items() if hasattr(value, "read")]
    if not files:
        raise RequestError(400, "the form holds no file: send each image as a file field")
    return [(item.filename or f"image {i + 1}", await item.read()) for i, item in enumerate(files)]


def _predict(backend: Backend, uploads: list[tuple[str, bytes]], top_k: int) -> list[dict]:
    """One result per upload, in order: the digit, probabilities, top-k and the 28x28 input."""
    digits, results = [], []
    for name, data in uploads:
        try:
            digits.append(digit_from_bytes(data, name=name))
            results.append({"name": name})
        except ImageError as error:
            results.append({"name": name, "error": error.message.removeprefix(f"{name}: ")})
    if digits:
        probabilities = iter(backend.probabilities(np.stack(digits)[:, None]))
        digit_iter = iter(digits)
        for result in results:
            if "error" not in result:
                result.update(_scores(next(probabilities), next(digit_iter), top_k))
    return results


def _scores(probabilities: np.ndarray, digit: np.ndarray, top_k: int) -> dict[str, Any]:
    if not np.isfinite(probabilities).all():
        return {"error": "the model gave NaN or infinite scores for this image"}
    order = np.argsort(probabilities)[::-1][:top_k]
    return {
        "digit": int(order[0]),
        "probabilities": [float(p) for p in probabilities],
        "top": [[int(d), float(probabilities[d])] for d in order],
        "input": (digit * 255).round().astype(int).tolist(),  # what the model saw, 28x28
    }


def serve(
    backend: Backend,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    log_level: str = "info",
) -> None:
    """Run the app with uvicorn until Ctrl-C or SIGTERM; in-flight requests finish first."""
    import uvicorn

    uvicorn.run(
        create_app(backend, limits),
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        limit_concurrency=256,
    )
