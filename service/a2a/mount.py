"""Mounting the A2A agent into the service's FastAPI app.

Routes (URLs in the card follow PUBLIC_URL):

- ``GET  /.well-known/agent-card.json``  the public agent card
- ``POST /a2a/jsonrpc`` and ``POST /``    JSON-RPC; protocol 1.0 when the request says
  ``A2A-Version: 1.0``, else 0.3 (method names ``message/send``, ``tasks/get``, ...)
- ``/a2a/rest/...``                      HTTP+JSON 1.0 (``/message:send``, ``/tasks/{id}``,
  ``/tasks``, ``/extendedAgentCard``) and 0.3 (``/v1/message:send``, ``/v1/card``, ...;
  see :mod:`service.a2a.sdk_compat`)
- the same HTTP+JSON routes at the origin (``/message:send``, ``/tasks/{id}``,
  ``/v1/message:send``, ``/v1/card``, ...), for clients that derive them from the agent's
  URL; the card names only ``/a2a/rest``, and the origin copies stay out of /openapi.json

One request handler serves them all, with the task store from TASK_STORE_URL (and, when
A2A_PUSH_ALLOWED_HOSTS is set, the push configs beside the tasks and the sender of push
notifications: :mod:`service.a2a.push`); the executor reaches the models and the guard only
through the pipeline the composition root hands in.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import add_a2a_routes_to_fastapi, create_jsonrpc_routes
from a2a.types import AgentCard, Task
from fastapi import FastAPI
from starlette.routing import BaseRoute, Route

from service.a2a.card import CARD_PATH, JSONRPC_PATH, REST_PATH, extended_card, public_card
from service.a2a.chat_skill import IDLE_RELEASE, follow_up_parser
from service.a2a.executor import GuardedAgentExecutor
from service.a2a.openapi import document_a2a
from service.a2a.push import PushNotifications, create_push
from service.a2a.sdk_compat import (
    GuardedRequestHandler,
    JobContextBuilder,
    card_routes,
    checked_jsonrpc_route,
    create_rest_v03_push_delete_route,
    create_rest_v03_routes,
    rest_routes,
)
from service.a2a.skills import RefusedJob, job_parser
from service.a2a.store import (
    BoundedInMemoryTaskStore,
    TaskStorage,
    create_task_storage,
    interrupt,
)
from service.config import Settings
from service.core.pipeline import GuardedPipeline

logger = logging.getLogger("service.a2a.mount")


def mount_a2a(app: FastAPI, pipeline: GuardedPipeline, settings: Settings) -> None:
    """Add the agent card, JSON-RPC and HTTP+JSON routes over ``pipeline`` to ``app``, and
    hook the task store and the handler into the app's lifespan."""
    card = public_card(settings, app.version)
    # No task runs longer than a pipeline call (or a chat turn) may take, plus a graceful
    # shutdown, plus clock skew between replicas: a running task unchanged for longer than
    # that runs nowhere.
    longest = max(settings.request_timeout, settings.chat_turn_timeout())
    stale_after = longest + settings.graceful_timeout + 1.0
    storage = create_task_storage(
        settings.task_store_url,
        settings.task_store_max_tasks,
        settings.task_store_max_bytes,
        retention=settings.task_store_retention,
        stale_after=stale_after,
        sweep_interval=settings.task_store_sweep_interval,
        idle_after=settings.chat_idle_timeout,
    )
    push = create_push(settings, storage)  # None: push notifications off

    async def interrupted(task: Task, context: ServerCallContext) -> Task:
        task = await interrupt(storage.store, task, context)
        if storage.on_end is not None:
            storage.on_end(task)
        return task

    handler = GuardedRequestHandler(
        stale_after=stale_after,
        interrupt=interrupted,
        agent_executor=GuardedAgentExecutor(pipeline),
        task_store=storage.store,
        agent_card=card,
        push_config_store=push.store if push else None,
        push_sender=push.sender if push else None,
        request_context_builder=JobContextBuilder(
            job_parser(pipeline, settings),
            task_store=storage.store,
            follow_up=follow_up_parser(pipeline, settings),
            admit=_admission(storage),
        ),
        # A conversation waiting for input lives in the store, not in this process.
        interrupted_task_timeout=IDLE_RELEASE,
        extended_agent_card=card if settings.api_tokens else None,
        extended_card_modifier=_serve(
            extended_card(card, settings, pipeline.models(), pipeline.default_model)
        )
        if settings.api_tokens
        else None,
    )
    [jsonrpc] = create_jsonrpc_routes(handler, rpc_url=JSONRPC_PATH, enable_v0_3_compat=True)
    if not isinstance(jsonrpc, Route):
        raise TypeError(f"a2a-sdk gave a {type(jsonrpc).__name__} for the JSON-RPC endpoint")
    # The same endpoint at "/", where A2A clients and plain curl examples post by default;
    # both check the body and the method's protocol version before the SDK parses it.
    root = checked_jsonrpc_route(jsonrpc, path="/")
    jsonrpc = checked_jsonrpc_route(jsonrpc)
    # Protocol 0.3 first, as the SDK orders them; ours refuse before a stream starts.
    rest: list[BaseRoute] = list(create_rest_v03_routes(handler, path_prefix=REST_PATH))
    rest.append(create_rest_v03_push_delete_route(handler, path_prefix=REST_PATH))
    rest += rest_routes(handler, path_prefix=REST_PATH)
    add_a2a_routes_to_fastapi(
        app,
        agent_card_routes=card_routes(card, card_url=CARD_PATH),
        jsonrpc_routes=[jsonrpc, root],
        rest_routes=rest,
    )
    # The HTTP+JSON routes at the origin too, as JSON-RPC is at "/" (not in /openapi.json:
    # the card and the document name the canonical /a2a/rest ones).
    app.router.routes.extend(origin_rest_routes(handler))
    document_a2a(app, push=push is not None)  # /openapi.json: the A2A operations as they answer
    _wrap_lifespan(app, storage, handler, push)
    if settings.port == 0 and not settings.public_url:
        logger.warning(
            "PUBLIC_URL is not set and PORT is 0: the agent card's URLs name port 0; "
            "set PUBLIC_URL (or a fixed PORT) for a card clients can follow"
        )


