"""Running a skill: the A2A task lifecycle around one GuardedPipeline call.

A message is parsed and validated into a :class:`~service.a2a.skills.Job` while the request
context is built (so a malformed request gets the protocol's error and leaves no task
behind); the executor then moves the task submitted -> working -> one of

- completed: an artifact with the result as a data part (for classification the same
  objects REST /v1/classify answers) and a one-line text summary;
- rejected: the guard judged the input (or the model's reply) unsafe; the status message
  names the hazard categories;
- failed: the guard could not answer (fail closed), or the request timed out;
- canceled: the caller canceled it while it ran.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.agent_execution.simple_request_context_builder import (
    SimpleRequestContextBuilder,
)
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types import Part, SendMessageRequest, Task, TaskState, TaskStatus
from a2a.utils.errors import InvalidParamsError
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Value

from service.a2a.skills import Job, parse_job, summary_of
from service.rest.routes import classify_answer
from service.config import Settings
from service.guard.types import GuardError, Message, Verdict
from service.core.pipeline import (
    ContentBlocked,
    GuardedPipeline,
    RequestTimeout,
    render_prediction,
)

logger = logging.getLogger("service.a2a.executor")

PipelineSource = Callable[[], GuardedPipeline]


class SkillRequestContext(RequestContext):
    """A request context that carries the validated job of its message."""

    job: Job | None = None


class SkillContextBuilder(SimpleRequestContextBuilder):
    """Validates the message into a Job before the handler creates a task for it."""

    def __init__(self, pipeline: PipelineSource, settings: Settings) -> None:
        super().__init__()
        self._pipeline = pipeline
        self._settings = settings

    async def build(
        self,
        context: ServerCallContext,
        params: SendMessageRequest | None = None,
        task_id: str | None = None,
        context_id: str | None = None,
        task: Task | None = None,
    ) -> RequestContext:
        job = None
        if params is not None:
            metadata = MessageToDict(params.metadata) if params.HasField("metadata") else {}
            job = parse_job(params.message, metadata, self._pipeline(), self._settings)
        request_context = SkillRequestContext(
            call_context=context,
            request=params,
            task_id=task_id,
            context_id=context_id,
            task=task,
        )
        request_context.job = job
        return request_context


def data_part(value: Any) -> Part:
    return Part(data=ParseDict(value, Value()), media_type="application/json")


def text_part(text: str) -> Part:
    return Part(text=text, media_type="text/plain")


class GuardedAgentExecutor(AgentExecutor):
    """Runs each job through the GuardedPipeline (never the models directly)."""

    def __init__(self, pipeline: PipelineSource) -> None:
        self._pipeline = pipeline
        # Tasks a cancel request has claimed: their execution must not publish anything more.
        self._canceled: set[str] = set()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        job = getattr(context, "job", None)
        if job is None or context.message is None or not context.task_id:
            raise InvalidParamsError(message="the request carries no message to work on")
        task_id, context_id = context.task_id, context.context_id or ""
        if context.current_task is None:
            await event_queue.enqueue_event(
                Task(
                    id=task_id,
                    context_id=context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
                    history=[context.message],
                )
            )
        updater = TaskUpdater(event_queue, task_id, context_id)
        await updater.start_work(updater.new_agent_message([text_part(_working_text(job))]))

        pipeline = self._pipeline()
        try:
            if job.operation == "classify":
                outcome = await pipeline.classify(job.texts, job.model)
                result = classify_answer(outcome)
                summary = f"{outcome.model.name}: " + summary_of(
                    [render_prediction(r.prediction) for r in outcome.results]
                )
            else:
                result, summary = await _moderate(pipeline, job)
        except ContentBlocked as blocked:
            if task_id not in self._canceled:
                await updater.reject(updater.new_agent_message(_rejection(blocked)))
            return
        except GuardError as exc:
            logger.warning("guard unavailable", extra={"kind": exc.kind, "task_id": task_id})
            if task_id not in self._canceled:
                await updater.failed(updater.new_agent_message(_guard_failure(exc)))
            return
        except RequestTimeout as exc:
            if task_id not in self._canceled:
                await updater.failed(
                    updater.new_agent_message(
                        [text_part(str(exc)), data_part({"reason": "request-timeout"})]
                    )
                )
            return
        except Exception:
            logger.exception("skill failed", extra={"task_id": task_id, "skill": job.skill})
            if task_id not in self._canceled:
                await updater.failed(
                    updater.new_agent_message(
                        [
                            text_part("internal error; the server log has the details"),
                            data_part({"reason": "internal-error"}),
                        ]
                    )
                )
            return
        if task_id in self._canceled:
            return
        await updater.add_artifact(
            [data_part(result), text_part(summary)],
            name=f"{job.skill}-result",
            metadata={"skill": job.skill},
            last_chunk=True,
        )
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = context.task_id or ""
        self._canceled.add(task_id)
        try:
            updater = TaskUpdater(event_queue, task_id, context.context_id or "")
            await updater.cancel(
                updater.new_agent_message([text_part("canceled at the caller's request")])
            )
        finally:
            # The framework cancels the running execution right after this returns.
            self._canceled.discard(task_id)


def _working_text(job: Job) -> str:
    count = f"{len(job.texts)} text{'s' if len(job.texts) != 1 else ''}"
    if job.operation == "classify":
        return f"screening {count} with the guard and classifying with {job.model}"
    if job.conversation:
        return f"judging a conversation of {len(job.conversation)} messages with the guard"
    return f"judging {count} with the guard"


async def _moderate(pipeline: GuardedPipeline, job: Job) -> tuple[dict[str, Any], str]:
    started = time.perf_counter()
    if job.conversation:
        verdicts = [await pipeline.moderate(job.conversation)]
    else:
        verdicts = await _all(
            [pipeline.moderate([Message(role="user", content=text)]) for text in job.texts]
        )
    result = {
        "results": [{"index": i, **verdict.to_dict()} for i, verdict in enumerate(verdicts)],
        "timing": {"total_ms": round((time.perf_counter() - started) * 1000.0, 3)},
    }
    return result, summary_of([_render_verdict(verdict) for verdict in verdicts])


async def _all(awaitables: list[Any]) -> list[Verdict]:
    """Run concurrently; on the first error cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def _render_verdict(verdict: Verdict) -> str:
    if verdict.safe:
        return "safe"
    codes = ", ".join(f"{c.code} {c.name}" for c in verdict.categories)
    return f"unsafe{' (blocked)' if verdict.blocked else ''}: {codes}"


def _rejection(blocked: ContentBlocked) -> list[Part]:
    names = ", ".join(f"{c.code} {c.name}" for c in blocked.categories)
    what = "the input" if blocked.stage == "input" else "the model's reply"
    return [
        text_part(f"rejected: the guard judged {what} unsafe: {names}"),
        data_part(
            {
                "reason": "content-blocked",
                "stage": blocked.stage,
                "categories": [c.to_dict() for c in blocked.categories],
                "indices": list(blocked.indices),
            }
        ),
    ]


def _guard_failure(exc: GuardError) -> list[Part]:
    return [
        text_part(
            f"the guard could not judge the request ({exc.kind}); refusing rather than "
            f"answering unscreened; retry after {exc.retry_after} s"
        ),
        data_part(
            {"reason": "guard-unavailable", "kind": exc.kind, "retry_after": exc.retry_after}
        ),
    ]
