"""`mnist serve`: a draw-a-digit page and an HTTP API over one opened model (see `backends`).

Starlette serves it and uvicorn runs it. The model is opened and checked once; every request
goes through the same preprocessing as `mnist predict`. No endpoint reads or writes a file
that a client names. The onnxruntime path never imports torch.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Collection
from importlib import resources
from typing import Any, NoReturn

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from mnist_cli import __version__
from mnist_cli.errors import MnistError, OptionError
from mnist_cli.infer.backends import Backend
from mnist_cli.infer.feedback import Corrections
from mnist_cli.infer.httpguard import (
    Limits,
    RequestError,
    SameOrigin,
    header_timeout_protocol,
    read_form,
    read_uploads,
)
from mnist_cli.infer.prediction import Prediction, read_pages
from mnist_cli.infer.preprocessing import ImageError, PixelBudget, page_from_bytes


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


def create_app(
    model: Backend,
    limits: Limits | None = None,
    *,
    allowed_hosts: Collection[str] | None = None,
    corrections: Corrections | None = None,
) -> ASGIApp:
    """The ASGI app for one opened model.

    `allowed_hosts`: the host names a request's Host header may give (None: any); a request
    from a page of another origin is refused whatever they are. `corrections`: where POST
    /feedback saves the images users correct (None: no /feedback).
    """
    limits = limits or Limits()
    metrics = Metrics()
    # A client's broken form is its own 400, not a line in the server's log (even with -q).
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    page = resources.files("mnist_cli").joinpath("static/index.html").read_text("utf-8")
    predict = _Predict(model, limits, metrics)

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": model.path,
                "bundled": model.bundled,
                "backend": model.name.value,
                "provider": model.provider,
                "version": __version__,
                "collect": corrections is not None,
            }
        )

    async def show_metrics(request: Request) -> Response:
        return JSONResponse(metrics.snapshot())

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/favicon.ico", lambda request: Response(status_code=204)),  # no icon, no 404
            Route("/health", health),
            Route("/metrics", show_metrics),
            Route("/predict", predict.handle, methods=["POST"]),
            *(
                [Route("/feedback", _feedback(corrections, predict), methods=["POST"])]
                if corrections is not None
                else []
            ),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    return SameOrigin(app, allowed_hosts)


def _feedback(corrections: Corrections, gates: _Predict) -> Any:
    """POST /feedback: a form with one image `file` and its `label`, saved under the label;
    received and decoded under /predict's counts and places."""
    limits, metrics = gates.limits, gates.metrics

    async def handle(request: Request) -> Response:
        started = time.perf_counter()
        try:
            files, fields = await gates._receive(request, read_form)
            if len(files) != 1:
                raise RequestError(400, f"send one file, not {len(files)}")
            budget = PixelBudget(limits.max_pixels)
            label = fields.get("label", "")
            name = await gates._decode(corrections.save, files[0][1], label, budget)
            response = JSONResponse({"saved": name}, status_code=201)
        except RequestError as error:
            response = JSONResponse({"error": error.message}, status_code=error.status)
        except ImageError as error:
            response = JSONResponse({"error": error.message}, status_code=422)
        metrics.record(response.status_code, time.perf_counter() - started, 1)
        return response

    return handle


