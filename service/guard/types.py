"""Values the guard hands out: messages to judge, verdicts, and the one error type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["user", "assistant"]
ErrorKind = Literal["timeout", "connection", "http", "model_missing", "malformed", "unparseable"]


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


@dataclass(frozen=True)
class Verdict:
    """The guard's judgement of one conversation, with the policy outcome."""

    safe: bool  # the guard model answered "safe"
    categories: tuple[Category, ...]  # codes as the model gave them (empty when safe)
    blocked: bool  # policy outcome: True when unsafe with at least one blocking code
    model: str
    cached: bool = False  # served without a guard call of its own (cache or a shared call)
    latency_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "safe": self.safe,
            "blocked": self.blocked,
            "categories": [category.to_dict() for category in self.categories],
            "model": self.model,
            "cached": self.cached,
            "latency_ms": round(self.latency_ms, 3),
        }


class GuardError(Exception):
    """No verdict could be obtained; the request must be refused (503, fail closed).

    ``kind`` says why: ``timeout``, ``connection`` (refused, DNS, dropped), ``http`` (an error
    status from Ollama), ``model_missing`` (the guard model is not pulled), ``malformed`` (a
    body that is not the JSON Ollama sends) or ``unparseable`` (the model's answer is neither
    ``safe`` nor ``unsafe`` with category codes).
    """

    def __init__(
        self,
        kind: ErrorKind,
        detail: str,
        *,
        retry_after: int = 5,
        status_code: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"guard {kind}: {detail}")
        self.kind: ErrorKind = kind
        self.detail = detail
        self.retry_after = retry_after  # seconds, for the Retry-After header
        self.status_code = status_code  # HTTP status from Ollama, when there was one
        self.attempts = attempts  # calls made before giving up

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "detail": self.detail, "attempts": self.attempts}
