"""`mnist serve`: a draw-a-digit page and an HTTP API over one opened model (see `backends`).

Starlette serves it and uvicorn runs it. The model is opened and checked once; every request
goes through the same preprocessing as `mnist predict`. No endpoint reads or writes a file
that a client names. The onnxruntime path never imports torch.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mnist_cli import __version__
from mnist_cli.backends import Backend
from mnist_cli.errors import MnistError, OptionError
from mnist_cli.prediction import Prediction, read
from mnist_cli.preprocessing import ImageError, PixelBudget, digit_from_bytes

IMAGE_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Limits:
    """What one request may send; past these the answer is a 4xx, never a crash."""

    max_upload: int = 4 << 20  # bytes in one request body
    max_images: int = 64  # images in one multipart request
    max_pixels: int = 4_000_000  # decoded in one request, all images together: 2000x2000
    read_timeout: float = 10.0  # seconds to receive the whole body (slow clients)
    header_timeout: float = 5.0  # seconds from connecting, or the last answer, to whole headers
    max_pending: int = 64  # uploads received and waiting to be read; more get 503
    max_uploads: int = 256  # uploads being received at once; more get 503
    min_rate: int = 4096  # bytes a second an upload must keep up after its first second
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


def create_app(
    model: Backend, limits: Limits | None = None, *, allowed_hosts: Collection[str] | None = None
) -> ASGIApp:
    """The ASGI app for one opened model.

    `allowed_hosts`: the host names a request's Host header may give (None: any); a request
    from a page of another origin is refused whatever they are.
    """
    limits = limits or Limits()
    metrics = Metrics()
    page = resources.files("mnist_cli").joinpath("static/index.html").read_text("utf-8")

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
            Route("/predict", _Predict(model, limits, metrics).handle, methods=["POST"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    return _SameOrigin(app, allowed_hosts)


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

    async def _receive(self, request: Request) -> list[tuple[str, bytes]]:
        self.uploading += 1
        try:
            if self.uploading > self.limits.max_uploads:
                raise RequestError(503, f"busy: over {self.limits.max_uploads} uploads at once")
            return await _uploads(request, self.limits)
        finally:
            self.uploading -= 1

    async def _read(self, uploads: list[tuple[str, bytes]]) -> list[dict]:
        self.pending += 1
        try:
            if self.pending > self.limits.max_pending:
                raise RequestError(503, f"busy: over {self.limits.max_pending} requests at once")
            async with self.decoding:
                return await run_in_threadpool(_predict, self.model, uploads, self.limits)
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


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


_NETLOC = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(:[0-9]{1,5})?")


def _host_name(netloc: str) -> str:
    """The host of a Host header, without its port, lowercased; "" when it is not a plain
    host[:port] (userinfo, brackets around a name, trailing text are not)."""
    found = _NETLOC.fullmatch(netloc.strip().lower())
    return found.group(1).rstrip(".") if found else ""


class _SameOrigin:
    """Refuses a Host header that is not this server's (DNS rebinding: a page on a name the
    attacker controls, resolved to 127.0.0.1) and any request sent from another origin's page.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Collection[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {_host_name(h) for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            host, origin = headers.get("host", ""), headers.get("origin")
            refusal = None
            name = _host_name(host)
            if not name or (self.allowed is not None and name not in self.allowed):
                refusal = JSONResponse(
                    {"error": f"Host {host} is not a name of this server (see --allowed-host)"},
                    status_code=421,
                )
            elif origin is not None and origin.lower() != f"http://{host.strip().lower()}":
                refusal = JSONResponse(
                    {"error": f"requests from pages of {origin} are refused (same origin only)"},
                    status_code=403,
                )
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
            415, f"send an image (image/png, image/jpeg, ...) or multipart/form-data, not {kind}"
        )
    body = await _read_body(request, limits)
    if not body:
        raise RequestError(400, "the request body is empty: send the image's bytes")
    return [("image", body)]


async def _read_body(request: Request, limits: Limits) -> bytes:
    """The body, refused past the size limit, when it takes longer than `read_timeout`, or
    when it trickles: after the first second it must come at `min_rate` bytes a second, so a
    client sending a byte at a time frees its place within a few seconds."""
    chunks: list[bytes] = []
    size = 0
    started = time.monotonic()

    async def receive() -> None:
        nonlocal size
        stream = request.stream().__aiter__()
        waiting: asyncio.Future | None = None  # the next chunk, awaited across ticks
        try:
            while True:
                waiting = waiting or asyncio.ensure_future(stream.__anext__())
                done, _ = await asyncio.wait({waiting}, timeout=_TICK_SECONDS)
                chunk = b""
                if done:
                    try:
                        chunk = waiting.result()
                    except StopAsyncIteration:
                        return
                    waiting = None
                size += len(chunk)
                if size > limits.max_upload:
                    raise RequestError(413, f"the upload is over {limits.max_upload:,} bytes")
                chunks.append(chunk)
                late = time.monotonic() - started - _GRACE_SECONDS
                if late > 0 and size < limits.min_rate * late:
                    raise RequestError(
                        408, f"the upload comes slower than {limits.min_rate:,} bytes a second"
                    )
        finally:
            if waiting is not None:
                waiting.cancel()

    try:
        await asyncio.wait_for(receive(), timeout=limits.read_timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, f"the upload took over {limits.read_timeout:g} s") from None
    except ClientDisconnect:
        raise RequestError(400, "the client went away during the upload") from None
    return b"".join(chunks)


