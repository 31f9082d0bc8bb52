"""GuardedPipeline: the one path from a request to a model or the guard, and back.

Every front end (REST, A2A) calls its operations; nothing else holds the model registry or
the scanner. ``classify`` takes a batch of texts and:

1. screens each text as the user's message, all concurrently, while the model runs in a
   worker thread (``ModelRegistry.predict`` is blocking CPU work);
2. if any input screen blocks or fails, abandons the inference (its result is never read);
3. screens each text's rendered result as the assistant's reply;
4. returns the results only when every screen of both stages passed.

``moderate`` is the guard as a service: the verdict on each of several conversations.

Failures are :mod:`service.core.errors`: a blocked screen raises ``ContentBlocked``, a guard
that cannot answer ``GuardError`` (fail closed), a limit ``LimitExceeded``, an unknown model
``UnknownModelError``; the whole call is bounded by ``settings.request_timeout``
(``RequestTimeout``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
from prometheus_client import Counter, Histogram

from service.config import Settings
from service.core.errors import ContentBlocked, RequestTimeout, ServiceError, Stage
from service.core.limits import Limits
from service.core.outcomes import (
    ClassifyOutcome,
    ModerationOutcome,
    TextResult,
    Timing,
    render_prediction,
)
from service.guard.metrics import GUARD_CALLS
from service.guard.scanner import GuardError, Message, Scanner, ScanResult, ScanStatus
from service.models.batching import Batcher

if TYPE_CHECKING:
    from service.models.registry import ModelInfo, ModelRegistry, Prediction

logger = logging.getLogger("service.core.pipeline")

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


class GuardedPipeline:
    """Screens, infers and screens again; the only holder of the model registry."""

    def __init__(self, registry: ModelRegistry, scanner: Scanner, settings: Settings) -> None:
        self._registry = registry
        self._scanner = scanner
        self._settings = settings
        self.limits = Limits(max_batch=settings.max_batch, max_text_chars=settings.max_text_chars)
        self._batchers: dict[str, Batcher[Prediction]] = {}

    # --- read-only views for front ends -----------------------------------------------
    @property
    def default_model(self) -> str:
        return self._settings.default_model

    def model_names(self) -> list[str]:
        return self._registry.names()

    def model_info(self, name: str | None = None) -> ModelInfo:
        """Raises ``UnknownModelError`` for a name that is not loaded."""
        return self._registry.info(name or self._settings.default_model)

    def models(self) -> list[ModelInfo]:
        return [self._registry.info(name) for name in self._registry.names()]

    async def readiness(self) -> dict[str, Any]:
        """The scanner's readiness report, with which screens are on."""
        state = await self._scanner.readiness()
        state["screen_input"] = self._settings.guard_screen_input
        state["screen_output"] = self._settings.guard_screen_output
        return state

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

        Raises LimitExceeded, UnknownModelError, ContentBlocked, GuardError, RequestTimeout.
        """
        texts = list(texts)
        self.limits.check_texts(texts)
        info = self.model_info(model)  # unknown model: refused before anything runs
        token = pipeline_call.set("classify")
        try:
            result = await self._bounded(self._classify(texts, info))
        except BaseException as error:
            _count_failure("classify", info.name, error)
            raise
        finally:
            pipeline_call.reset(token)
        PIPELINE_OUTCOMES.labels("classify", info.name, "ok").inc()
        return result

    async def moderate(self, conversations: Sequence[Sequence[Message]]) -> ModerationOutcome:
        """The guard's verdict on each conversation (the moderation service); an unsafe
        verdict is an answer here, not a refusal.

        Raises LimitExceeded, GuardError, RequestTimeout."""
        items = [tuple(conversation) for conversation in conversations]
        self.limits.check_count(len(items), ("conversations",), "conversations")
        for index, conversation in enumerate(items):
            self.limits.check_conversation(conversation, at=("conversations", index, "messages"))
        started = time.perf_counter()
        try:
            results = await self._bounded(_all(self._scanner.scan(c) for c in items))
            _raise_for_errors(results)
        except BaseException as error:
            _count_failure("moderate", "-", error)
            raise
        outcome = "blocked" if any(result.blocked for result in results) else "ok"
        PIPELINE_OUTCOMES.labels("moderate", "-", outcome).inc()
        return ModerationOutcome(tuple(results), _ms_since(started))

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
            input_screens = await _all(self._screen_input(text) for text in texts)
            input_ms = _ms_since(input_started)
            _raise_unless_passed("input", input_screens)
        except BaseException:
            # Unsafe input or no verdict: the model's answer must never be read.
            inference.cancel()
            raise
        predictions, model_ms = await inference
        if len(predictions) != len(texts):
            raise RuntimeError(f"model {info.name} gave {len(predictions)} for {len(texts)}")
        rendered = [render_prediction(prediction) for prediction in predictions]
        output_started = time.perf_counter()
        output_screens = await _all(
            self._screen_output(text, reply) for text, reply in zip(texts, rendered, strict=True)
        )
        output_ms = _ms_since(output_started)
        _raise_unless_passed("output", output_screens)
        results = tuple(
            TextResult(prediction, reply, screen_in, screen_out)
            for prediction, reply, screen_in, screen_out in zip(
                predictions, rendered, input_screens, output_screens, strict=True
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

    async def _screen_input(self, text: str) -> ScanResult:
        if not self._settings.guard_screen_input:
            GUARD_CALLS.labels("input", "skipped").inc()
            return ScanResult.skipped(self._scanner.model)
        return await self._scanner.scan((Message("user", text),))

    async def _screen_output(self, text: str, reply: str) -> ScanResult:
        if not self._settings.guard_screen_output:
            GUARD_CALLS.labels("output", "skipped").inc()
            return ScanResult.skipped(self._scanner.model)
        return await self._scanner.scan((Message("user", text), Message("assistant", reply)))

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


def _count_failure(operation: str, model: str, error: BaseException) -> None:
    """Count a failed call, and log the failures an operator should see."""
    outcome = error.metric_outcome() if isinstance(error, ServiceError) else "error"
    PIPELINE_OUTCOMES.labels(operation, model, outcome).inc()
    if isinstance(error, GuardError):
        logger.warning("guard unavailable", extra=error.to_dict())
    elif isinstance(error, RequestTimeout):
        logger.warning("request timed out", extra={"timeout_s": error.seconds})


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


def _raise_for_errors(results: Sequence[ScanResult]) -> None:
    """Fail closed: the first screen that got no verdict refuses the whole call."""
    for result in results:
        if result.status is ScanStatus.ERROR:
            assert result.error is not None  # set with status ERROR, see ScanResult.failed
            raise result.error


def _raise_unless_passed(stage: Stage, results: Sequence[ScanResult]) -> None:
    _raise_for_errors(results)
    blocked = {index: result for index, result in enumerate(results) if not result.passed}
    if blocked:
        raise ContentBlocked(stage, blocked)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
