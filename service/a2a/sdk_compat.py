"""Every workaround that reaches into a2a-sdk's internals, in one place.

Each relies on something the SDK does not promise; ``tests/test_a2a_sdk_compat.py`` has a test
per item that fails if the SDK changes under it, and ``pyproject.toml`` pins a2a-sdk to one
minor release so that such a change is an explicit upgrade.

1. Validated jobs travel from the request-context builder to the executor: the handler builds
   the context with our builder *before* it creates a task, so a malformed message gets the
   protocol's error and leaves no task behind; the executor then reads the job off the same
   context object (:class:`JobContextBuilder`, :func:`job_of`). Relies on
   ``DefaultRequestHandler`` passing the context it built to ``AgentExecutor.execute``.
   A follow-up (a message naming its task, ``taskId``) is validated against the stored task:
   the handler builds the context with ``task=None`` and loads the task only when the request
   runs (into ``context.current_task``), so the builder reads it from the store itself and
   hands it to its ``follow_up`` parser. It also gives such a message the task's context id
   when it names none: the SDK's builder would make up a new one (the spec says it is the
   task's), which the follow-up and every event of its turn would then carry.
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
     refused naming the shape this binding takes. The 0.3 proto leaves ``role`` optional
     (``ROLE_UNSPECIFIED``) and the SDK's conversion makes such a message a user's; the
     specification requires a role, so a message without one is refused as on every other
     binding.
4. The in-memory task store forgets tasks by owner scope and terminal state, with the SDK's
   own definitions of both (:data:`TERMINAL_TASK_STATES`, :func:`resolve_user_scope`).
5. The client keeps the card it was built from only in a private attribute (:func:`card_of`).
6. The SQL task store's table (``DatabaseTaskStore.task_model``: ``id``, ``owner``,
   ``status`` as JSON, ``last_updated``) is read across owners to delete expired tasks and to
   end interrupted ones (:func:`rows_updated_before`, :func:`delete_rows`); the push configs
   of deleted tasks go too (``DatabasePushNotificationConfigStore.config_model``:
   :func:`delete_push_configs`).
7. Subscribing to a task that no coroutine of this process runs (it runs on another replica
   sharing the store, or its process died) would wait forever on an event queue nobody
   feeds: :class:`GuardedRequestHandler` then follows the task in the store instead, until
   it ends, and ends it failed when it has not moved for longer than any task can run.
   Relies on the handler's ``_active_task_registry``. Every subscription also ends when the
   task waits for input (input-required, auth-required), as a message stream does: the SDK's
   own subscription to a task this process holds stays open across a conversation's turns
   until the task ends. A follower of the store streams the parts an artifact gains, not only
   new artifacts (a chat reply arrives in chunks).
8. Bodies the SDK's parsers break on. It reads a JSON-RPC body with ``json.loads`` and an
   HTTP+JSON body with protobuf's ``json_format.Parse``, and answers whatever they raise
   beyond ``JSONDecodeError`` / ``ParseError`` as an internal error: a body that is not
   UTF-8, nests deeper than the interpreter's recursion limit or holds an integer over
   Python's digit limit got JSON-RPC ``-32603`` or an HTTP+JSON 500. Every route that reads
   a body checks it first (:func:`parse_json_body`: UTF-8, JSON without ``NaN``/``Infinity``,
   finite numbers, at most :data:`MAX_JSON_DEPTH` levels) and answers the binding's own
   error: JSON-RPC ``-32700`` (:func:`checked_jsonrpc_route`), HTTP+JSON 400
   ``INVALID_ARGUMENT`` (:func:`rest_routes`, :func:`create_rest_v03_routes`). The 0.3
   ``GET /v1/tasks/{id}`` converts ``historyLength`` with a bare ``int()`` (a 500 for
   ``?historyLength=x``); it is checked first too.
9. Method names of the other protocol version on JSON-RPC. A 0.3 method (``message/send``)
   sent with ``A2A-Version: 1.0`` reaches the SDK's 0.3 adapter, whose version check raises
   VersionNotSupported, which the adapter answers as ``-32603`` (0.3 has no ``-32009``).
   Under a 1.x version the 1.0 semantics apply, and 1.0 has no such method: ``-32601``,
   naming the 1.0 method; under a version this agent does not speak at all, ``-32009``, as
   the SDK answers a 1.0 method then (:func:`checked_jsonrpc_route`). A 1.0 method name
   without the header stays the SDK's answer (``-32009``: 0.3 is assumed, as the spec says).
10. The agent card's security schemes. The SDK serves one card for both protocol versions and
    merges its 0.3 conversion into the 1.0 JSON, so each ``securitySchemes`` entry holds both
    forms in one object (``{"httpAuthSecurityScheme": {...}, "type": "http", "scheme": ...}``),
    which is no valid 1.0 ``SecurityScheme`` (exactly one scheme kind). :func:`card_routes`
    serves the SDK's card dict (``agent_card_to_dict``) with each entry in one form: the 1.0
    form for a request with ``A2A-Version: 1.x`` (what a 1.0 client, a2a-sdk's included,
    sends), else the 0.3 form, which a2a-sdk 1.x's card parser maps to the 1.0 one.
    ``ETag`` and ``If-None-Match`` as the SDK's route, per view (``Vary: A2A-Version``).
    The 1.0 view is the 1.0 JSON alone: the merged fields (``additionalInterfaces``, ``url``,
    ``security``, ...) are no 1.0 ``AgentCard`` fields, and a strict 1.0 parser refuses them.
    The 0.3 HTTP+JSON ``GET /v1/card`` answers the card in the JSON-RPC form (pydantic's dump)
    where the binding, and the SDK's own 0.3 client, read the 0.3 protobuf JSON (its
    ``security`` is ``[{"schemes": {...}}]``, not ``[{"bearer": []}]``, which that client drops
    without a word); :class:`_CheckedREST03Handler` answers the protobuf JSON.
11. ``ListTasks`` status filters. The SDK parses JSON-RPC params and HTTP+JSON query
    parameters with protobuf's ``ParseDict`` ignoring unknown fields, which also drops an
    unknown enum name, and keeps an unknown enum number: ``status=TASK_STATE_BOGUS`` listed
    every task, ``status=99`` none. Both are refused naming the known states (JSON-RPC
    ``-32602``: :func:`jsonrpc_refusal`; HTTP+JSON 400: :func:`rest_routes`).
12. HTTP+JSON query parameters. Both versions' GET routes read their parameters by their
    camelCase names (as the specification names them) and silently ignore any other key, so
    ``?history_length=-1`` returned the whole history where ``?historyLength=-1`` is refused.
    A snake_case spelling of a parameter the route takes is refused naming the camelCase one
    (:func:`checked_query`).
13. The 0.3 HTTP+JSON route that deletes a push config
    (``DELETE /v1/tasks/{id}/pushNotificationConfigs/{push_id}``): the SDK's 0.3 adapter has
    the other three push config routes but not this one, which the 0.3 specification names;
    it is served through the adapter's own error handling and 0.3 request handler
    (:func:`create_rest_v03_push_delete_route`).
14. The 0.3 JSON-RPC answer to ``tasks/pushNotificationConfig/delete``. Its result is
    ``null``, and the SDK dumps the response without its ``None`` fields, so the answer held
    neither ``result`` nor ``error``: no JSON-RPC 2.0 response. It gets ``"result": null``
    back (:func:`checked_jsonrpc_route`).
15. 0.3 JSON-RPC params. The SDK's 0.3 adapter answers every validation error of a request
    as invalid request (-32600), a message without a ``role`` included; the envelope is a
    valid request there, its params are not (-32602). When the SDK answered -32600 to a 0.3
    request, :func:`checked_jsonrpc_route` validates it with the adapter's own model and
    answers invalid params instead, naming the fields, when every error lies in ``params``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
import logging
import math
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Sequence,
)
from dataclasses import dataclass
from typing import Any

# First: a2a.compat.v0_3.rest_adapter cannot be imported before a2a.server.routes (the SDK's
# modules import each other in a cycle that only resolves in this order).
import a2a.server.routes
from a2a.client import Client
from a2a.compat.v0_3 import types as types_v03
from a2a.compat.v0_3.context_builders import V03ServerCallContextBuilder
from a2a.compat.v0_3.jsonrpc_adapter import JSONRPC03Adapter
from a2a.compat.v0_3.proto_utils import ToProto as V03ToProto
from a2a.compat.v0_3.rest_adapter import REST03Adapter
from a2a.compat.v0_3.rest_handler import REST03Handler
from a2a.compat.v0_3.types import GetAuthenticatedExtendedCardRequest
from a2a.server.agent_execution import RequestContext, SimpleRequestContextBuilder
from a2a.server.agent_execution.active_task import TERMINAL_TASK_STATES
from a2a.server.cluster.task_store import StoredTask
from a2a.server.context import ServerCallContext
from a2a.server.jsonrpc_models import JSONParseError as JSONRPCParseError
from a2a.server.owner_resolver import resolve_user_scope
from a2a.server.request_handlers import DefaultRequestHandler, RequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict, build_error_response
from a2a.server.routes.common import DefaultServerCallContextBuilder, create_event_source_response
from a2a.server.tasks import DatabasePushNotificationConfigStore, DatabaseTaskStore, TaskStore
from a2a.types import (
    AgentCard,
    Artifact,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTasksRequest,
    SecurityScheme,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatusUpdateEvent,
)
from a2a.utils import json_utils
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, VERSION_HEADER
from a2a.utils.error_handlers import build_rest_error_payload, rest_stream_error_handler
from a2a.utils.errors import (
    JSON_RPC_ERROR_CODE_MAP,
    A2AError,
    InvalidParamsError,
    InvalidRequestError,
    MethodNotFoundError,
    TaskNotFoundError,
    UnsupportedOperationError,
    VersionNotSupportedError,
)
from a2a.utils.version_validator import validate_version
from google.protobuf.json_format import MessageToDict
from packaging.version import InvalidVersion, Version
from pydantic import ValidationError
from sqlalchemy import and_, delete, or_, select
from sse_starlette.event import ServerSentEvent
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

logger = logging.getLogger("service.a2a.sdk_compat")

__all__ = [
    "TERMINAL_TASK_STATES",
    "INTERRUPTED_STATES",
    "RUNNING_STATES",
    "GuardedRequestHandler",
    "JobContextBuilder",
    "StoredRow",
    "delete_rows",
    "rows_updated_before",
    "card_of",
    "card_routes",
    "list_tasks_refusal",
    "checked_jsonrpc_route",
    "create_rest_v03_routes",
    "job_of",
    "parse_json_body",
    "resolve_user_scope",
    "rest_routes",
]

# --- 1. validated jobs from the context builder to the executor ----------------------------

JobParser = Callable[[SendMessageRequest], Any]
FollowUpParser = Callable[[SendMessageRequest, Task], Any]
# The job a message starting a new task runs: the parsed one, or one that refuses it.
Admission = Callable[[ServerCallContext, Any], Any]


class _JobRequestContext(RequestContext):
    """A request context that carries the validated job of its message."""

    job: Any = None


class JobContextBuilder(SimpleRequestContextBuilder):
    """Validates the message with ``parse`` (which raises the protocol's error for a bad
    one) before the handler creates a task for it, and keeps the result on the context. A
    message naming a task goes to ``follow_up`` with that task, read from ``task_store``; a
    message starting a task gets the job ``admit`` makes of its parsed one."""

    def __init__(
        self,
        parse: JobParser,
        *,
        task_store: TaskStore | None = None,
        follow_up: FollowUpParser | None = None,
        admit: Admission | None = None,
    ) -> None:
        super().__init__()
        self._parse = parse
        self._task_store = task_store
        self._follow_up = follow_up
        self._admit = admit

    async def build(
        self,
        context: ServerCallContext,
        params: SendMessageRequest | None = None,
        task_id: str | None = None,
        context_id: str | None = None,
        task: Task | None = None,
    ) -> RequestContext:
        stored = await self._stored(params, task_id, context)
        if stored is not None and not context_id:
            context_id = stored.context_id  # not a new one: the task's (see item 1)
        if params is None:
            job = None
        elif stored is not None and self._follow_up is not None:
            job = self._follow_up(params, stored)
        else:
            job = self._parse(params)
            if self._admit is not None:
                job = self._admit(context, job)
        request_context = _JobRequestContext(
            call_context=context,
            request=params,
            task_id=task_id,
            context_id=context_id,
            task=task,
        )
        request_context.job = job
        return request_context

    async def _stored(
        self, params: SendMessageRequest | None, task_id: str | None, context: ServerCallContext
    ) -> Task | None:
        """The task a follow-up names, from the store (None for a message starting one)."""
        if params is None or not task_id or self._task_store is None:
            return None
        # The handler has checked that the task exists for this caller; it may have gone since.
        stored = _plain(await self._task_store.get(task_id, context))
        if stored is None:
            raise TaskNotFoundError
        return stored


def job_of(context: RequestContext) -> Any:
    """The job :class:`JobContextBuilder` validated for this context, or None."""
    return getattr(context, "job", None)


# --- 2. HTTP+JSON 1.0 routes without the tenant copy ---------------------------------------


def rest_routes(handler: RequestHandler, path_prefix: str) -> list[BaseRoute]:
    """The SDK's 1.0 HTTP+JSON routes at ``path_prefix``, without the ``/{tenant}`` mount,
    their bodies checked first (item 8) and ListTasks' status filter too (item 11)."""
    return [
        Route(route.path, endpoint=_checked_list(route.endpoint), methods=sorted(route.methods))
        if isinstance(route, Route)
        and route.path == f"{path_prefix}/tasks"
        and route.methods
        and "GET" in route.methods
        else route
        for route in _with_checked_queries(
            _with_checked_bodies(
                [
                    route
                    for route in a2a.server.routes.create_rest_routes(
                        handler, path_prefix=path_prefix
                    )
                    if not isinstance(route, Mount)
                ]
            )
        )
    ]


