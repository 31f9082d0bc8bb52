"""Every workaround that reaches into a2a-sdk's internals, in one place.

Each relies on something the SDK does not promise; ``tests/test_a2a_sdk_compat.py`` has a test
per item that fails if the SDK changes under it, and ``pyproject.toml`` pins a2a-sdk to one
minor release so that such a change is an explicit upgrade.

1. Validated jobs travel from the request-context builder to the executor: the handler builds
   the context with our builder *before* it creates a task, so a malformed message gets the
   protocol's error and leaves no task behind; the executor then reads the job off the same
   context object (:class:`JobContextBuilder`, :func:`job_of`). Relies on
   ``DefaultRequestHandler`` passing the context it built to ``AgentExecutor.execute``.
2. The multi-tenant copy of the HTTP+JSON routes, which ``create_rest_routes`` mounts at
   ``/{tenant}``, would swallow every two-segment path of the app; this agent has no tenants
   (:func:`rest_routes`).
3. The protocol 0.3 HTTP+JSON routes (``/v1/message:send``, ``/v1/message:stream``,
   ``/v1/tasks/{id}``, ``/v1/tasks/{id}:subscribe``, ...), served by the SDK's 0.3 adapter with
   two corrections (:func:`create_rest_v03_routes`):

   - Its streaming endpoints open the event stream before the request handler has run, so a
     refusal (invalid params, unknown task, a task that already ended) is raised inside an
     open stream and the HTTP/2 stream is reset. Here the first event is awaited before the
     response starts, as the SDK's own 1.0 routes do: an error before it is an HTTP error in
     the protocol's format (``{"error": {"code", "status", "message", "details"}}``); an
     error after it ends the stream with an ``error`` event carrying the same body.
   - The 0.3 HTTP+JSON wire format is the protobuf JSON of the 0.3 ``a2a.proto`` (what the
     SDK's 0.3 client sends): a message's parts are ``content``, each ``{"text": ...}``,
     ``{"data": {"data": {...}}}`` or ``{"file": {...}}``. A message in the JSON-RPC shape
     (``parts`` of ``{"kind": ...}`` objects) would parse to a message without parts and be
     refused with a misleading "parts must contain at least one element"; here it is
     refused naming the shape this binding takes.
4. The in-memory task store forgets tasks by owner scope and terminal state, with the SDK's
   own definitions of both (:data:`TERMINAL_TASK_STATES`, :func:`resolve_user_scope`).
5. The client keeps the card it was built from only in a private attribute (:func:`card_of`).
6. The SQL task store's table (``DatabaseTaskStore.task_model``: ``id``, ``owner``,
   ``status`` as JSON, ``last_updated``) is read across owners to delete expired tasks and to
   end interrupted ones (:func:`rows_updated_before`, :func:`delete_rows`).
7. Subscribing to a task that no coroutine of this process runs (it runs on another replica
   sharing the store, or its process died) would wait forever on an event queue nobody
   feeds: :class:`GuardedRequestHandler` then follows the task in the store instead, until
   it ends, and ends it failed when it has not moved for longer than any task can run.
   Relies on the handler's ``_active_task_registry``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# First: a2a.compat.v0_3.rest_adapter cannot be imported before a2a.server.routes (the SDK's
# modules import each other in a cycle that only resolves in this order).
import a2a.server.routes
from a2a.client import Client
from a2a.compat.v0_3.context_builders import V03ServerCallContextBuilder
from a2a.compat.v0_3.rest_adapter import REST03Adapter
from a2a.compat.v0_3.rest_handler import REST03Handler
from a2a.server.agent_execution import RequestContext, SimpleRequestContextBuilder
from a2a.server.agent_execution.active_task import TERMINAL_TASK_STATES
from a2a.server.cluster.task_store import StoredTask
from a2a.server.context import ServerCallContext
from a2a.server.owner_resolver import resolve_user_scope
from a2a.server.request_handlers import DefaultRequestHandler, RequestHandler
from a2a.server.routes.common import DefaultServerCallContextBuilder, create_event_source_response
from a2a.server.tasks import DatabaseTaskStore
from a2a.types import (
    AgentCard,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatusUpdateEvent,
)
from a2a.utils import json_utils
from a2a.utils.constants import PROTOCOL_VERSION_0_3
from a2a.utils.error_handlers import build_rest_error_payload, rest_stream_error_handler
from a2a.utils.errors import (
    A2AError,
    InvalidParamsError,
    InvalidRequestError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from a2a.utils.version_validator import validate_version
from sqlalchemy import delete, or_, select
from sse_starlette.event import ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

logger = logging.getLogger("service.a2a.sdk_compat")

__all__ = [
    "TERMINAL_TASK_STATES",
    "RUNNING_STATES",
    "GuardedRequestHandler",
    "JobContextBuilder",
    "StoredRow",
    "delete_rows",
    "rows_updated_before",
    "card_of",
    "create_rest_v03_routes",
    "job_of",
    "resolve_user_scope",
    "rest_routes",
]

# --- 1. validated jobs from the context builder to the executor ----------------------------

JobParser = Callable[[SendMessageRequest], Any]


class _JobRequestContext(RequestContext):
    """A request context that carries the validated job of its message."""

    job: Any = None


class JobContextBuilder(SimpleRequestContextBuilder):
    """Validates the message with ``parse`` (which raises the protocol's error for a bad
    one) before the handler creates a task for it, and keeps the result on the context."""

    def __init__(self, parse: JobParser) -> None:
        super().__init__()
        self._parse = parse

    async def build(
        self,
        context: ServerCallContext,
        params: SendMessageRequest | None = None,
        task_id: str | None = None,
        context_id: str | None = None,
        task: Task | None = None,
    ) -> RequestContext:
        job = self._parse(params) if params is not None else None
        request_context = _JobRequestContext(
            call_context=context,
            request=params,
            task_id=task_id,
            context_id=context_id,
            task=task,
        )
        request_context.job = job
        return request_context


def job_of(context: RequestContext) -> Any:
    """The job :class:`JobContextBuilder` validated for this context, or None."""
    return getattr(context, "job", None)


# --- 2. HTTP+JSON 1.0 routes without the tenant copy ---------------------------------------


def rest_routes(handler: RequestHandler, path_prefix: str) -> list[BaseRoute]:
    """The SDK's 1.0 HTTP+JSON routes at ``path_prefix``, without the ``/{tenant}`` mount."""
    return [
        route
        for route in a2a.server.routes.create_rest_routes(handler, path_prefix=path_prefix)
        if not isinstance(route, Mount)
    ]


