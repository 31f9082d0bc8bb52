"""Each workaround in service/a2a/sdk_compat.py rests on an a2a-sdk behaviour the SDK does not
promise; each test here fails if the SDK changes under it (and the pin in pyproject.toml keeps
such a change to an explicit upgrade)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from importlib.metadata import version
from typing import Any

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCard,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskState,
    TaskStatus,
)
from starlette.routing import Mount

from service.a2a.card import REST_PATH, interfaces, public_card
from service.a2a.sdk_compat import (
    STREAM,
    SUBSCRIBE,
    TERMINAL_TASK_STATES,
    JobContextBuilder,
    card_of,
    create_rest_v03_routes,
    job_of,
    resolve_user_scope,
    rest_routes,
)
from service.config import Settings

CARD = public_card(Settings(_env_file=None), "1")


def test_the_installed_sdk_is_the_pinned_minor_release() -> None:
    assert version("a2a-sdk").startswith("1.3.")


class _RecordingExecutor(AgentExecutor):
    def __init__(self) -> None:
        self.jobs: list[Any] = []

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.jobs.append(job_of(context))
        assert context.task_id and context.message is not None
        await event_queue.enqueue_event(
            Task(
                id=context.task_id,
                context_id=context.context_id or "",
                status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                history=[context.message],
            )
        )
        await TaskUpdater(event_queue, context.task_id, context.context_id or "").complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def _message(text: str) -> Message:
    return Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])


async def test_the_handler_hands_our_built_context_to_the_executor() -> None:
    parsed: list[str] = []

    def parse(request: SendMessageRequest) -> tuple[str, str]:
        parsed.append(request.message.message_id)
        return ("job", request.message.parts[0].text)

    executor = _RecordingExecutor()
    handler = DefaultRequestHandler(
        agent_executor=executor,
        task_store=InMemoryTaskStore(),
        agent_card=CARD,
        request_context_builder=JobContextBuilder(parse),
    )
    message = _message("hello")
    result = await handler.on_message_send(SendMessageRequest(message=message), ServerCallContext())
    assert parsed == [message.message_id]  # validated before the task existed
    assert executor.jobs == [("job", "hello")]  # the executor saw the same context
    assert isinstance(result, Task) and result.status.state == TaskState.TASK_STATE_COMPLETED


async def test_a_refused_message_leaves_no_task_behind() -> None:
    store = InMemoryTaskStore()

    def parse(_request: SendMessageRequest) -> None:
        raise ValueError("refused")

    executor = _RecordingExecutor()
    handler = DefaultRequestHandler(
        agent_executor=executor,
        task_store=store,
        agent_card=CARD,
        request_context_builder=JobContextBuilder(parse),
    )
    try:
        await handler.on_message_send(
            SendMessageRequest(message=_message("x")), ServerCallContext()
        )
    except ValueError:
        pass
    else:
        raise AssertionError("the parser's refusal did not reach the caller")
    assert executor.jobs == []


def _handler() -> DefaultRequestHandler:
    return DefaultRequestHandler(
        agent_executor=_RecordingExecutor(),
        task_store=InMemoryTaskStore(),
        agent_card=CARD,
    )


def test_the_sdk_still_mounts_a_tenant_copy_and_we_drop_only_that() -> None:
    handler = _handler()
    theirs = create_rest_routes(handler, path_prefix=REST_PATH)
    mounts = [route for route in theirs if isinstance(route, Mount)]
    # At the root: it would take every two-segment path of the app.
    assert [mount.path for mount in mounts] == ["/{tenant}"]
    ours = rest_routes(handler, path_prefix=REST_PATH)
    assert not [route for route in ours if isinstance(route, Mount)]
    assert len(ours) == len(theirs) - 1


def test_the_0_3_adapter_still_has_the_routes_we_replace() -> None:
    routes = create_rest_v03_routes(_handler(), path_prefix=REST_PATH)
    served = {(route.path, method) for route in routes for method in route.methods or ()}
    for path, method in (STREAM, *SUBSCRIBE):
        assert (REST_PATH + path, method) in served
    assert (REST_PATH + "/v1/message:send", "POST") in served


def test_the_rest_adapter_cannot_be_imported_before_the_routes() -> None:
    # sdk_compat imports a2a.server.routes first for this reason; when the SDK fixes the
    # cycle this test fails and the ordering comment can go.
    done = subprocess.run(
        [sys.executable, "-c", "import a2a.compat.v0_3.rest_adapter"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "circular import" in done.stderr


def test_terminal_states_and_owner_scope_are_what_the_store_expects() -> None:
    assert set(TERMINAL_TASK_STATES) == {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
    }
    assert isinstance(resolve_user_scope(ServerCallContext()), str)


async def test_the_client_keeps_the_card_it_was_built_from() -> None:
    card = AgentCard(name="remote", version="9", supported_interfaces=interfaces("http://x"))
    async with httpx.AsyncClient() as http:
        client = ClientFactory(ClientConfig(httpx_client=http)).create(card)
        assert card_of(client) == card
