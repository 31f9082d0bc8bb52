"""A lean HTTP/1.1 transport under the guard's ``ollama`` client, for its screens.

Why: every request waits for a guard screen, and in a profile of one screen on loopback
httpx's default transport (httpcore's connection pool over h11) was half of the call's CPU:
about 0.55 of 1.1 ms. This transport makes the one exchange a screen needs, a request with
its whole body and a response read whole, over kept-alive asyncio connections, in about
0.5 ms less per screen (``docs/guard.md``). It raises httpx's own exceptions, the ones
httpcore raises for the same faults, so the ollama client and the guard's failure
classification read every outcome as they would with httpx's transport:

- refused or unresolvable: ``httpx.ConnectError`` (which ollama turns into ConnectionError);
  no connection within the connect timeout: ``httpx.ConnectTimeout``;
- no complete answer within the read timeout: ``httpx.ReadTimeout``;
- the server closes without an answer, or mid-body, or answers what is not HTTP/1.x:
  ``httpx.RemoteProtocolError``; a reset or another socket error: ``httpx.ReadError``.

A connection is reused only after a complete, delimited answer that did not say
``Connection: close`` and left nothing unread (framing as strict as h11's: one length, or
``chunked`` alone; interim 1xx answers skipped), and never after an error or a
cancellation (a cancelled screen closes its connection, so Ollama sees the client go). An
idle connection the server has closed, or one idle for longer than ``keepalive_expiry``, is
dropped before it would be reused. Nothing is retried here: the guard's own retries decide.

Only ``http://``: anything else (``https://``) goes to httpx's default transport. Bodies are
read whole (a screen's answer is a few hundred bytes; at most ``MAX_BODY_BYTES``), so the
guard's streaming calls (``pull``) keep httpx's transport.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import httpx

MAX_HEAD_BYTES = 64 * 1024  # the status line and headers of one answer
MAX_BODY_BYTES = 8 * 1024 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)

    def clean(self) -> bool:
        """Open on both sides, with nothing unread: asyncio reads whatever arrives into the
        reader's buffer, and bytes there now (a body longer than its Content-Length, an
        answer nobody asked for) would be read as the next request's answer. (``_buffer``
        is private; without it the connection counts as not clean and is not reused.)"""
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and len(getattr(self.reader, "_buffer", b"?")) == 0
        )

    def usable(self, expiry: float) -> bool:
        """Clean, and not idle for too long."""
        return self.clean() and time.monotonic() - self.idle_since <= expiry

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Close at once, dropping anything still queued to send."""
        self.writer.transport.abort()


@dataclass
class _Answer:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool


class ScreenTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncBaseTransport`` for plain-HTTP calls answered with a whole body."""

    def __init__(
        self,
        max_idle: int = 64,
        keepalive_expiry: float = 5.0,
        fallback: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._fallback = fallback  # for other schemes; httpx's default, made when first needed
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        key = (request.url.host, request.url.port or 80)
        payload = _request_bytes(request, await request.aread())
        connection = self._checkout(key) or await _connect(key, timeouts.get("connect"), request)
        try:
            answer = await _exchange(connection, payload, request, timeouts.get("read"))
        except BaseException:  # an error or a cancellation: the connection's state is unknown
            connection.abort()
            raise
        if answer.keep_alive and connection.clean():
            self._checkin(key, connection)
        else:
            connection.close()
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            content=answer.body,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
        )

    def _checkout(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key, [])
        while idle:
            connection = idle.pop()  # the most recently used first
            if connection.usable(self._keepalive_expiry):
                return connection
            connection.close()
        return None

    def _checkin(self, key: tuple[str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if self._closed or len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def aclose(self) -> None:
        self._closed = True  # a call still running closes its connection when it ends
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        if self._fallback is not None:
            await self._fallback.aclose()


def _request_bytes(request: httpx.Request, body: bytes) -> bytes:
    """The request line, the request's own headers and its whole body."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    for name, value in request.headers.raw:
        if name.lower() not in (b"content-length", b"transfer-encoding"):
            lines.append(b"%s: %s" % (name, value))
    if body or request.method not in ("GET", "HEAD"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def _connect(
    key: tuple[str, int], seconds: float | None, request: httpx.Request
) -> _Connection:
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(*key, limit=MAX_HEAD_BYTES)
    except TimeoutError:
        raise httpx.ConnectTimeout(f"no connection within {seconds}s", request=request) from None
    except OSError as exc:  # refused, unreachable, or the name did not resolve
        raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
    return _Connection(reader, writer)


async def _exchange(
    connection: _Connection, payload: bytes, request: httpx.Request, seconds: float | None
) -> _Answer:
    reader, writer = connection.reader, connection.writer
    try:
        async with asyncio.timeout(seconds):
            writer.write(payload)
            await writer.drain()
            status, reason, headers, version = _parse_head(
                await _read_head(reader, request), request
            )
            while 100 <= status < 200:  # interim answers (100 Continue): the final one follows
                if status == 101:
                    raise httpx.RemoteProtocolError("unexpected 101", request=request)
                head = await _read_head(reader, request)
                status, reason, headers, version = _parse_head(head, request)
            body, delimited = await _read_body(reader, request, status, headers)
    except TimeoutError:
        raise httpx.ReadTimeout(f"no complete answer within {seconds}s", request=request) from None
    except asyncio.IncompleteReadError:
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body", request=request
        ) from None
    except OSError as exc:  # reset, broken pipe
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
    close = any(name == b"connection" and b"close" in value.lower() for name, value in headers)
    return _Answer(status, reason, headers, body, delimited and version == b"1.1" and not close)