# --- 5. the client's card ---------------------------------------------------------------


def card_of(client: Client) -> AgentCard:
    """The card a client from ``ClientFactory`` was built from."""
    card = getattr(client, "_card", None)
    if not isinstance(card, AgentCard):
        raise RuntimeError("a2a-sdk's client no longer keeps its card in _card")
    return card


# --- 6. the SQL task store's rows -------------------------------------------------------


@dataclass(frozen=True)
class StoredRow:
    id: str
    owner: str
    state: int
    last_updated: dt.datetime | None  # naive UTC, as the store writes it


async def rows_updated_before(
    store: DatabaseTaskStore, cutoff: dt.datetime, limit: int = 1000
) -> list[StoredRow]:
    """Up to ``limit`` tasks of every owner last updated before ``cutoff`` (naive UTC)."""
    model = store.task_model
    await store.initialize()
    async with store.async_session_maker() as session:
        stmt = (
            select(model.id, model.owner, model.status, model.last_updated)
            .where(model.last_updated < cutoff)
            .order_by(model.last_updated)
            .limit(limit)
        )
        rows = (await session.execute(stmt)).all()
    return [
        StoredRow(task_id, owner or "", _state(status), last_updated)
        for task_id, owner, status, last_updated in rows
    ]


def _state(status: Any) -> int:
    name = status.get("state") if isinstance(status, dict) else None
    try:
        return TaskState.Value(name) if isinstance(name, str) else TaskState.TASK_STATE_UNSPECIFIED
    except ValueError:
        return TaskState.TASK_STATE_UNSPECIFIED