def _checked_list(endpoint: Endpoint) -> Endpoint:
    async def checked(request: Request) -> Response:
        if speaks_1_0(request.headers.get(VERSION_HEADER)):
            refusal = list_tasks_refusal(request.query_params.getlist("status"))
            if refusal is not None:
                return rest_error(refusal)
        return await endpoint(request)

    return _named_like(checked, endpoint)


# --- 10. the agent card's security schemes, one form per entry ---------------------------

# The JSON names of the 1.0 scheme kinds (the SecurityScheme oneof).
SCHEME_KINDS = frozenset(
    field.json_name for field in SecurityScheme.DESCRIPTOR.oneofs_by_name["scheme"].fields
)


def card_routes(card: AgentCard, card_url: str) -> list[BaseRoute]:
    """The SDK's agent card route, each security scheme in the caller's protocol's form."""
    [sdk] = a2a.server.routes.create_agent_card_routes(card, card_url=card_url)
    if not isinstance(sdk, Route):
        raise TypeError(f"a2a-sdk gave a {type(sdk).__name__} for the agent card")
    views = {v1: card_view(card, v1=v1) for v1 in (True, False)}
    etags = {v1: _weak_etag(view) for v1, view in views.items()}

    async def get_card(request: Request) -> Response:
        v1 = speaks_1_0(request.headers.get(VERSION_HEADER))
        headers = {"ETag": etags[v1], "Vary": VERSION_HEADER}
        if _matches(request.headers.get("if-none-match"), etags[v1]):
            return Response(status_code=304, headers=headers)
        return JSONResponse(views[v1], headers=headers)

    return [Route(sdk.path, endpoint=_named_like(get_card, sdk.endpoint), methods=["GET"])]


