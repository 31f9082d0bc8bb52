"""GuardedPipeline: the one path from a request to a model and back.

Every entry point (REST, A2A) calls :meth:`GuardedPipeline.classify`; nothing else holds the
model registry. For a batch of texts it:

1. screens each text as the user's message (``Guard.screen_input``), all concurrently, while
   the model runs in a worker thread (``ModelRegistry.predict`` is blocking CPU work);
2. if any input screen blocks or fails, abandons the inference (its result is never read);
3. screens each text's rendered result as the assistant's reply (``Guard.screen_output``);
4. returns the results only when every screen of both stages passed.

A blocked screen raises :class:`ContentBlocked`; a guard that cannot answer raises
``GuardError`` (fail closed); the whole call is bounded by ``settings.request_timeout``
(:class:`RequestTimeout`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio.to_thread
from prometheus_client import Counter, Histogram

from service.config import Settings
from service.guard.types import Category, GuardError, Message, Verdict
from service.models.batching import Batcher

if TYPE_CHECKING:
    from service.guard import Guard
    from service.models.registry import ModelInfo, ModelRegistry, Prediction

logger = logging.getLogger("service.core.pipeline")

Stage = Literal["input", "output"]
T = TypeVar("T")

# Set while a pipeline call is running; the registry is only ever called inside one. Tests
# read it from a spy registry to prove no route reaches a model any other way.
pipeline_call: ContextVar[str | None] = ContextVar("pipeline_call", default=None)

PIPELINE_OUTCOMES = Counter(
    "pipeline_requests_total",
    "GuardedPipeline calls by operation, model and outcome.",
    ["operation", "model", "outcome"],
)
MODEL_SECONDS = Histogram(
    "model_inference_seconds",
    "Wall time of one model forward pass (one micro-batch) in its worker thread.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
MODEL_BATCH_TEXTS = Histogram(
    "model_batch_texts",
    "Texts per model forward pass (concurrent requests are combined into one pass).",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
MODEL_BATCH_CALLS = Histogram(
    "model_batch_requests",
    "Pipeline calls combined into one model forward pass.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCH_TEXTS = Histogram(
    "pipeline_batch_texts",
    "Number of texts per classify call.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


class ContentBlocked(Exception):
    """The guard judged an input text, or the reply to it, unsafe under the policy."""

    def __init__(self, stage: Stage, verdicts: dict[int, Verdict]) -> None:
        self.stage: Stage = stage
        self.verdicts = verdicts  # index of each blocked text -> its verdict
        self.indices = tuple(sorted(verdicts))
        seen: dict[str, Category] = {}
        for index in self.indices:
            for category in verdicts[index].categories:
                seen.setdefault(category.code, category)
        self.categories: tuple[Category, ...] = tuple(seen.values())
        codes = ",".join(category.code for category in self.categories)
        super().__init__(f"{stage} blocked by the guard ({codes}) for texts {list(self.indices)}")


class RequestTimeout(Exception):
    """The whole pipeline call took longer than ``settings.request_timeout``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within the request timeout of {seconds:g} s")
        self.seconds = seconds


