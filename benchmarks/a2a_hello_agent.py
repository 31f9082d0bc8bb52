"""a2a-sdk's hello-world agent, the A2A floor of ``benchmarks/ratios_bench.py``.

    python -m benchmarks.a2a_hello_agent [--task]

Built the way a2a-sdk 1.x's hello-world sample builds it (a2a-samples,
``samples/python/agents/helloworld``): an ``AgentExecutor``, ``DefaultRequestHandler`` over an
``InMemoryTaskStore``, the agent card route and the JSON-RPC route from
``a2a.server.routes``, in a Starlette app. It answers every ``SendMessage`` with a fixed text
and does nothing else: no guard, no model. Served under the service's Hypercorn
configuration (``http_bench.serve_asgi``) on a free 127.0.0.1 port, JSON-RPC at
``/a2a/jsonrpc`` (the service's path); it logs "Running on http://127.0.0.1:PORT".

- default: the executor enqueues one agent ``Message`` (the classic hello world: no task);
- ``--task``: the lifecycle of the 1.x sample's executor (a task, a ``working`` status, one
  text artifact, ``completed``), which the SDK keeps in the task store as the service keeps
  its classification tasks.
"""

from __future__ import annotations

import argparse

from a2a.helpers import new_task_from_user_message, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, TaskState
from a2a.utils.errors import TaskNotCancelableError
from starlette.applications import Starlette

from benchmarks.http_bench import serve_asgi

JSONRPC_PATH = "/a2a/jsonrpc"
ANSWER = "Hello, World!"


class HelloWorldExecutor(AgentExecutor):
    """Answers every message with ``ANSWER``: one message, or (``task``) a task with it."""

    def __init__(self, task: bool = False) -> None:
        self.task = task

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        if not self.task:
            await event_queue.enqueue_event(new_text_message(ANSWER))
            return
        task = context.current_task
        if task is None:
            assert context.message is not None
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue=event_queue, task_id=task.id, context_id=task.context_id)
        await updater.update_status(
            state=TaskState.TASK_STATE_WORKING, message=new_text_message("Processing request...")
        )
        await updater.add_artifact(parts=[new_text_part(text=ANSWER, media_type="text/plain")])
        await updater.update_status(
            state=TaskState.TASK_STATE_COMPLETED, message=new_text_message("Request is completed!")
        )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        # Every answer is final at once: there is never a task left to cancel.
        raise TaskNotCancelableError(message="the hello-world agent's tasks end at once")


def build_app(task: bool = False) -> Starlette:
    skill = AgentSkill(
        id="hello_world",
        name="Returns hello world",
        description="Answers every message with a fixed text.",
        input_modes=["text/plain"],
        output_modes=["text/plain"],
        tags=["hello world"],
        examples=["hi"],
    )
    card = AgentCard(
        name="Hello World Agent",
        description="Just a hello world agent",
        version="0.0.1",
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        capabilities=AgentCapabilities(streaming=True),
        # The port is not known before Hypercorn binds; nothing here reads the card's URL.
        supported_interfaces=[
            AgentInterface(protocol_binding="JSONRPC", url="http://127.0.0.1" + JSONRPC_PATH)
        ],
        skills=[skill],
    )
    handler = DefaultRequestHandler(
        agent_executor=HelloWorldExecutor(task=task),
        task_store=InMemoryTaskStore(),
        agent_card=card,
    )
    routes = [*create_agent_card_routes(card), *create_jsonrpc_routes(handler, JSONRPC_PATH)]
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", action="store_true", help="answer with a completed task")
    args = parser.parse_args(argv)
    serve_asgi(build_app(task=args.task))


if __name__ == "__main__":
    main()