def card_view(card: AgentCard, *, v1: bool) -> dict[str, Any]:
    """The card as a 1.0 client reads it (``v1``: the 1.0 JSON alone, which a strict 1.0
    parser takes), else the SDK's backward-compatible JSON (1.0 plus the 0.3 fields) with each
    ``securitySchemes`` entry in the 0.3 form (``type``, ...)."""
    if v1:
        return MessageToDict(card)
    view = agent_card_to_dict(card)
    proto = MessageToDict(card).get("securitySchemes", {})
    schemes = view.get("securitySchemes")
    if not isinstance(schemes, dict):
        return view
    for name, entry in schemes.items():
        legacy = {key: value for key, value in entry.items() if key not in SCHEME_KINDS}
        schemes[name] = legacy or proto.get(name, entry)
    return view


def _weak_etag(view: dict[str, Any]) -> str:
    unsigned = {key: value for key, value in view.items() if key != "signatures"}
    body = json.dumps(unsigned, sort_keys=True, separators=(",", ":"))
    return f'W/"{hashlib.sha256(body.encode()).hexdigest()}"'


def _matches(header: str | None, etag: str) -> bool:
    tags = [tag.strip().removeprefix("W/") for tag in (header or "").split(",") if tag.strip()]
    return "*" in tags or etag.removeprefix("W/") in tags