# The REST API's own paths below /v1; no A2A origin route may take one of them.
REST_API_PATHS = ("/v1/classify", "/v1/models", "/v1/moderate", "/v1/moderations",
                  "/v1/chat/completions")  # fmt: skip


def origin_rest_routes(handler: DefaultRequestHandler) -> list[BaseRoute]:
    """The 0.3 and 1.0 HTTP+JSON routes at the origin, out of the OpenAPI document."""
    routes: list[BaseRoute] = []
    for route in [
        *create_rest_v03_routes(handler, path_prefix=""),
        create_rest_v03_push_delete_route(handler, path_prefix=""),
        *rest_routes(handler, ""),
    ]:
        if not isinstance(route, Route):
            raise TypeError(f"a2a-sdk gave a {type(route).__name__} for an HTTP+JSON route")
        if route.path.startswith(REST_API_PATHS):
            raise RuntimeError(f"the A2A route {route.path} would shadow the REST API")
        methods = sorted(route.methods or ("GET",))
        routes.append(Route(route.path, route.endpoint, methods=methods, include_in_schema=False))
    return routes


def _serve(extended: AgentCard) -> Callable[[AgentCard, ServerCallContext], Any]:
    # The models are loaded before the app exists, so the extended card is built once.
    async def modify(_card: AgentCard, _context: ServerCallContext) -> AgentCard:
        return extended

    return modify


def _wrap_lifespan(
    app: FastAPI,
    storage: TaskStorage,
    handler: DefaultRequestHandler,
    push: PushNotifications | None,
) -> None:
    """Open the task store after the app's own startup; drain running tasks (and the push
    notifications they leave) and close the store before the app's own shutdown."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(the_app: FastAPI) -> AsyncIterator[Any]:
        async with inner(the_app) as state:
            try:
                await storage.start()
            except Exception as exc:
                logger.error(
                    "cannot open the task store",
                    extra={
                        "task_store": storage.description,
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                )
                raise
            logger.info(
                "a2a agent ready",
                extra={"task_store": storage.description, "push_notifications": push is not None},
            )
            try:
                yield state
            finally:
                await handler.aclose()
                if push is not None:
                    await push.aclose()
                await storage.close()

    app.router.lifespan_context = lifespan


def _admission(storage: TaskStorage) -> Callable[[ServerCallContext, Any], Any]:
    """A new task's job, or a refusal while the in-memory store has no room for it."""

    def admit(context: ServerCallContext, job: Any) -> Any:
        store = storage.store
        if isinstance(store, BoundedInMemoryTaskStore):
            error = store.refusal(context)
            if error is not None:
                logger.warning("task refused: the task store is full", extra={"why": error.message})
                return RefusedJob(job.skill, error)
        return job

    return admit