class InputLimitError(ValueError):
    """The texts break a request limit (count, length, emptiness).

    ``errors`` follows pydantic's error shape (``loc``, ``msg``, ``type``) with locations
    relative to the request, e.g. ``("texts", 3)``, so entry points can report them as field
    errors.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(error["msg"]) for error in errors))
        self.errors = errors


@dataclass(frozen=True)
class Timing:
    """Wall times in milliseconds. The input screens overlap inference, so guard_ms +
    model_ms may exceed total_ms."""

    guard_ms: float  # input screening + output screening, each stage's wall time
    model_ms: float  # waiting for the model: queueing plus the forward that ran these texts
    total_ms: float  # the whole pipeline call

    def to_dict(self) -> dict[str, float]:
        return {
            "guard_ms": round(self.guard_ms, 3),
            "model_ms": round(self.model_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


@dataclass(frozen=True)
class TextResult:
    """One text's prediction together with the verdicts of both of its screens.

    A verdict is None only when that stage's screening is switched off in the settings.
    """

    prediction: Prediction
    rendered: str  # what the output screen judged as the assistant's reply
    input_verdict: Verdict | None
    output_verdict: Verdict | None


@dataclass(frozen=True)
class ClassifyOutcome:
    model: ModelInfo
    results: tuple[TextResult, ...]
    timing: Timing


def render_prediction(prediction: Prediction) -> str:
    """The short human-readable reply the output screen judges, e.g. ``positive (0.97)``."""
    return f"{prediction.label} ({prediction.score:.2f})"


class GuardedPipeline:
    """Screens, infers and screens again; the only holder of the model registry."""

    def __init__(self, registry: ModelRegistry, guard: Guard, settings: Settings) -> None:
        self._registry = registry
        self._guard = guard
        self._settings = settings
        self._batchers: dict[str, Batcher[Prediction]] = {}

    # --- read-only views for entry points ---------------------------------------------
    @property
    def default_model(self) -> str:
        return self._settings.default_model

    def model_names(self) -> list[str]:
        return self._registry.names()

    def model_info(self, name: str | None = None) -> ModelInfo:
        """Raises ``UnknownModelError`` for a name that is not loaded."""
        return self._registry.info(name or self._settings.default_model)

    async def readiness(self) -> dict[str, Any]:
        """The guard's readiness report (Ollama reachable, guard model present, screens)."""
        return await self._guard.readiness()

    def check_texts(self, texts: Sequence[str]) -> None:
        """Raise InputLimitError when the texts break ``max_batch`` / ``max_text_chars``."""
        settings = self._settings
        errors: list[dict[str, Any]] = []
        if not texts:
            errors.append(
                {"loc": ("texts",), "msg": "at least one text is required", "type": "too_short"}
            )
        if len(texts) > settings.max_batch:
            errors.append(
                {
                    "loc": ("texts",),
                    "msg": f"{len(texts)} texts; at most {settings.max_batch} per request",
                    "type": "too_long",
                    "ctx": {"max_length": settings.max_batch},
                }
            )
            raise InputLimitError(errors)  # not one error per text of a huge batch
        for index, text in enumerate(texts):
            error = self._text_error(text)
            if error:
                errors.append({"loc": ("texts", index), **error})
        if errors:
            raise InputLimitError(errors)

    def check_messages(self, messages: Sequence[Message]) -> None:
        """Raise InputLimitError when a conversation breaks the limits (``max_batch``
        messages, ``max_text_chars`` each)."""
        errors: list[dict[str, Any]] = []
        if not messages:
            errors.append(
                {"loc": ("messages",), "msg": "at least one message is required",
                 "type": "too_short"}
            )  # fmt: skip
        if len(messages) > self._settings.max_batch:
            errors.append(
                {
                    "loc": ("messages",),
                    "msg": f"{len(messages)} messages; at most {self._settings.max_batch}",
                    "type": "too_long",
                    "ctx": {"max_length": self._settings.max_batch},
                }
            )
            raise InputLimitError(errors)
        for index, message in enumerate(messages):
            error = self._text_error(message.content)
            if error:
                errors.append({"loc": ("messages", index, "content"), **error})
        if errors:
            raise InputLimitError(errors)

    def _text_error(self, text: object) -> dict[str, Any] | None:
        limit = self._settings.max_text_chars
        if not isinstance(text, str) or not text.strip():
            return {"msg": "text must be a non-blank string", "type": "string_too_short"}
        if len(text) > limit:
            return {
                "msg": f"{len(text)} characters; at most {limit}",
                "type": "string_too_long",
                "ctx": {"max_length": limit},
            }
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates ("\ud800") pass JSON but are not text
            return {"msg": "text is not valid Unicode (lone surrogate)", "type": "string_unicode"}
        return None

    async def warm_up(self) -> None:
        """Run each model once on a dummy text, so the first request does not pay for lazy
        initialisation (allocator, kernels). Nothing is returned to anyone."""
        token = pipeline_call.set("warm_up")
        try:
            for name in self._registry.names():
                await anyio.to_thread.run_sync(self._registry.predict, name, ["warm up"])
        finally:
            pipeline_call.reset(token)

    # --- the guarded operations --------------------------------------------------------
    async def classify(self, texts: Sequence[str], model: str | None = None) -> ClassifyOutcome:
        """Classify ``texts`` with ``model`` (default: settings.default_model), both screens.

        Raises InputLimitError, UnknownModelError, ContentBlocked, GuardError, RequestTimeout.
        """
        texts = list(texts)
        self.check_texts(texts)
        info = self.model_info(model)  # unknown model: refused before anything runs
        token = pipeline_call.set("classify")
        try:
            result = await self._bounded(self._classify(texts, info))
        except BaseException as error:
            PIPELINE_OUTCOMES.labels("classify", info.name, _failure_outcome(error)).inc()
            raise
        finally:
            pipeline_call.reset(token)
        PIPELINE_OUTCOMES.labels("classify", info.name, "ok").inc()
        return result

    async def moderate(self, messages: Sequence[Message]) -> Verdict:
        """The guard's verdict on a conversation (the moderation service).

        Raises InputLimitError, GuardError, RequestTimeout."""
        messages = list(messages)
        self.check_messages(messages)
        try:
            verdict = await self._bounded(self._guard.screen(messages))
        except BaseException as error:
            PIPELINE_OUTCOMES.labels("moderate", "-", _failure_outcome(error)).inc()
            raise
        PIPELINE_OUTCOMES.labels("moderate", "-", "blocked" if verdict.blocked else "ok").inc()
        return verdict

    # --- internals -----------------------------------------------------------------------
    async def _bounded(self, work: Awaitable[T]) -> T:
        seconds = self._settings.request_timeout
        try:
            async with asyncio.timeout(seconds) as deadline:
                return await work
        except TimeoutError:
            if deadline.expired():
                raise RequestTimeout(seconds) from None
            raise

    async def _classify(self, texts: list[str], info: ModelInfo) -> ClassifyOutcome:
        started = time.perf_counter()
        BATCH_TEXTS.observe(len(texts))
        inference = asyncio.create_task(self._predict(info.name, texts))
        inference.add_done_callback(_retrieve)
        try:
            input_started = time.perf_counter()
            input_verdicts = await _all(self._guard.screen_input(text) for text in texts)
            input_ms = _ms_since(input_started)
            _raise_if_blocked("input", input_verdicts)
        except BaseException:
            # Unsafe input or no verdict: the model's answer must never be read.
            inference.cancel()
            raise
        predictions, model_ms = await inference
        if len(predictions) != len(texts):
            raise RuntimeError(f"model {info.name} gave {len(predictions)} for {len(texts)}")
        rendered = [render_prediction(prediction) for prediction in predictions]
        output_started = time.perf_counter()
        output_verdicts = await _all(
            self._guard.screen_output(text, reply)
            for text, reply in zip(texts, rendered, strict=True)
        )
        output_ms = _ms_since(output_started)
        _raise_if_blocked("output", output_verdicts)
        results = tuple(
            TextResult(prediction, reply, verdict_in, verdict_out)
            for prediction, reply, verdict_in, verdict_out in zip(
                predictions, rendered, input_verdicts, output_verdicts, strict=True
            )
        )
        timing = Timing(
            guard_ms=input_ms + output_ms, model_ms=model_ms, total_ms=_ms_since(started)
        )
        logger.info(
            "classified",
            extra={"model": info.name, "texts": len(texts), "timing": timing.to_dict()},
        )
        return ClassifyOutcome(model=info, results=results, timing=timing)

    async def _predict(self, name: str, texts: list[str]) -> tuple[list[Prediction], float]:
        started = time.perf_counter()
        # Combined with concurrent calls for the same model into one forward pass; a refused
        # request that cancels this await returns at once and only its own slice is dropped.
        predictions = await self._batcher(name).submit(texts)
        return predictions, _ms_since(started)

    def _batcher(self, name: str) -> Batcher[Prediction]:
        batcher = self._batchers.get(name)
        if batcher is None:
            batcher = self._batchers[name] = Batcher(
                functools.partial(self._registry.predict, name),
                max_texts=self._settings.batch_max_texts,
                max_wait=self._settings.batch_max_wait_ms / 1000.0,
                observe=_batch_observer(name),
            )
        return batcher

    async def aclose(self) -> None:
        """Stop the model batchers; calls still waiting for a forward fail."""
        batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            await batcher.aclose()