async def _read_head(reader: asyncio.StreamReader, request: httpx.Request) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None
        raise
    except asyncio.LimitOverrunError:
        raise httpx.RemoteProtocolError(
            f"response head longer than {MAX_HEAD_BYTES} bytes", request=request
        ) from None


def _parse_head(
    head: bytes, request: httpx.Request
) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    """(status, reason, headers with lower-case names, minor HTTP version)."""
    status_line, *lines = head[:-4].split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if (
        len(parts) < 2
        or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
        or not (len(parts[1]) == 3 and parts[1].isdigit())
    ):
        raise httpx.RemoteProtocolError(
            f"not an HTTP/1.x answer: {status_line[:80]!r}", request=request
        )
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}", request=request)
        headers.append((name.lower(), value.strip()))
    reason = parts[2] if len(parts) > 2 else b""
    return int(parts[1]), reason, headers, parts[0][-3:]


async def _read_body(
    reader: asyncio.StreamReader,
    request: httpx.Request,
    status: int,
    headers: list[tuple[bytes, bytes]],
) -> tuple[bytes, bool]:
    """(body, whether its end was delimited, so the connection can carry another exchange)."""
    if request.method == "HEAD" or status in _NO_BODY_STATUSES:
        return b"", True
    # As strict as h11 about framing: an answer framed two ways, or with two lengths, could
    # leave bytes that a reused connection would read as the next answer.
    encodings = [value.lower() for name, value in headers if name == b"transfer-encoding"]
    lengths = {value for name, value in headers if name == b"content-length"}
    if encodings:
        if encodings != [b"chunked"] or lengths:
            raise httpx.RemoteProtocolError(
                f"unsupported framing: Transfer-Encoding {encodings}, Content-Length {lengths}",
                request=request,
            )
        return await _read_chunked(reader, request), True
    if lengths:
        length = lengths.pop()
        if lengths or not length.isdigit():
            raise httpx.RemoteProtocolError(f"bad Content-Length {length!r}", request=request)
        size = int(length)
        _check_size(size, request)
        return await reader.readexactly(size), True
    body = bytearray()  # delimited by the server closing the connection
    while chunk := await reader.read(64 * 1024):
        body += chunk
        _check_size(len(body), request)
    return bytes(body), False


async def _read_chunked(reader: asyncio.StreamReader, request: httpx.Request) -> bytes:
    body = bytearray()
    while True:
        size_line = (await _read_line(reader, request)).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_line):
            raise httpx.RemoteProtocolError(f"bad chunk size {size_line[:20]!r}", request=request)
        size = int(size_line, 16)
        if size == 0:
            while await _read_line(reader, request):  # trailers, up to the empty line
                pass
            return bytes(body)
        _check_size(len(body) + size, request)
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise httpx.RemoteProtocolError("chunk not followed by CRLF", request=request)


async def _read_line(reader: asyncio.StreamReader, request: httpx.Request) -> bytes:
    try:
        return (await reader.readuntil(b"\r\n"))[:-2]
    except asyncio.LimitOverrunError:
        raise httpx.RemoteProtocolError("chunk line too long", request=request) from None


def _check_size(size: int, request: httpx.Request) -> None:
    if size > MAX_BODY_BYTES:
        raise httpx.RemoteProtocolError(f"answer body over {MAX_BODY_BYTES} bytes", request=request)
