"""A patch of Hypercorn's HTTP/2 protocol: answering a request before reading its body must
not take the connection down, and SIGTERM must end within GRACEFUL_TIMEOUT.

The defect (Hypercorn 0.17 and 0.18, ``hypercorn/protocol/h2.py``; upstream issues
pgjones/hypercorn#197 and #329, fixes #312 and #334 still open). When the app sends a
complete response before the client has sent the whole request body (405 for a wrong
method, 404, 413, ...), Hypercorn closes the stream and forgets it (``_close_stream`` pops it
from ``H2Protocol.streams``), but the client's half of the stream is still open, so h2 goes
on reporting the DATA frames that follow, and ``_handle_events`` looks the stream up without
a guard (``await self.streams[event.stream_id].handle(Body(...))``, h2.py:259 in 0.18.0):
``KeyError``. The exception leaves ``TCPServer._read_data``, so the connection's task group
cancels every other request on the connection. Each one then answers a bare 500 and waits
(``StreamBuffer.drain``) for the send task the same cancellation has stopped; that wait never
ends, so the task group never exits, ``TCPServer.run`` never reaches ``_close()``, the socket
stays in CLOSE-WAIT, and at shutdown ``asyncio.wait_for(..., graceful_timeout)`` in
``worker_serve`` waits forever for the connection (an aborting task group swallows further
cancellation). Details and a minimal reproduction: docs/upstream/hypercorn-h2-early-response.md.

What :func:`install` changes, and nothing else:

1. ``H2Protocol._handle_events``: DATA, END_STREAM and RST_STREAM for a stream Hypercorn has
   already closed never reach the original code's stream lookup. DATA is credited back
   (``acknowledge_received_data``: the connection window must be, or every later upload on
   the connection stalls) and dropped, so a client sending the rest of an ordinary body
   still gets the answer. Only past :data:`LATE_BODY_LIMIT` bytes is the stream reset with
   RST_STREAM(NO_ERROR), which RFC 9113 section 8.1 allows after a complete response: not at
   once, because curl 7.88 and httpx then report an error instead of the answer.
2. ``H2Protocol._close_stream``: request-body messages the app never read are dropped from
   the request's ASGI queue first. (The queue holds ``max_app_queue_size`` = 10 messages; an
   app that answered without reading left them there, and Hypercorn's ``http.disconnect``
   then waited for room for good while the connection's reader waited on the same queue.)
3. ``H2Protocol.send_task``: once it ends (connection closed, or cancelled), the stream
   buffers it leaves are closed, so no request waits for it forever; a connection always
   finishes, even after an error this patch knows nothing about.
4. ``AsyncioSingleTask.restart`` (``hypercorn/asyncio/worker_context.py``): no new idle timer
   on a connection whose task group is already shutting down. Hypercorn asks for one when a
   cancelled request closes its stream; the task group refuses with ``RuntimeError``, the
   connection task ends with that error instead of being cancelled, and ``worker_serve``
   re-raises it after the graceful timeout: the service exited 1 whenever an HTTP/2 request
   outlived GRACEFUL_TIMEOUT.

:func:`install` is idempotent, and it refuses (:class:`HypercornPatchError`, raised at import
of the module that calls it) to patch a Hypercorn whose internals are not the ones described
here. ``service/server.py`` calls it at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Coroutine
from importlib.metadata import version as distribution_version
from typing import Any

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.stream
from hypercorn.asyncio import worker_context
from hypercorn.protocol import h2 as hypercorn_h2
from hypercorn.protocol.http_stream import HTTPStream

SUPPORTED = ((0, 17), (0, 19))  # Hypercorn >=0.17,<0.19, as pinned in pyproject.toml
_MARK = "_service_h2_patch"  # set on every wrapper this module installs

_CLASSES: dict[str, type] = {
    "H2Protocol": hypercorn_h2.H2Protocol,
    "StreamBuffer": hypercorn_h2.StreamBuffer,
    "AsyncioSingleTask": worker_context.AsyncioSingleTask,
}
# Every coroutine method the patch wraps or calls, with its parameters after ``self``.
EXPECTED_METHODS: dict[str, tuple[str, ...]] = {
    "H2Protocol._handle_events": ("events",),
    "H2Protocol._close_stream": ("stream_id",),
    "H2Protocol.send_task": (),
    "StreamBuffer.close": (),
    "AsyncioSingleTask.restart": ("task_group", "action"),
}
# Attributes of an H2Protocol instance the patch reads, and their types.
EXPECTED_ATTRIBUTES: dict[str, type] = {
    "streams": dict,
    "stream_buffers": dict,
    "connection": h2.connection.H2Connection,
    "closed": bool,
}

Method = Callable[..., Awaitable[None]]


class HypercornPatchError(RuntimeError):
    """The installed Hypercorn is not the one this patch was written for."""


# --- checking -----------------------------------------------------------------------------------


def _installed_version() -> str:
    return distribution_version("hypercorn")


def _major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _method(qualified: str) -> Any:
    owner, _, name = qualified.partition(".")
    return getattr(_CLASSES[owner], name, None)


def _original(method: Any) -> Any:
    return method.__wrapped__ if getattr(method, _MARK, False) else method


def _probe_protocol() -> Any:
    """An H2Protocol built as ``ProtocolWrapper`` builds one (nothing runs)."""
    from hypercorn.config import Config
    from hypercorn.typing import ConnectionState

    async def send(_event: Any) -> None:
        return None

    nothing: Any = None  # the probe never runs an app or a task group
    return hypercorn_h2.H2Protocol(
        nothing,  # app
        Config(),
        worker_context.WorkerContext(None),
        nothing,  # task group
        ConnectionState({}),
        False,  # ssl
        None,  # client
        None,  # server
        send,
    )


def problems() -> list[str]:
    """How the installed Hypercorn differs from what the patch expects (empty: it does not)."""
    found: list[str] = []
    low, high = SUPPORTED
    installed = _installed_version()
    if not low <= _major_minor(installed) < high:
        found.append(
            f"hypercorn {installed} is installed; the patch was written for "
            f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"
        )
    for qualified, parameters in EXPECTED_METHODS.items():
        method = _original(_method(qualified))
        if method is None or not inspect.iscoroutinefunction(method):
            found.append(f"{qualified} is missing or no longer a coroutine function")
            continue
        actual = tuple(inspect.signature(method).parameters)[1:]
        if actual != parameters:
            found.append(f"{qualified}{actual} no longer takes {parameters}")
    try:
        probe = _probe_protocol()
    except Exception as exc:  # any failure: the constructor changed
        found.append(f"H2Protocol(...) can no longer be built as 0.18 builds it: {exc!r}")
    else:
        for name, kind in EXPECTED_ATTRIBUTES.items():
            if not isinstance(getattr(probe, name, None), kind):
                found.append(f"H2Protocol().{name} is not a {kind.__name__}")
    if "app_put" not in inspect.getsource(HTTPStream.handle):
        found.append("HTTPStream.handle no longer delivers request events through app_put")
    if not hasattr(h2.stream.StreamState, "HALF_CLOSED_LOCAL"):
        found.append("h2.stream.StreamState.HALF_CLOSED_LOCAL is gone")
    return found


def check_internals() -> None:
    """Raise :class:`HypercornPatchError` unless Hypercorn is what the patch expects."""
    found = problems()
    if found:
        raise HypercornPatchError(
            "service.h2_patch cannot patch this Hypercorn; re-check the patch against it (see "
            "docs/upstream/hypercorn-h2-early-response.md), or drop the patch if the upstream "
            "fix is released: " + "; ".join(found)
        )


# --- installing ---------------------------------------------------------------------------------


def _patches() -> dict[str, Callable[[Method], Method]]:
    return {
        "H2Protocol._handle_events": _patched_handle_events,
        "H2Protocol._close_stream": _patched_close_stream,
        "H2Protocol.send_task": _patched_send_task,
        "AsyncioSingleTask.restart": _patched_restart,
    }


def is_installed() -> bool:
    return all(getattr(_method(name), _MARK, False) for name in _patches())


def install() -> None:
    """Patch Hypercorn in place. Idempotent: what is patched already stays as it is."""
    if is_installed():
        return
    check_internals()
    for qualified, patch in _patches().items():
        original = _method(qualified)
        if getattr(original, _MARK, False):
            continue
        wrapper = functools.wraps(original)(patch(original))
        setattr(wrapper, _MARK, True)
        owner, _, name = qualified.partition(".")
        setattr(_CLASSES[owner], name, wrapper)


# --- 1. DATA for a stream already closed --------------------------------------------------------

# Late body bytes accepted (credited and dropped) per stream before it is reset: bodies of
# ordinary size end normally for every client, an endless upload does not go on for ever.
# httpx (httpcore 1.0) sends a whole body before it reads the answer and fails the request on
# the reset, so an oversized body (413) of up to this size still gets its 413: 1 MiB here
# cut off a 2 MiB upload to the default MAX_BODY_BYTES. Taking the bytes costs only the
# parsing of their frames (nothing is buffered), as a request of that size would.
LATE_BODY_LIMIT = 64 << 20
_LATE_BYTES = "_service_late_body_bytes"  # H2Protocol instance attribute: stream id -> bytes
_LATE = (h2.events.DataReceived, h2.events.StreamEnded, h2.events.StreamReset)


def _patched_handle_events(original: Method) -> Method:
    async def _handle_events(self: Any, events: list[h2.events.Event]) -> None:
        # Handling an event may close a stream (the app answers meanwhile), so each DATA or
        # END_STREAM is checked just before its turn; the other events keep their order.
        pending: list[h2.events.Event] = []
        for event in events:
            if isinstance(event, _LATE):
                if pending:
                    await original(self, pending)
                    pending = []
                if event.stream_id not in self.streams:
                    _late(self, event)
                    if not isinstance(event, h2.events.StreamReset):
                        continue
            pending.append(event)
        await original(self, pending)  # also flushes what _late() queued

    return _handle_events


def _late(protocol: Any, event: Any) -> None:
    """An event for a stream Hypercorn has closed: DATA is credited and dropped (the
    connection window must be credited, or every later upload on the connection stalls)."""
    late: dict[int, int] = protocol.__dict__.setdefault(_LATE_BYTES, {})
    if not isinstance(event, h2.events.DataReceived):
        late.pop(event.stream_id, None)  # the client's half is closed too: forget it
        return
    protocol.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    late[event.stream_id] = late.get(event.stream_id, 0) + event.flow_controlled_length
    if late[event.stream_id] > LATE_BODY_LIMIT and _reset_answered(protocol, event.stream_id):
        del late[event.stream_id]


def _reset_answered(protocol: Any, stream_id: int) -> bool:
    """RST_STREAM(NO_ERROR), which RFC 9113 section 8.1 allows once the response is complete
    (its END_STREAM out, its send buffer gone) while the client is still sending."""
    if protocol.closed or stream_id in protocol.stream_buffers:
        return False  # the connection is gone, or the response is not all out yet
    stream = protocol.connection.streams.get(stream_id)
    if stream is None or stream.state_machine.state != h2.stream.StreamState.HALF_CLOSED_LOCAL:
        return False
    with contextlib.suppress(h2.exceptions.ProtocolError):  # closed meanwhile: nothing to stop
        protocol.connection.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
    return True


# --- 2. closing a stream whose body was not read ------------------------------------------------


def _patched_close_stream(original: Method) -> Method:
    async def _close_stream(self: Any, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            _drop_unread_body(stream)
        await original(self, stream_id)

    return _close_stream


def _drop_unread_body(stream: Any) -> None:
    """Empty the request's ASGI queue of body chunks the app has not read, so the coming
    ``http.disconnect`` finds room (and a reader blocked on the full queue goes on)."""
    queue = getattr(getattr(stream, "app_put", None), "__self__", None)
    if not isinstance(queue, asyncio.Queue):
        return  # no app started, or not asyncio's queue (the trio worker): leave it
    kept = []
    while not queue.empty():
        message = queue.get_nowait()
        if message.get("type") != "http.request":
            kept.append(message)
    for message in kept:
        queue.put_nowait(message)


# --- 3. the send task's buffers -----------------------------------------------------------------


def _patched_send_task(original: Method) -> Method:
    async def send_task(self: Any) -> None:
        try:
            await original(self)
        finally:
            # Nothing sends any more: release every request waiting for its buffer to drain.
            for buffer in list(self.stream_buffers.values()):
                await buffer.close()

    return send_task


# --- 4. idle timers of a connection being torn down ---------------------------------------------


def _patched_restart(original: Method) -> Method:
    async def restart(self: Any, task_group: Any, action: Callable[[], Coroutine]) -> None:
        started: list[Coroutine] = []

        def timer() -> Coroutine:
            started.append(action())
            return started[-1]

        try:
            await original(self, task_group, timer)
        except RuntimeError:
            if not started:
                raise
            # The task group refused the timer: it is shutting down, no timer is needed.
            started[-1].close()

    return restart
