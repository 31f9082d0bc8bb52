"""ASGI middleware: request context (id, access log, metrics, last-resort 500) and the body
size limit. Both are plain ASGI (no BaseHTTPMiddleware), so bodies stream through them."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.guard.admission import caller
from service.logging import reset_request_id, set_request_id
from service.web.auth import caller_of
from service.web.metrics import CLIENT_GONE, HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS
from service.web.problems import internal_error_response, problem_response

access_logger = logging.getLogger("service.access")
error_logger = logging.getLogger("service.api")

REQUEST_ID_HEADER = "x-request-id"
# Metric label values must be bounded: a caller can send any method name, and every new value
# would be a new time series. Anything else is counted as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
KNOWN_VERSIONS = frozenset({"1.0", "1.1", "2", "3"})
# An incoming id is echoed only when it is short and plain (no header or log injection).
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def choose_request_id(incoming: str | None) -> str:
    """The caller's X-Request-ID when sane, else a fresh random one."""
    if incoming and _SANE_REQUEST_ID.match(incoming):
        return incoming
    # 32 hex digits, as uuid4().hex. A correlation id, not a secret: Python's generator
    # (reseeded in each forked process) rather than os.urandom, whose system call gives up
    # the GIL and waits behind the model thread to get it back (seen in py-spy profiles).
    return f"{random.getrandbits(128):032x}"


class RequestContextMiddleware:
    """Gives each request an id (header + log context), writes the access log line, records
    the HTTP metrics, and turns any exception that escaped the app into a 500 problem."""

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = choose_request_id(_header(scope, b"x-request-id"))
        token = set_request_id(request_id)
        # Who is asking, for the guard's per-caller share: the client's address here; the
        # auth middleware further in names a token's caller instead.
        caller_token = caller.set((scope.get("client") or ("",))[0])
        started = time.perf_counter()
        status = 0
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error_logger.exception("unhandled error", extra={"path": scope.get("path")})
            if response_started:
                raise  # too late for a problem document; the server resets the stream
            response = internal_error_response(scope.get("path", ""))
            await response(scope, receive, send_with_id)
        finally:
            HTTP_IN_FLIGHT.dec()
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = scope.get("method", "")
            label = method if method in KNOWN_METHODS else "other"
            version = scope.get("http_version", "")
            version = version if version in KNOWN_VERSIONS else "other"
            _request_counter(label, route, status, version).inc()
            _duration_histogram(label, route).observe(elapsed)
            if self.access_log:
                access_logger.info(
                    "request",
                    extra={
                        "method": method,
                        "path": scope.get("path"),
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000.0, 3),
                        "http_version": scope.get("http_version"),
                        "client": _client(scope),
                        "caller": caller_of(scope),
                    },
                )
            reset_request_id(token)
            caller.reset(caller_token)


# The metric children per label set, looked up once (``labels()`` builds a tuple of strings
# and takes a lock on every call). Label values are bounded: route templates, not raw paths.
@functools.cache
def _request_counter(method: str, route: str, status: int, http_version: str) -> Any:
    return HTTP_REQUESTS.labels(method, route, str(status), http_version)


@functools.cache
def _duration_histogram(method: str, route: str) -> Any:
    return HTTP_DURATION.labels(method, route)


def _client(scope: Scope) -> str:
    host, port = scope.get("client") or ("", 0)
    return f"{host}:{port}"


def _route_template(scope: Scope) -> str:
    # The template (/v1/classify), never the raw path: unknown paths must not mint new series.
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # A plain Starlette route (FastAPI's /openapi.json) matched without
    # recording itself: its path is a route's own when the route has no parameters.
    if scope.get("endpoint") is not None and scope.get("path_params") == {}:
        return str(scope.get("path", "unmatched"))
    return "unmatched"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` as soon as the body passes the limit (FastAPI re-raises
    HTTPExceptions from body reading, so the problem handler answers 413)."""

    slug = "body-too-large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class BodyTimeout(HTTPException):
    """Raised from ``receive`` when the body has not fully arrived in time (408)."""

    slug = "body-timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s")


class BodyLimitMiddleware:
    """The request body, and the request's life after it.

    - Refuses bodies over ``max_body_bytes``: by Content-Length before the app runs, and by
      counting while the body streams in (HTTP/2 and chunked bodies need not declare a
      length), so an oversized body is never read past the limit (413).
    - Refuses a body that has not fully arrived ``body_timeout`` seconds after the request
      started (408): a client that stalls or trickles does not hold the stream.
    - Once the body is in, ties the request's work to its client being there: when the
      client goes away (``http.disconnect``: an HTTP/2 stream reset, a closed connection)
      before the response finished, the work is cancelled, so the pipeline call stops and a
      guard call nobody else waits for is cancelled with it. Requests answered within
      ``WATCH_AFTER`` seconds are never watched (a timer, not a task). The app still sees the
      disconnect on ``receive`` (streaming responses stop on it).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout: float = 30.0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, BodyTooLarge(limit))
            return

        loop = asyncio.get_running_loop()
        work = asyncio.current_task()
        deadline = loop.time() + self.body_timeout
        received = 0
        body_read = False
        response_started = False
        finished = False
        gone = asyncio.Event()
        watcher: asyncio.Task[None] | None = None
        timer: asyncio.TimerHandle | None = None

        async def watch() -> None:
            message = await receive()
            while message["type"] != "http.disconnect":  # nothing else comes after the body
                message = await receive()
            gone.set()
            if not finished and work is not None:
                CLIENT_GONE.inc()
                work.cancel()

        def start_watching() -> None:
            nonlocal watcher
            if watcher is None and not finished:
                watcher = loop.create_task(watch())

        async def guarded_receive() -> Message:
            nonlocal received, body_read, timer
            if body_read:  # the app waits for a disconnect (a streaming response does)
                start_watching()
                await gone.wait()
                return {"type": "http.disconnect"}
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] == "http.disconnect":
                gone.set()
            elif message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                if not message.get("more_body", False):
                    body_read = True
                    timer = loop.call_later(WATCH_AFTER, start_watching)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started, finished
            if message["type"] == "http.response.start":
                response_started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:
            if response_started:
                raise
            await self._refuse(scope, receive, send, exc)
        except asyncio.CancelledError:
            if not gone.is_set() or finished or work is None:
                raise  # not ours: the server is cancelling the request
            # The client went away; there is nobody to answer. The cancellation was ours, so
            # it is taken back (asyncio.timeout and task groups further out count them).
            work.uncancel()
        finally:
            if timer is not None:
                timer.cancel()
            if watcher is not None:
                watcher.cancel()

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, exc: BodyTooLarge | BodyTimeout
    ) -> None:
        response = problem_response(
            None,
            exc.status_code,
            exc.slug,
            str(exc.detail),
            path=scope.get("path", ""),
            headers={"Connection": "close"} if scope.get("http_version") == "1.1" else None,
        )
        await response(scope, receive, send)


# Seconds after the body was read before a request starts watching for its client going away.
WATCH_AFTER = 0.02
