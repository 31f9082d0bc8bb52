"""The chat skill: one A2A task is one conversation with the guarded chat model.

A message that selects the skill ``chat`` (a data part's ``"skill"``, else the message or
request metadata, as for every skill) starts a conversation; its text (the text parts, and
a data part's ``"text"``, joined by newlines) is the first turn. Each turn runs

    working -> the reply as artifact ``chat-reply-<turn>``, one update per chunk the guard
    passed, then a last chunk (no parts) whose metadata has ``finish_reason`` and ``usage``
    -> input-required, the whole reply as the status message

and a follow-up naming the task (``taskId``) continues it. The conversation is the task's
history as the task store holds it, so any replica sharing the store continues it: the
users' messages and the agent's replies (agent messages whose metadata says ``"skill":
"chat"``; the SDK moves the waiting status message into the history when the next message
arrives), plus the new message. Nothing else goes into the conversation: a turn's
``working`` status carries no message.

Endings: ``CancelTask`` cancels a waiting (or replying) conversation; blocked input, or a
reply the guard stops (``content_filter``: what was already released stays released, it
passed), ends it ``rejected`` naming the categories; a guard or chat model failure, or a turn
over ``REQUEST_TIMEOUT + CHAT_TIMEOUT``, ends it ``failed`` with the reason (the one error
table, :mod:`service.core.errors`).

Refused before anything runs, with the protocol's error: a follow-up to a task that is not a
conversation waiting for input (unsupported operation), and a turn that breaks a limit
(``CHAT_MAX_MESSAGES`` messages, ``MAX_TEXT_CHARS`` characters each: invalid params).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from a2a.helpers import get_text_parts
from a2a.server.tasks import TaskUpdater
from a2a.types import Message as A2AMessage
from a2a.types import Role, SendMessageRequest, Task, TaskState
from a2a.utils.errors import InvalidParamsError, UnsupportedOperationError
from google.protobuf.json_format import MessageToDict

from service.a2a.parts import failure_parts, text_part
from service.a2a.sdk_compat import TERMINAL_TASK_STATES
from service.a2a.skills import CHAT, parse_job
from service.chat.types import ChatDelta, ChatEnd, ChatEvent, ChatMessage
from service.config import Settings
from service.core.errors import (
    ContentBlocked,
    InternalError,
    RequestTimeout,
    ServiceError,
    shown,
)
from service.core.limits import LimitExceeded
from service.core.pipeline import GuardedPipeline

logger = logging.getLogger("service.a2a.chat")

ARTIFACT = "chat-reply"
# Data keys of the other skills, which a turn does not take.
NOT_FOR_CHAT = ("texts", "model", "messages")
# Seconds a conversation waiting for input keeps its a2a-sdk ActiveTask in this process: at
# once it lives only in the task store, so every replica (this one too) continues it from
# the same stored state, and a waiting conversation holds no memory here.
IDLE_RELEASE = 0.05


@dataclass(frozen=True)
class ChatTurn:
    """One turn of a conversation, validated: the user's new message and the conversation
    before it (as the store held it when the message arrived)."""

    skill: str
    text: str
    history: tuple[ChatMessage, ...]
    timeout: float  # seconds for the whole turn: input screen, generation, output screens

    async def play(
        self,
        pipeline: GuardedPipeline,
        updater: TaskUpdater,
        task: Task | None,
        canceled: Callable[[], bool],
    ) -> None:
        """Run the turn on ``updater``'s task: ``task`` is the stored task a follow-up
        continues (None for a new conversation); ``canceled`` says when a cancel request has
        claimed the task, after which nothing more may be published."""
        # The task as the SDK loaded it for this request: the freshest history there is.
        history = conversation_of(task) if task is not None else self.history
        conversation = (*history, ChatMessage("user", self.text))
        turn = Turn(updater, _users(conversation), canceled)
        await updater.start_work()  # no message: progress is not part of the conversation
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                end = await turn.stream(pipeline, conversation)
        except TimeoutError:
            if not deadline.expired():
                raise
            await turn.fail(RequestTimeout(self.timeout))
            return
        except Exception as exc:
            error = exc if isinstance(exc, ServiceError) else InternalError()
            if error is not exc:
                logger.exception("chat turn failed", extra={"task_id": updater.task_id})
            await turn.fail(error)
            return
        await turn.finish(end)


class Turn:
    """Publishing one turn's events (never after a cancel request claimed the task)."""

    def __init__(self, updater: TaskUpdater, number: int, canceled: Callable[[], bool]) -> None:
        self.updater = updater
        self.number = number
        self.canceled = canceled
        self.artifact_id = f"{ARTIFACT}-{number}"
        self.released: list[str] = []

    async def stream(
        self, pipeline: GuardedPipeline, conversation: tuple[ChatMessage, ...]
    ) -> ChatEnd | None:
        """Screen, generate, and publish each released chunk; the reply's end (None after a
        cancel request)."""
        _, reply = await pipeline.chat(conversation)
        events: AsyncIterator[ChatEvent] = aiter(reply)
        try:
            async for event in events:
                if self.canceled():
                    return None
                if isinstance(event, ChatEnd):
                    return event
                await self._chunk(event)
        finally:
            aclose = getattr(events, "aclose", None)  # cancels generation and screens
            if aclose is not None:
                await aclose()
        raise RuntimeError("the reply ended without a ChatEnd")

    async def _chunk(self, delta: ChatDelta) -> None:
        first = not self.released
        await self.updater.add_artifact(
            [text_part(delta.text)],
            artifact_id=self.artifact_id,
            name=ARTIFACT if first else None,
            metadata={"skill": CHAT, "turn": self.number} if first else None,
            append=not first,
            last_chunk=False,
        )
        self.released.append(delta.text)

    async def _close(self, metadata: dict[str, Any]) -> None:
        """The artifact's last chunk: no parts (every released chunk was sent), the reply's
        end in the metadata. A turn that released nothing gets no artifact, unless it ended
        normally (an empty reply)."""
        if not self.released and metadata["finish_reason"] in ("content_filter", "error"):
            return
        await self.updater.add_artifact(
            [] if self.released else [text_part("")],
            artifact_id=self.artifact_id,
            name=None if self.released else ARTIFACT,
            metadata={"skill": CHAT, "turn": self.number, **metadata},
            append=bool(self.released),
            last_chunk=True,
        )

    async def finish(self, end: ChatEnd | None) -> None:
        if end is None or self.canceled():
            return
        metadata: dict[str, Any] = {
            "finish_reason": end.finish_reason,
            "usage": end.usage.to_dict(),
            "guard_calls": end.guard_calls,
        }
        if end.finish_reason == "content_filter":
            # The guard stopped the reply: what was released passed and stays; the rest is
            # gone, and the conversation ends rejected, as a blocked message does.
            metadata["categories"] = [category.to_dict() for category in end.categories]
            await self._close(metadata)
            if end.screens:
                await self.fail(ContentBlocked("output", {0: end.screens[0]}), closed=True)
            else:  # a content_filter end always carries its screen; fail closed regardless
                await self.fail(InternalError(), closed=True)
            return
        await self._close(metadata)
        text = "".join(self.released)
        await self.updater.requires_input(
            self.updater.new_agent_message(
                [text_part(text)],
                metadata={"skill": CHAT, "turn": self.number, "finish_reason": end.finish_reason},
            )
        )

    async def fail(self, error: ServiceError, *, closed: bool = False) -> None:
        """End the conversation as the error table says (rejected or failed)."""
        if self.canceled():
            return
        if not closed:
            await self._close({"finish_reason": "error", "reason": error.problem})
        message = self.updater.new_agent_message(failure_parts(error))
        if error.spec.a2a == "rejected":
            await self.updater.reject(message)
        else:
            await self.updater.failed(message)