def speaks_1_0(version: str | None) -> bool:
    """Whether an ``A2A-Version`` header value asks for protocol 1.x."""
    try:
        return bool(version) and Version(version or "").major == Version(PROTOCOL_VERSION_1_0).major
    except InvalidVersion:
        return False


# --- 11. ListTasks status filters ----------------------------------------------------------

STATE_NAMES = tuple(TaskState.keys())
KNOWN_STATES = ", ".join(STATE_NAMES)


def list_tasks_refusal(statuses: Sequence[Any]) -> InvalidParamsError | None:
    """InvalidParamsError for a ListTasks status filter that names no TaskState (a name or
    its number, as protobuf's JSON takes an enum), else None."""
    for status in statuses:
        if isinstance(status, str) and status.strip().lstrip("-").isdecimal():
            status = int(status)
        known = (
            status in STATE_NAMES
            if isinstance(status, str)
            else isinstance(status, int)
            and not isinstance(status, bool)
            and status in TaskState.values()
        )
        if not known:
            return InvalidParamsError(
                message=f"status {status!r} is no task state; the states are {KNOWN_STATES}",
                data={"errors": [{"field": "status", "message": f"one of {KNOWN_STATES}"}]},
            )
    return None


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
    store: DatabaseTaskStore,
    cutoff: dt.datetime,
    states: Collection[int],
    page: int = 1000,
) -> AsyncIterator[list[StoredRow]]:
    """The tasks of every owner in one of ``states``, last updated before ``cutoff`` (naive
    UTC), oldest first, ``page`` rows at a time. Paged by (last_updated, id), so rows the
    caller changes or deletes between pages neither repeat nor hide the ones after them."""
    model = store.task_model
    names = [TaskState.Name(state) for state in states]
    await store.initialize()
    after: tuple[dt.datetime, str] | None = None
    while True:
        stmt = (
            select(model.id, model.owner, model.status, model.last_updated)
            .where(model.last_updated < cutoff, model.status["state"].as_string().in_(names))
            .order_by(model.last_updated, model.id)
            .limit(page)
        )
        if after is not None:
            stamp, task_id = after
            stmt = stmt.where(
                or_(
                    model.last_updated > stamp,
                    and_(model.last_updated == stamp, model.id > task_id),
                )
            )
        async with store.async_session_maker() as session:
            rows = (await session.execute(stmt)).all()
        if not rows:
            return
        yield [
            StoredRow(task_id, owner or "", _state(status), last_updated)
            for task_id, owner, status, last_updated in rows
        ]
        if len(rows) < page:
            return
        last = rows[-1]
        after = (last.last_updated, last.id)  # never NULL: the filter compares it


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
        result = await session.execute(delete(model).where(model.id.in_(task_ids)))
    return int(getattr(result, "rowcount", 0) or 0)


