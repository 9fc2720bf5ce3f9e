"""What a request must be before `serve` reads it: a Host and Origin of this server, uploads
within size, count, time and rate, headers within a deadline. Each refusal is a 4xx in JSON.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

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


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


_NETLOC = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(:[0-9]{1,5})?")


def host_name(netloc: str) -> str:
    """The host of a Host header, without its port, lowercased; "" when it is not a plain
    host[:port] (userinfo, brackets around a name, trailing text are not)."""
    found = _NETLOC.fullmatch(netloc.strip().lower())
    return found.group(1).rstrip(".") if found else ""


class SameOrigin:
    """Refuses a Host header that is not this server's (DNS rebinding: a page on a name the
    attacker controls, resolved to 127.0.0.1) and any request sent from another origin's page.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Collection[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {host_name(h) for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            host, origin = headers.get("host", ""), headers.get("origin")
            refusal = None
            name = host_name(host)
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


async def read_uploads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
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
    files, _ = await read_form(request, limits)
    return files


async def read_form(
    request: Request, limits: Limits
) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """A multipart form's files, (name, bytes), at least one, and its text fields; the same
    limits as any upload."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise RequestError(415, f"send a multipart/form-data form, not {kind or 'no type'}")
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
    fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
    named = [(item.filename or f"image {i + 1}", await item.read()) for i, item in enumerate(files)]
    return named, fields


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


class HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's headers.

    uvicorn times out a connection only between requests; one that sends nothing, or its
    headers a byte at a time, would hold its place for ever. Each connection gets
    `header_timeout` seconds, from connecting or from its last answer, to send whole headers.
    """

    header_timeout: float = Limits.header_timeout
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
        self._deadline = self.loop.call_later(self.header_timeout, self._drop_if_waiting)

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


def header_timeout_protocol(header_timeout: float) -> type[HeaderDeadline]:
    """HeaderDeadline with another deadline (the module's own class for the default one, which
    `serve --workers` hands to its processes by name)."""
    if header_timeout == HeaderDeadline.header_timeout:
        return HeaderDeadline
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": header_timeout})