# --- the conversation a task holds ---------------------------------------------------------


def conversation_of(task: Task) -> tuple[ChatMessage, ...]:
    """The conversation so far: the users' messages and the agent's replies, in order (the
    reply a waiting task shows as its status message last)."""
    messages = list(task.history)
    if task.status.HasField("message"):
        messages.append(task.status.message)
    conversation = []
    for message in messages:
        if message.role == Role.ROLE_USER:
            conversation.append(ChatMessage("user", turn_text(message)))
        elif message.role == Role.ROLE_AGENT and _metadata(message).get("skill") == CHAT:
            conversation.append(ChatMessage("assistant", "".join(get_text_parts(message.parts))))
    return tuple(conversation)


def turn_text(message: A2AMessage) -> str:
    """A user's turn: the message's text parts, then a data part's "text", joined by
    newlines (how :func:`chat_turn` read it when it arrived)."""
    texts = list(get_text_parts(message.parts))
    for part in message.parts:
        if part.HasField("data"):
            value = MessageToDict(part.data)
            if isinstance(value, dict) and isinstance(value.get("text"), str):
                texts.append(value["text"])
    return "\n".join(texts)


def skill_of(task: Task) -> str | None:
    """The skill a task runs (the executor names it in the task's metadata)."""
    skill = MessageToDict(task.metadata).get("skill") if task.HasField("metadata") else None
    return skill if isinstance(skill, str) else None