async def delete_push_configs(
    store: DatabasePushNotificationConfigStore, task_ids: list[str]
) -> int:
    """Delete the push configs of these tasks whoever owns them; the number deleted."""
    if not task_ids:
        return 0
    model = store.config_model
    await store.initialize()
    async with store.async_session_maker.begin() as session:
        result = await session.execute(delete(model).where(model.task_id.in_(task_ids)))
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
            async with contextlib.aclosing(super().on_subscribe_to_task(params, context)) as sdk:
                async for event in sdk:
                    yield event
                    if _paused(event):  # the turn is over; the next one has its own stream
                        return
            return
        task = _plain(await self.task_store.get(params.id, context))
        if task is None:
            raise TaskNotFoundError
        if task.status.state in TERMINAL_TASK_STATES:
            raise UnsupportedOperationError(
                message=f"Task {task.id} is in terminal state: {TaskState.Name(task.status.state)}"
            )
        yield task
        if task.status.state in INTERRUPTED_STATES:
            return  # nothing runs until the next message
        async for event in self._follow(task, context):
            yield event

    async def _follow(self, task: Task, context: ServerCallContext) -> AsyncIterator[Any]:
        """Status and artifact updates of ``task`` as the store sees them, to its end."""
        status = task.status
        parts = {artifact.artifact_id: len(artifact.parts) for artifact in task.artifacts}
        while True:
            await asyncio.sleep(self._poll)
            current = _plain(await self.task_store.get(task.id, context))
            if current is None:
                raise TaskNotFoundError
            if current.status.state in RUNNING_STATES and _age(current) > self._stale_after:
                current = await self._interrupt(current, context)
            for artifact in current.artifacts:
                seen = parts.get(artifact.artifact_id)
                if seen is not None and len(artifact.parts) <= seen:
                    continue
                parts[artifact.artifact_id] = len(artifact.parts)
                news = Artifact()
                news.CopyFrom(artifact)
                del news.parts[: seen or 0]  # only what this subscriber has not been sent
                yield TaskArtifactUpdateEvent(
                    task_id=current.id,
                    context_id=current.context_id,
                    artifact=news,
                    append=seen is not None,
                )
            if current.status != status:
                status = current.status
                yield TaskStatusUpdateEvent(
                    task_id=current.id, context_id=current.context_id, status=status
                )
            if status.state in TERMINAL_TASK_STATES or status.state in INTERRUPTED_STATES:
                return


INTERRUPTED_STATES = frozenset(
    {TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED}
)


def _paused(event: Any) -> bool:
    """Whether a subscription's event leaves the task waiting for input."""
    return isinstance(event, Task | TaskStatusUpdateEvent) and (
        event.status.state in INTERRUPTED_STATES
    )


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


def create_rest_v03_routes(handler: RequestHandler, path_prefix: str) -> list[BaseRoute]:
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
    return _with_checked_queries(
        _with_checked_bodies(
            [
                Route(f"{path_prefix}{path}", endpoint=endpoint, methods=[method])
                for (path, method), endpoint in endpoints.items()
            ]
        )
    )


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

    @validate_version(PROTOCOL_VERSION_0_3)
    async def on_get_task(self, request: Request, context: ServerCallContext) -> dict[str, Any]:
        history_length(request.query_params.get("historyLength"))  # the SDK's int() 500s
        return await super().on_get_task(request, context)

    @validate_version(PROTOCOL_VERSION_0_3)
    async def on_get_extended_agent_card(
        self, request: Request, context: ServerCallContext
    ) -> dict[str, Any]:
        # The binding's protobuf JSON, as every other 0.3 HTTP+JSON answer (item 10).
        card = await self.handler03.on_get_extended_agent_card(
            GetAuthenticatedExtendedCardRequest(id=0), context
        )
        return MessageToDict(V03ToProto.agent_card(card))


