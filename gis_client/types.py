"""What the service answers, as typed values (each keeps the JSON it was read from in ``raw``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Category:
    """A Llama Guard hazard category, e.g. ``S1`` "Violent Crimes"."""

    code: str
    name: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Category:
        return cls(code=str(data["code"]), name=str(data.get("name", "")))


def categories_of(items: Any) -> tuple[Category, ...]:
    return tuple(Category.from_json(item) for item in items or ())


@dataclass(frozen=True)
class Verdict:
    """The guard's verdict on one screen (or one moderation)."""

    safe: bool
    blocked: bool
    categories: tuple[Category, ...]
    model: str
    cached: bool
    latency_ms: float
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Verdict:
        return cls(
            safe=bool(data["safe"]),
            blocked=bool(data["blocked"]),
            categories=categories_of(data.get("categories")),
            model=str(data.get("model", "")),
            cached=bool(data.get("cached", False)),
            latency_ms=float(data.get("latency_ms", 0.0)),
            raw=data,
        )


@dataclass(frozen=True)
class TextResult:
    """One text's label and scores, and the verdicts of its two screens (None: that screen
    is switched off in the service)."""

    index: int
    label: str
    score: float
    probabilities: Mapping[str, float]
    input_screen: Verdict | None
    output_screen: Verdict | None
    answered_by: str | None  # which member of a cascade answered
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TextResult:
        screens = data.get("screens") or {}
        return cls(
            index=int(data["index"]),
            label=str(data["label"]),
            score=float(data["score"]),
            probabilities={str(k): float(v) for k, v in data["probabilities"].items()},
            input_screen=_verdict(screens.get("input")),
            output_screen=_verdict(screens.get("output")),
            answered_by=data.get("answered_by"),
            raw=data,
        )


def _verdict(data: Mapping[str, Any] | None) -> Verdict | None:
    return None if data is None else Verdict.from_json(data)


@dataclass(frozen=True)
class Classification:
    """The answer of ``POST /v1/classify``: the model that answered and one result a text."""

    model: str
    model_version: str
    results: tuple[TextResult, ...]
    timing: Mapping[str, float]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Classification:
        return cls(
            model=str(data["model"]["name"]),
            model_version=str(data["model"].get("version", "")),
            results=tuple(TextResult.from_json(item) for item in data["results"]),
            timing={str(k): float(v) for k, v in (data.get("timing") or {}).items()},
            raw=data,
        )

    @property
    def labels(self) -> list[str]:
        return [result.label for result in self.results]


@dataclass(frozen=True)
class ModelInfo:
    """One entry of ``GET /v1/models``."""

    name: str
    version: str
    architecture: str
    labels: tuple[str, ...]
    default: bool
    test_accuracy: float | None
    size_bytes: int | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelInfo:
        accuracy = data.get("test_accuracy")
        size = data.get("size_bytes")
        return cls(
            name=str(data["name"]),
            version=str(data.get("version", "")),
            architecture=str(data.get("architecture", "")),
            labels=tuple(str(label) for label in data.get("labels", ())),
            default=bool(data.get("default", False)),
            test_accuracy=None if accuracy is None else float(accuracy),
            size_bytes=None if size is None else int(size),
            raw=data,
        )