def _metadata(message: A2AMessage) -> dict[str, Any]:
    return MessageToDict(message.metadata) if message.HasField("metadata") else {}


def _users(conversation: Sequence[ChatMessage]) -> int:
    return sum(1 for message in conversation if message.role == "user")


# --- validating a turn, before any task exists -------------------------------------------------


def follow_up_parser(
    pipeline: GuardedPipeline, settings: Settings
) -> Callable[[SendMessageRequest, Task], ChatTurn]:
    """The parser of messages naming a task (JobContextBuilder's ``follow_up``)."""

    def parse(request: SendMessageRequest, task: Task) -> ChatTurn:
        check_continuable(task)
        metadata = MessageToDict(request.metadata) if request.HasField("metadata") else {}
        turn = parse_job(request.message, metadata, pipeline, settings, continuing=task)
        if not isinstance(turn, ChatTurn):  # parse_job gives a continuing task to chat_turn
            raise TypeError(f"a follow-up parsed into a {type(turn).__name__}")
        return turn

    return parse


def check_continuable(task: Task) -> None:
    """Raise the protocol's error unless ``task`` is a conversation waiting for input."""
    state = task.status.state
    name = TaskState.Name(state).removeprefix("TASK_STATE_").lower().replace("_", "-")
    if state in TERMINAL_TASK_STATES:
        raise UnsupportedOperationError(
            message=f"task {task.id} is {name}: it takes no more messages; send the message "
            "without taskId to start a new task"
        )
    skill = skill_of(task)
    if skill != CHAT:
        raise UnsupportedOperationError(
            message=f"task {task.id} runs the {skill or 'one-shot'} skill, which answers in one "
            "turn and takes no follow-up messages"
        )
    if state != TaskState.TASK_STATE_INPUT_REQUIRED:
        raise UnsupportedOperationError(
            message=f"task {task.id} is {name}: the reply to its last message is not finished; "
            "send the next message once the task is input-required"
        )


def chat_turn(
    texts: Sequence[str],
    data: Mapping[str, Any],
    message: A2AMessage,
    request_metadata: Mapping[str, Any],
    continuing: Task | None,
    pipeline: GuardedPipeline,
    settings: Settings,
) -> ChatTurn:
    """A message for the chat skill (``texts`` and ``data`` as :func:`parse_job` read its
    parts), a new conversation or the next turn of ``continuing``, validated."""
    if continuing is not None:
        named = _named_skill(data, message, request_metadata)
        if named is not None and named != CHAT:
            raise InvalidParamsError(
                message=f"task {continuing.id} is a conversation (skill 'chat'); a follow-up "
                f"continues it and cannot name the skill {shown(named)!r}",
                data={"skill": shown(named), "task_skill": CHAT},
            )
    for key in NOT_FOR_CHAT:
        if key in data:
            raise InvalidParamsError(
                message=f"{key!r} is not for the chat skill: a turn is one message (its text "
                "parts, or a data part's 'text')"
            )
    if pipeline.chat_model is None:
        raise InvalidParamsError(
            message="the chat skill is off on this agent (CHAT_MODEL is empty)",
            data={"skill": CHAT},
        )
    text = "\n".join(texts)
    history = conversation_of(continuing) if continuing is not None else ()
    try:
        pipeline.check_chat((*history, ChatMessage("user", text)), None)
    except LimitExceeded as exc:
        raise _limit_error(exc, len(history)) from None
    return ChatTurn(CHAT, text, history, timeout=settings.chat_turn_timeout())


def _named_skill(
    data: Mapping[str, Any], message: A2AMessage, request_metadata: Mapping[str, Any]
) -> Any:
    """The skill the message names, if any (parse_job checked that it is a known one)."""
    named = (data.get("skill"), _metadata(message).get("skill"), request_metadata.get("skill"))
    return next((value for value in named if value is not None), None)


def _limit_error(exc: LimitExceeded, history: int) -> InvalidParamsError:
    """A limit the turn breaks, with the fields a caller knows: ``message`` (this turn's
    text) and ``messages`` (the conversation)."""
    errors = []
    reasons = []
    for violation in exc.violations:
        item = violation.item
        if len(item) == 3 and item[1] == history:
            field, reason = "message", violation.reason
        elif len(item) == 3:
            field, reason = f"history[{item[1]}]", violation.reason
        else:
            field = "messages"
            reason = (
                f"this turn would make the conversation {history + 1} messages long; at most "
                f"{violation.limit} (CHAT_MAX_MESSAGES): start a new conversation"
            )
        errors.append({"field": field, "message": reason})
        reasons.append(reason)
    return InvalidParamsError(message="; ".join(reasons), data={"errors": errors})