_GRACE_SECONDS = 1.0  # an upload's first second is not judged by its rate
_TICK_SECONDS = 0.25  # how often a stalled upload's rate is judged


async def _form_files(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    body = await _read_body(request, limits)

    async def replay() -> dict[str, Any]:  # hand the checked body to the form parser
        return {"type": "http.request", "body": body, "more_body": False}

    form_request = Request(request.scope, replay)
    try:
        form = await form_request.form(max_files=limits.max_images, max_fields=limits.max_images)
    except Exception as error:  # the multipart parser raises its own types
        detail = str(getattr(error, "detail", error))
        if "too many" in detail.lower():
            raise RequestError(413, f"over {limits.max_images} files in one request") from None
        raise RequestError(400, f"not a readable multipart form ({detail})") from None
    files = [value for _, value in form.multi_items() if hasattr(value, "read")]
    if not files:
        raise RequestError(400, "the form holds no file: send each image as a file field")
    return [(item.filename or f"image {i + 1}", await item.read()) for i, item in enumerate(files)]


def _predict(model: Backend, uploads: list[tuple[str, bytes]], limits: Limits) -> list[dict]:
    """One result per upload, in order: the digit, probabilities, top-k and the 28x28 input."""
    digits, names, results = [], [], []
    budget = PixelBudget(limits.max_pixels)
    for name, data in uploads:
        try:
            digits.append(digit_from_bytes(data, name=name, budget=budget))
            names.append(name)
            results.append({"name": name})
        except ImageError as error:
            results.append({"name": name, "error": error.message.removeprefix(f"{name}: ")})
    predictions = iter(read(model, digits, names))
    for result in results:
        if "error" not in result:
            result.update(_answer_for(next(predictions), limits.top_k))
    return results


def _answer_for(prediction: Prediction, top_k: int) -> dict[str, Any]:
    """A Prediction as /predict answers it: `mnist predict --json`'s fields, top-k, the input."""
    assert prediction.image is not None
    return {
        "digit": prediction.digit,
        "probabilities": prediction.probabilities,
        "top": [[digit, p] for digit, p in prediction.top(top_k)],
        "input": (prediction.image * 255).round().astype(int).tolist(),  # 28x28, what it saw
    }


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


def allowed_hosts_for(host: str, extra: Collection[str] = ()) -> list[str] | None:
    """The Host names a server bound to `host` answers: loopback names on a loopback address
    (and `extra`), any name elsewhere unless `extra` names some."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name
        loopback = False
    if not loopback and not extra:
        return None
    return [*LOOPBACK_HOSTS, *extra, *([] if loopback else [host])]


def serve(
    model: Backend,
    sock: socket.socket,
    *,
    limits: Limits | None = None,
    log_level: str = "info",
    allowed_hosts: Collection[str] | None = None,
    access_log: bool = False,
) -> None:
    """Run the app with uvicorn on a socket from `listen` until Ctrl-C or SIGTERM; requests in
    flight then have GRACE_SECONDS to finish.

    Example: serve(open_model(), listen("127.0.0.1", 8000), allowed_hosts=LOOPBACK_HOSTS)
    """
    server = uvicorn_server(
        model,
        limits=limits,
        log_level=log_level,
        allowed_hosts=allowed_hosts,
        access_log=access_log,
    )
    server.run(sockets=[sock])


def uvicorn_server(
    model: Backend,
    *,
    limits: Limits | None = None,
    log_level: str = "info",
    allowed_hosts: Collection[str] | None = None,
    access_log: bool = False,
) -> Any:
    """The uvicorn.Server that `serve` runs: call its `run(sockets=[...])`; no line per request
    unless `access_log`."""
    import uvicorn

    limits = limits or Limits()
    config = uvicorn.Config(
        create_app(model, limits, allowed_hosts=allowed_hosts),
        log_level=log_level,
        access_log=access_log,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=GRACE_SECONDS,
        http=_protocol(limits.header_timeout),
        lifespan="off",
    )
    return uvicorn.Server(config)


GRACE_SECONDS = 10  # after Ctrl-C or SIGTERM, requests in flight have this long to finish


def _protocol(header_timeout: float) -> type:
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's headers.

    uvicorn times out a connection only between requests; one that sends nothing, or its
    headers a byte at a time, would hold its place for ever. Each connection gets
    `header_timeout` seconds, from connecting or from its last answer, to send whole headers.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(header_timeout, self._drop_if_waiting)

        def _drop_if_waiting(self) -> None:
            if self.cycle is None or self.cycle.response_complete:  # no request under way
                self.transport.close()

        def send_400_response(self, msg: str) -> None:  # JSON, like every other answer
            import h11

            body = json.dumps({"error": f"not a readable HTTP request ({msg.rstrip('.')})"})
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body.encode()),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol
