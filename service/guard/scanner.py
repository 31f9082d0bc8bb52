"""The screening interface: a :class:`Scanner` judges a conversation into a :class:`ScanResult`.

In the spirit of LlamaFirewall's ``Scanner.scan(message) -> ScanResult``: a result has one
``decision`` (allow, flag, block), the hazard ``categories``, a ``reason`` a person can read,
and a ``status`` (ok, skipped, error). It fails closed by construction: a scan that could not
get a verdict has status ``error`` *and* decision ``block``, and carries the
:class:`GuardError` that says why, so code that lets through only ``allow`` / ``flag`` can
never pass an unscreened text. Llama Guard 3 on Ollama
(:class:`service.guard.llama_guard.LlamaGuard`) is one implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol

from service.core.errors import ServiceError

Role = Literal["user", "assistant"]
ErrorKind = Literal[
    "timeout",
    "connection",
    "http",
    "model_missing",
    "malformed",
    "unparseable",
    "overloaded",
    "too_long",
]


@dataclass(frozen=True)
class Message:
    """One turn of the conversation the guard judges."""

    role: Role
    content: str


@dataclass(frozen=True)
class Category:
    """A hazard category from the verdict: its code as the model gave it and its name."""

    code: str
    name: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "name": self.name}


class Decision(StrEnum):
    ALLOW = "allow"  # the guard judged the conversation safe
    FLAG = "flag"  # unsafe, but no category the policy blocks: reported and let through
    BLOCK = "block"  # unsafe under the policy, or no verdict at all (status error)


class ScanStatus(StrEnum):
    OK = "ok"  # the guard answered
    SKIPPED = "skipped"  # this screen is switched off by configuration
    ERROR = "error"  # no verdict could be had; decision is BLOCK (fail closed)


@dataclass(frozen=True)
class ScanResult:
    """One screen's outcome."""

    decision: Decision
    categories: tuple[Category, ...]  # codes as the model gave them (empty when safe)
    reason: str
    status: ScanStatus
    model: str
    cached: bool = False  # served without a guard call of its own (cache or a shared call)
    latency_ms: float = 0.0
    error: GuardError | None = None  # set exactly when status is ERROR

    @property
    def safe(self) -> bool:
        """The guard answered ``safe`` (read off the decision)."""
        return self.decision is Decision.ALLOW

    @property
    def blocked(self) -> bool:
        """The policy refuses what was screened, or there was no verdict (fail closed)."""
        return self.decision is Decision.BLOCK

    @property
    def passed(self) -> bool:
        """Whether what was screened may be released."""
        return self.decision is not Decision.BLOCK

    @classmethod
    def skipped(cls, model: str) -> ScanResult:
        return cls(Decision.ALLOW, (), "screening is switched off", ScanStatus.SKIPPED, model)

    @classmethod
    def failed(cls, error: GuardError, model: str) -> ScanResult:
        return cls(Decision.BLOCK, (), error.message, ScanStatus.ERROR, model, error=error)

    def as_cached(self, latency_ms: float) -> ScanResult:
        """This verdict as served again without a guard call (``dataclasses.replace`` costs
        several times more, and a 32-text request serves 64 of these)."""
        return ScanResult(
            self.decision, self.categories, self.reason, self.status, self.model,
            True, latency_ms, self.error,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The verdict as callers see it (``safe`` and ``blocked`` are read off the one
        decision). Only results with status ok are rendered; an error is refused instead."""
        return {
            "safe": self.safe,
            "blocked": self.blocked,
            "categories": [category.to_dict() for category in self.categories],
            "model": self.model,
            "cached": self.cached,
            "latency_ms": round(self.latency_ms, 3),
        }


class GuardError(ServiceError):
    """No verdict could be obtained; the request must be refused (fail closed).

    ``kind`` says why: ``timeout``, ``connection`` (refused, DNS, dropped), ``http`` (an error
    status from Ollama), ``model_missing`` (the guard model is not pulled), ``malformed`` (a
    body that is not the JSON Ollama sends) or ``unparseable`` (the model's answer is neither
    ``safe`` nor ``unsafe`` with category codes) or ``overloaded`` (the guard's queue, or the
    caller's share of it, is full: refused at once) or ``too_long`` (the conversation might not
    fit the guard's context, GUARD_NUM_CTX; request limits refuse most such texts before, this
    catches what grows later, such as a long chat reply). ``message`` is what a caller is told;
    it never includes the internal ``detail`` (which ``str(error)`` has, for the log).
    """

    problem = "guard-unavailable"

    def __init__(
        self,
        kind: ErrorKind,
        detail: str,
        *,
        retry_after: int = 5,
        status_code: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(
            f"the guard could not judge the request ({kind}); refusing rather than "
            "answering unscreened"
        )
        self.args = (f"guard {kind}: {detail}",)  # str(): for logs; never sent to a caller
        self.kind: ErrorKind = kind
        self.detail = detail
        self.retry_after: int = retry_after  # seconds, for the Retry-After header
        self.status_code = status_code  # HTTP status from Ollama, when there was one
        self.attempts = attempts  # calls made before giving up

    def details(self) -> dict[str, Any]:
        return {"kind": self.kind, "retry_after": self.retry_after}

    def to_dict(self) -> dict[str, Any]:
        """Everything known about the failure, for logs and the guard-check command."""
        return {"kind": self.kind, "detail": self.detail, "attempts": self.attempts}


class Scanner(Protocol):
    """Something that screens conversations. ``scan`` never raises for a guard failure: it
    returns a result with status ERROR (and decision BLOCK) instead."""

    model: str

    async def scan(self, conversation: tuple[Message, ...]) -> ScanResult: ...

    def cached(self, conversation: tuple[Message, ...]) -> ScanResult | None:
        """The verdict ``scan`` would return from its cache at once, or None."""
        ...

    def cached_all(self, conversations: Sequence[tuple[Message, ...]]) -> list[ScanResult | None]:
        """``cached`` of each conversation, in order."""
        ...

    async def readiness(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...
