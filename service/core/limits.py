"""Request limits, reported as neutral violations.

A :class:`Violation` names the item it is about as a path into the core operation's input
(``("texts", 3)``, ``("messages", 2, "content")``, ``("texts",)`` for the batch as a whole),
why it breaks a limit, a machine-readable ``code`` and the limit itself. Front ends translate
the path into their own field names (REST: ``["body", "texts", 3]``; A2A: ``texts[3]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from service.core.errors import ServiceError
from service.guard.budget import REPLY_RESERVE_BYTES, conversation_bytes_limit, guard_bytes
from service.guard.scanner import Message

ItemPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Violation:
    item: ItemPath
    reason: str  # for people: "20001 characters; at most 20000"
    # For programs; pydantic's error types, so REST reports limits like schema errors.
    code: str
    limit: int | None = None


class LimitExceeded(ServiceError):
    """The input breaks one or more request limits."""

    problem = "validation-error"

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(violation.reason for violation in self.violations))

    def relocated(self, locate: Callable[[ItemPath], ItemPath]) -> LimitExceeded:
        """The same violations with each item path rewritten (a front end's field names)."""
        return LimitExceeded([replace(v, item=locate(v.item)) for v in self.violations])


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the core.

    With ``guard_num_ctx`` set, every screen the request leads to must also fit the guard's
    context (:mod:`service.guard.budget`): a text with its rendered reply, a conversation as
    a whole. Its size is counted in UTF-8 bytes as the guard reads it (markers neutralised).
    """

    max_batch: int  # texts per classification, messages per conversation, conversations
    max_text_chars: int  # characters per text or message
    guard_num_ctx: int | None = None  # the guard's context in tokens; None: not checked
    guard_num_predict: int = 16

    @property
    def max_text_bytes(self) -> int | None:
        """The most UTF-8 bytes one classified text may have (its output screen is the text
        and a short rendered reply)."""
        if self.guard_num_ctx is None:
            return None
        room = conversation_bytes_limit(self.guard_num_ctx, self.guard_num_predict, turns=2)
        return room - REPLY_RESERVE_BYTES

    def max_conversation_bytes(self, messages: int) -> int | None:
        """The most UTF-8 bytes ``messages`` messages may hold together, with a turn to spare
        for a reply."""
        if self.guard_num_ctx is None:
            return None
        return conversation_bytes_limit(self.guard_num_ctx, self.guard_num_predict, messages + 1)

    def reply_bytes(self, contents: Sequence[str]) -> int | None:
        """The most UTF-8 bytes a reply to a conversation of ``contents`` may have for the
        screen of both to fit the guard's context (None: not checked)."""
        limit = self.max_conversation_bytes(len(contents))
        if limit is None:
            return None
        return limit - sum(len(text.encode("utf-8")) for text in contents)

    def check_texts(self, texts: Sequence[object], at: ItemPath = ("texts",)) -> None:
        """Raise LimitExceeded unless ``texts`` holds 1..max_batch non-blank texts of at
        most max_text_chars characters each. ``at`` is where the texts are in the input."""
        violations = self._count(len(texts), at, "texts")
        if not violations:
            violations = [
                violation
                for index, text in enumerate(texts)
                if (violation := self._text(text, (*at, index))) is not None
            ]
        if violations:
            raise LimitExceeded(violations)

    def check_conversation(
        self, messages: Sequence[Message], at: ItemPath = ("messages",), reply_bytes: int = 0
    ) -> None:
        """Raise LimitExceeded unless the conversation has 1..max_batch messages whose
        contents are within the text limits, with ``reply_bytes`` to spare for a reply."""
        violations = self._count(len(messages), at, "messages")
        if not violations:
            violations = [
                violation
                for index, message in enumerate(messages)
                if (violation := self._text(message.content, (*at, index, "content"), False))
                is not None
            ]
        limit = self.max_conversation_bytes(len(messages))
        if not violations and limit is not None:
            limit -= reply_bytes
            size = guard_bytes([message.content for message in messages], limit)
            if size > limit:
                spare = f" with {reply_bytes} to spare for the reply" if reply_bytes else ""
                reason = (
                    f"the messages hold {size} bytes of UTF-8 text; the guard reads at most "
                    f"{limit} at once{spare} (GUARD_NUM_CTX)"
                )
                violations = [Violation(at, reason, "too_long", limit)]
        if violations:
            raise LimitExceeded(violations)

    def check_count(self, count: int, at: ItemPath, noun: str) -> None:
        """Raise LimitExceeded unless there are 1..max_batch items."""
        violations = self._count(count, at, noun)
        if violations:
            raise LimitExceeded(violations)

    def _count(self, count: int, at: ItemPath, noun: str) -> list[Violation]:
        if count == 0:
            singular = noun.removesuffix("s")
            return [Violation(at, f"at least one {singular} is required", "too_short")]
        if count > self.max_batch:
            # One violation for the batch, not one per text of a huge batch.
            per = " per request" if noun == "texts" else ""
            reason = f"{count} {noun}; at most {self.max_batch}{per}"
            return [Violation(at, reason, "too_long", self.max_batch)]
        return []

    def _text(self, text: object, item: ItemPath, alone: bool = True) -> Violation | None:
        """A violation of the text limits, or None; ``alone``: the text is screened on its
        own (with its reply), so it must fit the guard's context by itself."""
        limit = self.max_text_chars
        if not isinstance(text, str) or not text.strip():
            return Violation(item, "text must be a non-blank string", "string_too_short")
        if len(text) > limit:
            return Violation(
                item, f"{len(text)} characters; at most {limit}", "string_too_long", limit
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates ("\ud800") pass JSON but are not text
            return Violation(item, "text is not valid Unicode (lone surrogate)", "string_unicode")
        max_bytes = self.max_text_bytes if alone else None
        if max_bytes is not None and (size := guard_bytes([text], max_bytes)) > max_bytes:
            reason = (
                f"{size} bytes of UTF-8 text; the guard reads at most {max_bytes} (GUARD_NUM_CTX)"
            )
            return Violation(item, reason, "string_too_long", max_bytes)
        return None