def check_message_shape(body: bytes) -> None:
    """Raise InvalidParamsError when a 0.3 HTTP+JSON send carries a JSON-RPC-shaped
    message (``parts``, or parts with ``kind``). Bodies that are not JSON objects are left
    to the SDK's parser, which answers them itself."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return
    if not isinstance(payload, dict):
        return
    # "message" is the field's JSON name, "request" its proto name (the SDK client's choice).
    for message in (payload.get("message"), payload.get("request")):
        if not isinstance(message, dict):
            continue
        violation = _shape_violation(message)
        if violation is not None:
            field, why, text = violation
            raise InvalidParamsError(
                message=text, data={"errors": [{"field": field, "message": why}]}
            )


PART_KINDS = ("text", "data", "file")
EMPTY_PART = "a part is an object holding one of 'text', 'data' or 'file'"


ROLE_FIELD = "a message's role is ROLE_USER (or ROLE_AGENT)"
NO_ROLE = f"message.role is required: {EXPECTED_MESSAGE}"


def _shape_violation(message: dict[str, Any]) -> tuple[str, str, str] | None:
    if "parts" in message:
        return "message.parts", PARTS_FIELD, JSONRPC_SHAPE
    if message.get("role") in (None, "", "ROLE_UNSPECIFIED", 0):
        return "message.role", ROLE_FIELD, NO_ROLE
    content = message.get("content")
    for index, part in enumerate(content if isinstance(content, list) else ()):
        field = f"message.content[{index}]"
        if isinstance(part, dict) and "kind" in part:
            return field + ".kind", KIND_FIELD, JSONRPC_SHAPE
        # protobuf parses a string (or {}, or {"text": null}) as a part without content,
        # which the SDK's 0.3 conversion cannot take (ValueError: a 500).
        if not isinstance(part, dict) or all(part.get(kind) is None for kind in PART_KINDS):
            return field, EMPTY_PART, f"{field} holds no text, data or file"
    return None


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


# --- 8. request bodies the SDK's parsers break on ------------------------------------------

# Deeper than any A2A request needs (a data part's conversation is 8 levels from the
# JSON-RPC envelope), and shallower than protobuf's own limit (100 from the request).
MAX_JSON_DEPTH = 64

Endpoint = Callable[[Request], Awaitable[Response]]


class BodyError(ValueError):
    """A request body that is not a JSON text this agent reads."""


def parse_json_body(body: bytes) -> Any:
    """``body`` as JSON, or :class:`BodyError` when it is not UTF-8, not JSON (``NaN`` and
    ``Infinity`` are not), holds a number beyond the range of a double (``1e400``, an
    integer of 309 digits), or nests deeper than :data:`MAX_JSON_DEPTH`."""
    try:
        text = body.decode("utf-8-sig")  # a leading byte-order mark is ignored (RFC 8259)
    except UnicodeDecodeError as exc:
        raise BodyError(f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_constant=_not_json, parse_float=_finite, parse_int=_int)
    except RecursionError:
        raise BodyError(_TOO_DEEP) from None
    except ValueError as exc:  # not JSON, NaN/Infinity, 1e400, an int over 4300 digits
        raise BodyError(f"the request body is not valid JSON: {exc}") from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise BodyError(_TOO_DEEP)
    return value


_TOO_DEEP = f"the request body nests deeper than {MAX_JSON_DEPTH} levels"


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _finite(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError(f"the number {literal[:40]} is out of range")
    return number


def _int(literal: str) -> int:
    # Struct values are doubles: an integer past the largest double breaks their conversion.
    number = int(literal)
    if len(literal) > 300:
        try:
            float(number)
        except OverflowError:
            raise ValueError(f"the number {literal[:40]}... is out of range") from None
    return number


def _deeper_than(value: Any, limit: int) -> bool:
    # Iterative: the nesting json.loads took may be deeper than Python's stack allows here.
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def checked_body(endpoint: Endpoint) -> Endpoint:
    """An HTTP+JSON endpoint that answers a body :func:`parse_json_body` refuses with the
    binding's 400 (``INVALID_ARGUMENT``, reason ``INVALID_REQUEST``, as the SDK answers a
    body protobuf cannot parse) before ``endpoint`` sees it. An empty body is left to it."""

    async def checked(request: Request) -> Response:
        body = await _body(request)  # cached: the endpoint reads the same bytes
        if body is None:
            return rest_error(InvalidRequestError(message=GONE))
        if body:
            try:
                parse_json_body(body)
            except BodyError as exc:
                return rest_error(InvalidRequestError(message=str(exc)))
        return await endpoint(request)

    return _named_like(checked, endpoint)


GONE = "the client went away before sending the whole body"


async def _body(request: Request) -> bytes | None:
    """The request's body, or None when the client disconnected before its end. (A body
    over MAX_BODY_BYTES raises the body limit's 413, answered as everywhere else.)"""
    try:
        return await request.body()
    except ClientDisconnect:
        return None


def rest_error(error: A2AError) -> JSONResponse:
    """``error`` as the HTTP+JSON binding answers it."""
    logger.warning("a2a request refused", extra={"error": error.message})
    payload = build_rest_error_payload(error)
    return JSONResponse(payload, status_code=payload["error"]["code"])


def _named_like(wrapper: Endpoint, endpoint: Any) -> Endpoint:
    # The name and docstring give the route's name and OpenAPI summary and description.
    inner = endpoint.func if isinstance(endpoint, functools.partial) else endpoint
    wrapper.__name__ = getattr(inner, "__name__", wrapper.__name__)
    wrapper.__doc__ = getattr(inner, "__doc__", None)
    return wrapper


