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

A chat turn (:class:`~service.a2a.chat_skill.ChatTurn`) runs its own lifecycle on the same
task: it streams the reply and waits in input-required for the next turn. Every task's
metadata names its skill (``{"skill": ...}``); a follow-up continues the task the SDK loaded
(``context.current_task``), which gets no new Task event.
"""

from __future__ import annotations

import logging

from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types import Task, TaskState, TaskStatus
from a2a.utils.errors import InvalidParamsError

from service.a2a.chat_skill import ChatTurn
from service.a2a.parts import data_part, failure_parts, now, text_part
from service.a2a.sdk_compat import job_of
from service.a2a.skills import RefusedJob
from service.core.errors import InternalError, ServiceError
from service.core.pipeline import GuardedPipeline

logger = logging.getLogger("service.a2a.executor")


class GuardedAgentExecutor(AgentExecutor):
    """Runs each job through the GuardedPipeline (never the models directly)."""

    def __init__(self, pipeline: GuardedPipeline) -> None:
        self._pipeline = pipeline
        # Tasks a cancel request has claimed: their execution must not publish anything more.
        self._canceled: set[str] = set()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        job = job_of(context)
        if job is None or context.message is None or not context.task_id:
            raise InvalidParamsError(message="the request carries no message to work on")
        task_id, context_id = context.task_id, context.context_id or ""
        if context.current_task is None:
            await event_queue.enqueue_event(
                Task(
                    id=task_id,
                    context_id=context_id,
                    status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED, timestamp=now()),
                    history=[context.message],
                    metadata={"skill": job.skill},
                )
            )
        updater = TaskUpdater(event_queue, task_id, context_id)
        if isinstance(job, RefusedJob):
            await updater.failed(updater.new_agent_message(failure_parts(job.error)))
            return
        if isinstance(job, ChatTurn):
            canceled = self._canceled
            await job.play(
                self._pipeline, updater, context.current_task, lambda: task_id in canceled
            )
            return
        await updater.start_work(updater.new_agent_message([text_part(job.working_text())]))
        try:
            outcome = await job.run(self._pipeline)
        except Exception as exc:
            error = exc if isinstance(exc, ServiceError) else InternalError()
            if error is not exc:
                logger.exception("skill failed", extra={"task_id": task_id, "skill": job.skill})
            if task_id in self._canceled:
                return
            message = updater.new_agent_message(failure_parts(error))
            if error.spec.a2a == "rejected":
                await updater.reject(message)
            else:
                await updater.failed(message)
            return
        if task_id in self._canceled:
            return
        await updater.add_artifact(
            [data_part(outcome.to_dict()), text_part(outcome.summary())],
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