async def delete_rows(store: DatabaseTaskStore, task_ids: list[str]) -> int:
    """Delete these tasks whoever owns them; the number deleted."""
    if not task_ids:
        return 0
    model = store.task_model
    async with store.async_session_maker.begin() as session:
        result = await session.execute(delete(model).where(or_(model.id.in_(task_ids))))
    return int(getattr(result, "rowcount", 0) or 0)


# --- 7. subscribing to a task this process does not run -----------------------------------

RUNNING_STATES = frozenset({TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING})
Interrupt = Callable[[Task, ServerCallContext], Awaitable[Task]]


class GuardedRequestHandler(DefaultRequestHandler):
    """The SDK's handler, with subscriptions that always end (see item 7 above)."""

    def __init__(
        self, *args: Any, stale_after: float, interrupt: Interrupt, poll: float = 0.25,
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self._stale_after = stale_after
        self._interrupt = interrupt
        self._poll = poll

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Any, None]:
        if await self._active_task_registry.get(params.id) is not None:
            async for event in super().on_subscribe_to_task(params, context):
                yield event
            return
        task = _plain(await self.task_store.get(params.id, context))
        if task is None:
            raise TaskNotFoundError
        if task.status.state in TERMINAL_TASK_STATES:
            raise UnsupportedOperationError(
                message=f"Task {task.id} is in terminal state: {TaskState.Name(task.status.state)}"
            )
        yield task
        async for event in self._follow(task, context):
            yield event

    async def _follow(self, task: Task, context: ServerCallContext) -> AsyncIterator[Any]:
        """Status and artifact updates of ``task`` as the store sees them, to its end."""
        status, artifacts = task.status, {a.artifact_id for a in task.artifacts}
        while True:
            await asyncio.sleep(self._poll)
            current = _plain(await self.task_store.get(task.id, context))
            if current is None:
                raise TaskNotFoundError
            if current.status.state in RUNNING_STATES and _age(current) > self._stale_after:
                current = await self._interrupt(current, context)
            for artifact in current.artifacts:
                if artifact.artifact_id not in artifacts:
                    artifacts.add(artifact.artifact_id)
                    yield TaskArtifactUpdateEvent(
                        task_id=current.id, context_id=current.context_id, artifact=artifact
                    )
            if current.status != status:
                status = current.status
                yield TaskStatusUpdateEvent(
                    task_id=current.id, context_id=current.context_id, status=status
                )
            if status.state in TERMINAL_TASK_STATES:
                return


def _plain(stored: Task | StoredTask | None) -> Task | None:
    # A versioned store returns its task wrapped with a version.
    return stored.task if isinstance(stored, StoredTask) else stored


def _age(task: Task) -> float:
    """Seconds since the task's status last changed (0 when it carries no time)."""
    if not task.status.HasField("timestamp"):
        return 0.0
    changed = task.status.timestamp.ToDatetime(tzinfo=dt.UTC)
    return (dt.datetime.now(dt.UTC) - changed).total_seconds()


# --- 3. protocol 0.3 HTTP+JSON routes ---------------------------------------------------

STREAM = ("/v1/message:stream", "POST")
SUBSCRIBE = ("/v1/tasks/{id}:subscribe", "GET"), ("/v1/tasks/{id}:subscribe", "POST")

EXPECTED_MESSAGE = (
    '{"message": {"messageId": "...", "role": "ROLE_USER", '
    '"content": [{"text": "..."}, {"data": {"data": {...}}}]}}'
)
JSONRPC_SHAPE = (
    "protocol 0.3 HTTP+JSON takes a message as the protobuf JSON of the 0.3 a2a.proto: "
    f"{EXPECTED_MESSAGE}; 'parts' of {{\"kind\": ...}} objects is the JSON-RPC form "
    "(message/send at the JSON-RPC endpoint)"
)
PARTS_FIELD = "send the parts as 'content'"
KIND_FIELD = (
    'a part is {"text": ...}, {"data": {"data": {...}}} or {"file": {...}}, without \'kind\''
)

StreamMethod = Callable[[Request, ServerCallContext], AsyncIterator[dict[str, Any]]]