def _with_checked_bodies(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    return _wrapped(routes, "POST", checked_body)


def _wrapped(
    routes: Sequence[BaseRoute], method: str, wrap: Callable[[Endpoint], Endpoint]
) -> list[BaseRoute]:
    """``routes`` with the endpoint of each route that answers ``method`` wrapped."""
    return [
        Route(route.path, endpoint=wrap(route.endpoint), methods=sorted(route.methods))
        if isinstance(route, Route) and route.methods and method in route.methods
        else route
        for route in routes
    ]


# The query parameters of the GET routes whose snake_case name differs from the camelCase
# one the routes read (item 12): snake_case name -> camelCase name.
CAMEL_QUERY_PARAMS = {
    field.name: field.camelcase_name
    for request in (GetTaskRequest, ListTasksRequest, ListTaskPushNotificationConfigsRequest)
    for field in request.DESCRIPTOR.fields
    if field.name != field.camelcase_name
}


def query_refusal(keys: Sequence[str]) -> InvalidParamsError | None:
    """InvalidParamsError naming the camelCase spelling of each snake_case parameter."""
    wrong = sorted({key for key in keys if key in CAMEL_QUERY_PARAMS})
    if not wrong:
        return None
    uses = ", ".join(f"{CAMEL_QUERY_PARAMS[key]}, not {key}" for key in wrong)
    return InvalidParamsError(
        message=f"query parameters are camelCase: {uses}",
        data={
            "errors": [{"field": key, "message": f"use {CAMEL_QUERY_PARAMS[key]}"} for key in wrong]
        },
    )


def checked_query(endpoint: Endpoint) -> Endpoint:
    """A GET endpoint that refuses snake_case parameter names before ``endpoint`` would
    ignore them (item 12)."""

    async def checked(request: Request) -> Response:
        refusal = query_refusal(list(request.query_params.keys()))
        if refusal is not None:
            return rest_error(refusal)
        return await endpoint(request)

    return _named_like(checked, endpoint)


def _with_checked_queries(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    return _wrapped(routes, "GET", checked_query)


def history_length(query: str | None) -> int | None:
    """The 0.3 ``historyLength`` query parameter, or InvalidParamsError."""
    if query is None or query == "":
        return None
    stripped = query.strip()
    if not (stripped.isdecimal() and stripped.isascii()) or int(stripped) > 2**31 - 1:
        raise InvalidParamsError(
            message=f"historyLength must be a whole number from 0 to {2**31 - 1}",
            data={"errors": [{"field": "historyLength", "message": "not a uint32 number"}]},
        )
    return int(stripped)


# --- 9. JSON-RPC: body check and method names of the other protocol version ---------------

# The 0.3 JSON-RPC methods and their 1.0 names.
V03_METHODS = {
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
    "tasks/get": "GetTask",
    "tasks/cancel": "CancelTask",
    "tasks/resubscribe": "SubscribeToTask",
    "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
    "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
    "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard",
}


def checked_jsonrpc_route(route: Route, path: str | None = None) -> Route:
    """The SDK's JSON-RPC route (at ``path``, default its own), with the body checked
    before the SDK parses it and 0.3 method names refused under another version."""
    endpoint = route.endpoint

    async def checked(request: Request) -> Response:
        body = await _body(request)  # cached: the SDK reads the same bytes
        if body is None:
            return _jsonrpc_error(None, InvalidRequestError(message=GONE))
        try:
            payload = parse_json_body(body)
        except BodyError as exc:
            return _jsonrpc_error(None, JSONRPCParseError(message=str(exc)))
        refusal = jsonrpc_refusal(payload, request.headers.get(VERSION_HEADER))
        if refusal is not None:
            request_id, error = refusal
            v03 = isinstance(error, InvalidParamsError) and payload.get("method") in V03_METHODS
            return _jsonrpc_error(request_id, error, v03=v03)
        response: Response = await endpoint(request)
        method = payload.get("method") if isinstance(payload, dict) else None
        if not isinstance(method, str):
            return response  # the SDK has answered a method that is no name (-32600)
        if method == V03_DELETE_PUSH_CONFIG:
            return _with_null_result(response)  # item 14
        if method in V03_METHODS and _answered_invalid_request(response):
            params_refusal = _v03_params_refusal(payload.get("id"), method, payload)  # item 15
            if params_refusal is not None:
                return _jsonrpc_error(*params_refusal, v03=True)
        return response

    return Route(
        path or route.path,
        endpoint=_named_like(checked, endpoint),
        methods=sorted(route.methods or ("POST",)),
    )


V03_DELETE_PUSH_CONFIG = "tasks/pushNotificationConfig/delete"


def _with_null_result(response: Response) -> Response:
    """A JSON-RPC answer with neither ``result`` nor ``error``, given ``"result": null``."""
    if not isinstance(response, JSONResponse):
        return response
    answer = json.loads(bytes(response.body))
    if not isinstance(answer, dict) or "result" in answer or "error" in answer:
        return response
    return JSONResponse({**answer, "result": None}, status_code=response.status_code)


# Integer fields of 0.3 params that are int32 in the proto the SDK converts them to (a
# larger value fails that conversion: -32603).
V03_INT32_PARAMS = (("historyLength",), ("configuration", "historyLength"))
INT32 = range(-(2**31), 2**31)


def jsonrpc_refusal(payload: Any, version: str | None) -> tuple[str | int | None, A2AError] | None:
    """The request id and error for a 0.3 method under a version other than 0.x, or with an
    int32 parameter out of range; None for everything else (the SDK's to answer)."""
    if not isinstance(payload, dict) or payload.get("jsonrpc") != "2.0":
        return None
    method, request_id = payload.get("method"), payload.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int | None):
        return None  # the SDK answers an invalid id (-32600)
    params = payload.get("params")
    if method == "ListTasks" and speaks_1_0(version) and isinstance(params, dict):
        status = params.get("status")
        refusal = None if status is None else list_tasks_refusal([status])
        return None if refusal is None else (request_id, refusal)  # item 11
    if not isinstance(method, str) or method not in V03_METHODS:
        return None
    if not version:
        return _int32_refusal(request_id, payload.get("params"))
    try:
        major = Version(version).major
    except InvalidVersion:
        major = None
    if major == 0:
        return _int32_refusal(request_id, payload.get("params"))
    if major == Version(PROTOCOL_VERSION_1_0).major:
        name = V03_METHODS[method]
        return request_id, MethodNotFoundError(
            message=(
                f"{method!r} is a protocol 0.3 method; under A2A-Version {version} it is "
                f"{name!r} (or send no A2A-Version header for protocol 0.3)"
            ),
            data={"method": method, "protocolVersion": version, "use": name},
        )
    return request_id, VersionNotSupportedError(
        message=(
            f"A2A version {version!r} is not supported; this agent speaks "
            f"{PROTOCOL_VERSION_1_0} (A2A-Version: {PROTOCOL_VERSION_1_0}) and "
            f"{PROTOCOL_VERSION_0_3} (no A2A-Version header)"
        ),
        data={"supported": f"{PROTOCOL_VERSION_1_0}, {PROTOCOL_VERSION_0_3}"},
    )


def _answered_invalid_request(response: Response) -> bool:
    return isinstance(response, JSONResponse) and b'"code":-32600' in bytes(response.body)


def _v03_params_refusal(
    request_id: Any, method: str, payload: dict[str, Any]
) -> tuple[str | int | None, A2AError] | None:
    """Invalid params for a 0.3 request whose envelope is right and whose params are not
    (item 15): the SDK's 0.3 adapter answers every validation error as -32600. Called only
    after it did, so a valid request is validated once, by the SDK."""
    if isinstance(request_id, bool) or not isinstance(request_id, str | int | None):
        return None
    try:
        JSONRPC03Adapter.METHOD_TO_MODEL[method].model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors()
        if not errors or not all(error["loc"][:1] == ("params",) for error in errors):
            return None  # the envelope itself: the SDK's -32600
        fields = [
            {"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
            for error in errors
        ]
        summary = "; ".join(f"{field['field']}: {field['message']}" for field in fields[:3])
        return request_id, InvalidParamsError(
            message=f"invalid params: {summary}", data={"errors": fields}
        )
    return None


def _int32_refusal(
    request_id: str | int | None, params: Any
) -> tuple[str | int | None, A2AError] | None:
    for path in V03_INT32_PARAMS:
        value = params
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value not in INT32:
            field = ".".join(path)
            return request_id, InvalidParamsError(
                message=f"params.{field} is out of range ({INT32.start} to {INT32.stop - 1})",
                data={"errors": [{"field": field, "message": "out of the int32 range"}]},
            )
    return None


def _jsonrpc_error(
    request_id: str | int | None, error: A2AError | JSONRPCParseError, *, v03: bool = False
) -> JSONResponse:
    logger.warning("a2a request refused", extra={"error": error.message})
    # JSON-RPC errors ride in an HTTP 200, as the SDK sends them; a 0.3 method's error in
    # the 0.3 form (data as given, not 1.0's list of typed details).
    if v03 and isinstance(error, A2AError):
        code = JSON_RPC_ERROR_CODE_MAP[type(error)]
        body = {"code": code, "message": error.message, "data": error.data}
        return JSONResponse({"jsonrpc": "2.0", "id": request_id, "error": body})
    return JSONResponse(build_error_response(request_id, error))


# --- 13. the 0.3 HTTP+JSON route that deletes a push config -------------------------------

V03_PUSH_CONFIG_PATH = "/v1/tasks/{id}/pushNotificationConfigs/{push_id}"


def create_rest_v03_push_delete_route(handler: RequestHandler, path_prefix: str) -> Route:
    """``DELETE {path_prefix}/v1/tasks/{id}/pushNotificationConfigs/{push_id}`` (protocol
    0.3), answered ``{}`` as the 0.3 binding answers an empty result."""
    adapter = REST03Adapter(http_handler=handler)
    rest03 = adapter.handler

    @validate_version(PROTOCOL_VERSION_0_3)
    async def delete_push_notification(
        request: Request, context: ServerCallContext
    ) -> dict[str, Any]:
        """Delete one push notification config of a task (A2A 0.3)."""
        params = types_v03.DeleteTaskPushNotificationConfigParams(
            id=request.path_params["id"],
            push_notification_config_id=request.path_params["push_id"],
        )
        await rest03.handler03.on_delete_task_push_notification_config(
            types_v03.DeleteTaskPushNotificationConfigRequest(id="", params=params), context
        )
        return {}

    return Route(
        path_prefix + V03_PUSH_CONFIG_PATH,
        endpoint=functools.partial(adapter._handle_request, delete_push_notification),
        methods=["DELETE"],
        name="delete_push_notification",
    )