class _Predict:
    """POST /predict: receive the upload, wait for a decoding place, read the digits, answer.

    Uploads being received and uploads waiting to be read are counted apart, each capped.
    """

    def __init__(self, model: Backend, limits: Limits, metrics: Metrics) -> None:
        self.model, self.limits, self.metrics = model, limits, metrics
        self.decoding = asyncio.Semaphore(limits.workers)  # a 50-MP upload decodes to ~200 MB
        self.uploading = self.pending = 0

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        uploads: list[tuple[str, bytes]] = []
        try:
            uploads = await self._receive(request)
            response = _answer(await self._read(uploads))
        except RequestError as error:
            response = JSONResponse({"error": error.message}, status_code=error.status)
        except MnistError as error:  # the model failed (NaN scores, a wrong shape): not the client
            response = JSONResponse({"error": error.message}, status_code=500)
        self.metrics.record(response.status_code, time.perf_counter() - started, len(uploads))
        return response

    async def _receive(self, request: Request, reader: Any = read_uploads) -> Any:
        """What `reader` makes of the request's body, counted among the uploads received."""
        self.uploading += 1
        try:
            if self.uploading > self.limits.max_uploads:
                raise RequestError(503, f"busy: over {self.limits.max_uploads} uploads at once")
            return await reader(request, self.limits)
        finally:
            self.uploading -= 1

    async def _read(self, uploads: list[tuple[str, bytes]]) -> list[dict]:
        return await self._decode(_predict, self.model, uploads, self.limits)

    async def _decode(self, work: Any, *args: Any) -> Any:
        """`work(*args)` in a worker thread, when a decoding place is free (/feedback's too)."""
        self.pending += 1
        try:
            if self.pending > self.limits.max_pending:
                raise RequestError(503, f"busy: over {self.limits.max_pending} requests at once")
            async with self.decoding:
                return await run_in_threadpool(work, *args)
        finally:
            self.pending -= 1


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own answers (404, 405) as JSON, like every other answer."""
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code)


async def _internal_error(request: Request, error: Exception) -> Response:
    """Whatever else went wrong: JSON like every other answer, no traceback for the client."""
    return JSONResponse({"error": f"internal error ({type(error).__name__})"}, status_code=500)


def _answer(results: list[dict]) -> Response:
    """200 when an image could be read; 422 when none could (the results say why, per image)."""
    if any("error" not in result for result in results):
        return JSONResponse({"results": results})
    if len(results) == 1:
        return JSONResponse({"error": results[0]["error"], "results": results}, status_code=422)
    error = f"none of the {len(results)} images could be read"
    return JSONResponse({"error": error, "results": results}, status_code=422)


def _predict(model: Backend, uploads: list[tuple[str, bytes]], limits: Limits) -> list[dict]:
    """One result per upload, in order: what `mnist predict --json` prints for a file, and for
    a one-digit reading its top-k and the 28x28 input the model saw."""
    pages, results = [], []
    budget = PixelBudget(limits.max_pixels)
    for name, data in uploads:
        try:
            pages.append(page_from_bytes(data, name=name, budget=budget))
            results.append({"name": name})
        except ImageError as error:
            results.append({"name": name, "error": error.message.removeprefix(f"{name}: ")})
    predictions = iter(read_pages(model, pages, keep_digits=True))
    for result in results:
        if "error" in result:
            continue
        prediction = next(predictions)
        if prediction.error is not None:
            result["error"] = prediction.error
        else:
            result.update(_answer_for(prediction, limits.top_k))
    return results


def _answer_for(prediction: Prediction, top_k: int) -> dict[str, Any]:
    """A Prediction as /predict answers it: `mnist predict --json`'s fields (but the path), the
    input the model saw (of each part, where there are several), and for one digit its top-k."""
    answer = prediction.to_dict()
    del answer["path"]
    if len(prediction.readings) == 1:  # one part, read or refused: the answer's own input
        answer["input"] = _pixels(prediction.readings[0].image)
    else:
        for entry, reading in zip(answer["digits"], prediction.readings, strict=True):
            entry["input"] = _pixels(reading.image)
    if prediction.one is not None:
        answer["top"] = [[digit, p] for digit, p in prediction.top(top_k)]
    return answer


def _pixels(image: np.ndarray | None) -> list[list[int]]:
    """A 28x28 digit as the model saw it, 0-255."""
    assert image is not None  # read with keep_digits=True
    return (image * 255).round().astype(int).tolist()


class ServeError(MnistError):
    """The server cannot start: the address is in use or not this machine's."""


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or ServeError with one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise OptionError(f"--host {host}: not an address here ({error.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        busy = error.errno == errno.EADDRINUSE
        raise ServeError(
            f"cannot listen on {host}:{port} ({error.strerror})",
            hint="another program serves there: choose another --port" if busy else None,
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(model: Backend, sock: socket.socket, **options: Any) -> None:
    """Run the app with uvicorn on a socket from `listen` until Ctrl-C or SIGTERM; requests in
    flight then have GRACE_SECONDS to finish. `options` are `uvicorn_server`'s.

    Example: serve(open_model(), listen("127.0.0.1", 8000), allowed_hosts=["127.0.0.1"])
    """
    server = uvicorn_server(model, **options)
    server.run(sockets=[sock])  # ends by re-raising the signal that stopped it
    if server.stopped_by is not None:
        end_by_signal(server.stopped_by)


def end_by_signal(sig: int) -> NoReturn:
    """End the process as signal `sig` does, or with exit 128 + `sig` where it was ignored from
    the start (the background of a shell without job control), as a shell would report it."""
    signal.raise_signal(sig)
    raise SystemExit(128 + sig)


def uvicorn_server(
    model: Backend,
    *,
    limits: Limits | None = None,
    log_level: str = "info",
    allowed_hosts: Collection[str] | None = None,
    access_log: bool = False,
    corrections: Corrections | None = None,
) -> Any:
    """The uvicorn.Server that `serve` runs: call its `run(sockets=[...])`; no line per request
    unless `access_log`."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, remembering the first signal that stopped it (`stopped_by`)."""

        stopped_by: int | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.stopped_by = sig if self.stopped_by is None else self.stopped_by
            super().handle_exit(sig, frame)

    limits = limits or Limits()
    app = create_app(model, limits, allowed_hosts=allowed_hosts, corrections=corrections)
    return Server(uvicorn.Config(app, **uvicorn_settings(limits, log_level, access_log)))


def uvicorn_settings(limits: Limits, log_level: str, access_log: bool) -> dict[str, Any]:
    """What uvicorn is told, by one server or by `serve --workers`."""
    return {
        "log_level": log_level,
        "access_log": access_log,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": GRACE_SECONDS,
        "http": header_timeout_protocol(limits.header_timeout),
        "lifespan": "off",
    }


GRACE_SECONDS = 10  # after Ctrl-C or SIGTERM, requests in flight have this long to finish