def create_rest_v03_routes(handler: RequestHandler, path_prefix: str) -> list[Route]:
    """The 0.3 HTTP+JSON routes at ``path_prefix + "/v1/..."``, served by ``handler``."""
    adapter = REST03Adapter(http_handler=handler)
    checked = _CheckedREST03Handler(request_handler=handler)
    adapter.handler = checked  # the adapter's unary routes read their handler from here
    endpoints = adapter.routes()
    missing = {STREAM, *SUBSCRIBE} - set(endpoints)
    if missing:
        raise RuntimeError(f"a2a-sdk's 0.3 HTTP+JSON adapter has no route for {sorted(missing)}")
    context_builder = V03ServerCallContextBuilder(DefaultServerCallContextBuilder())
    endpoints[STREAM] = functools.partial(
        _stream_endpoint, context_builder, checked.on_message_send_stream
    )
    for key in SUBSCRIBE:
        endpoints[key] = functools.partial(
            _stream_endpoint, context_builder, checked.on_subscribe_to_task
        )
    return [
        Route(f"{path_prefix}{path}", endpoint=endpoint, methods=[method])
        for (path, method), endpoint in endpoints.items()
    ]


class _CheckedREST03Handler(REST03Handler):
    """Refuses a message in the JSON-RPC shape before the SDK parses it into nothing."""

    @validate_version(PROTOCOL_VERSION_0_3)
    async def on_message_send(self, request: Request, context: ServerCallContext) -> dict[str, Any]:
        check_message_shape(await request.body())
        return await super().on_message_send(request, context)

    @validate_version(PROTOCOL_VERSION_0_3)
    async def on_message_send_stream(
        self, request: Request, context: ServerCallContext
    ) -> AsyncIterator[dict[str, Any]]:
        check_message_shape(await request.body())
        async for event in super().on_message_send_stream(request, context):
            yield event


def check_message_shape(body: bytes) -> None:
    """Raise InvalidParamsError when a 0.3 HTTP+JSON send carries a JSON-RPC-shaped
    message (``parts``, or parts with ``kind``). Bodies that are not JSON objects are left
    to the SDK's parser, which answers them itself."""
    try:
        payload = json.loads(body)
    except ValueError:
        return
    if not isinstance(payload, dict):
        return
    # "message" is the field's JSON name, "request" its proto name (the SDK client's choice).
    message = payload.get("message", payload.get("request"))
    if not isinstance(message, dict):
        return
    violation = None
    if "parts" in message:
        violation = ("message.parts", PARTS_FIELD)
    elif isinstance(message.get("content"), list):
        violation = next(
            (
                (f"message.content[{index}].kind", KIND_FIELD)
                for index, part in enumerate(message["content"])
                if isinstance(part, dict) and "kind" in part
            ),
            None,
        )
    if violation is not None:
        field, why = violation
        raise InvalidParamsError(
            message=JSONRPC_SHAPE, data={"errors": [{"field": field, "message": why}]}
        )


@rest_stream_error_handler
async def _stream_endpoint(
    context_builder: V03ServerCallContextBuilder, method: StreamMethod, request: Request
) -> Response:
    try:
        await request.body()  # read now: a stream that has started can no longer read it
    except (ValueError, RuntimeError, OSError) as exc:
        raise InvalidRequestError(message=f"cannot read the request body: {exc}") from exc
    events = aiter(method(request, context_builder.build(request)))
    try:
        # Everything the handler refuses is raised before its first event: an HTTP error
        # (the decorator renders it) instead of an event stream that breaks off.
        first = await anext(events)
    except StopAsyncIteration:
        return create_event_source_response(iter([]))
    return create_event_source_response(_events(first, events))


async def _events(
    first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[str | ServerSentEvent]:
    yield json_utils.dumps(first)
    try:
        async for event in rest:
            yield json_utils.dumps(event)
    except Exception as exc:
        if isinstance(exc, A2AError):
            logger.warning("a2a stream ended with an error", extra={"error": exc.message})
        else:
            logger.exception("a2a stream failed")
        yield ServerSentEvent(data=json_utils.dumps(build_rest_error_payload(exc)), event="error")