def _failure_outcome(error: BaseException) -> str:
    """The pipeline_requests_total outcome label of a call that raised ``error``."""
    if isinstance(error, ContentBlocked):
        return f"blocked_{error.stage}"
    if isinstance(error, GuardError):
        return "guard_error"
    if isinstance(error, RequestTimeout):
        return "timeout"
    return "error"


async def _all(awaitables: Any) -> list[Any]:
    """Run the awaitables concurrently; on the first error cancel the rest and raise it."""
    awaitables = list(awaitables)
    if len(awaitables) == 1:  # the common single-text request: no task to create
        return [await awaitables[0]]
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()  # no-op for finished tasks


def _batch_observer(name: str) -> Callable[[int, int, float], None]:
    seconds = MODEL_SECONDS.labels(name)  # label lookups once per model, not per forward
    texts = MODEL_BATCH_TEXTS.labels(name)
    calls = MODEL_BATCH_CALLS.labels(name)

    def observe(n_texts: int, n_calls: int, elapsed: float) -> None:
        seconds.observe(elapsed)
        texts.observe(n_texts)
        calls.observe(n_calls)

    return observe


def _retrieve(task: asyncio.Task[Any]) -> None:
    # An abandoned inference that failed must not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()


def _raise_if_blocked(stage: Stage, verdicts: Sequence[Verdict | None]) -> None:
    blocked = {
        index: verdict
        for index, verdict in enumerate(verdicts)
        if verdict is not None and verdict.blocked
    }
    if blocked:
        raise ContentBlocked(stage, blocked)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
