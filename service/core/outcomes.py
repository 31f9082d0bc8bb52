"""Typed results of the core operations, each with ``to_dict()`` (the JSON both front ends
send: REST as the response body, A2A as the artifact's data part) and ``summary()`` (one
line for people)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.guard.scanner import ScanResult, ScanStatus

if TYPE_CHECKING:
    from service.models.registry import ModelInfo, Prediction


@dataclass(frozen=True)
class Timing:
    """Wall times in milliseconds. Inference and the output screens run while the input
    screens do, so guard_ms + model_ms may exceed total_ms."""

    guard_ms: float  # from the first screen's start to the last verdict (they overlap)
    model_ms: float  # waiting for the model: queueing plus the forward that ran these texts
    total_ms: float  # the whole pipeline call

    def to_dict(self) -> dict[str, float]:
        return {
            "guard_ms": round(self.guard_ms, 3),
            "model_ms": round(self.model_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


def render_prediction(prediction: Prediction) -> str:
    """The short human-readable reply the output screen judges, e.g. ``positive (0.97)``."""
    return f"{prediction.label} ({prediction.score:.2f})"


def screen_dict(result: ScanResult) -> dict[str, Any] | None:
    """A screen's verdict as answered; None when that screen is switched off."""
    return None if result.status is ScanStatus.SKIPPED else result.to_dict()


@dataclass(frozen=True)
class TextResult:
    """One text's prediction together with the results of both of its screens."""

    prediction: Prediction
    rendered: str  # what the output screen judged as the assistant's reply
    input_screen: ScanResult
    output_screen: ScanResult

    def to_dict(self, index: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": index,
            "label": self.prediction.label,
            "score": self.prediction.score,
            "probabilities": self.prediction.probabilities,
        }
        if self.prediction.answered_by is not None:  # a cascade names its answering member
            out["answered_by"] = self.prediction.answered_by
        out["screens"] = {
            "input": screen_dict(self.input_screen),
            "output": screen_dict(self.output_screen),
        }
        return out


@dataclass(frozen=True)
class ClassifyOutcome:
    model: ModelInfo
    results: tuple[TextResult, ...]
    timing: Timing

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"name": self.model.name, "version": self.model.version},
            "results": [result.to_dict(index) for index, result in enumerate(self.results)],
            "timing": self.timing.to_dict(),
        }

    def summary(self) -> str:
        return f"{self.model.name}: " + summary_of([r.rendered for r in self.results])


@dataclass(frozen=True)
class ModerationOutcome:
    """The guard's verdict on each conversation, in the order they were given."""

    results: tuple[ScanResult, ...]
    total_ms: float

    def timing(self) -> dict[str, float]:
        return {"total_ms": round(self.total_ms, 3)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [{"index": i, **result.to_dict()} for i, result in enumerate(self.results)],
            "timing": self.timing(),
        }

    def summary(self) -> str:
        return summary_of([render_verdict(result) for result in self.results])


def render_verdict(result: ScanResult) -> str:
    if result.safe:
        return "safe"
    codes = ", ".join(f"{c.code} {c.name}" for c in result.categories)
    return f"unsafe{' (blocked)' if result.blocked else ''}: {codes}"


def summary_of(items: Sequence[str], limit: int = 10) -> str:
    """Join short per-item summaries, counting instead of listing past ``limit``."""
    if len(items) <= limit:
        return "; ".join(items)
    return "; ".join(items[:limit]) + f"; ... ({len(items) - limit} more)"
