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
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
from prometheus_client import Counter, Histogram

from service.chat.holdback import ChunkPolicy, ScreenedReply
from service.chat.model import ChatModel, Generated, cut_at_bytes
from service.chat.types import ChatEnd, ChatMessage, ChatReply, FinishReason, Usage, guard_view
from service.config import Settings
from service.core.errors import (
    ChatUnavailable,
    ContentBlocked,
    RequestTimeout,
    ServiceError,
    Stage,
)
from service.core.limits import LimitExceeded, Limits, Violation
from service.core.outcomes import (
    ClassifyOutcome,
    ModerationOutcome,
    TextResult,
    Timing,
    render_prediction,
)
from service.guard.admission import follow_up
from service.guard.budget import CHAT_REPLY_BYTES_PER_TOKEN
from service.guard.metrics import GUARD_CALLS
from service.guard.scanner import GuardError, Message, Scanner, ScanResult, ScanStatus
from service.models.batching import Batcher

if TYPE_CHECKING:
    from service.drift.monitor import DriftMonitor
    from service.drift.outcome import DriftOutcome
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
    "Wall time of one model forward pass (one micro-batch) in its worker thread; adapters "
    "served on a base are counted under the base, whose batches they share.",
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

    def __init__(
        self,
        registry: ModelRegistry,
        scanner: Scanner,
        settings: Settings,
        chat_model: ChatModel | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        self._registry = registry
        self._drift = drift  # None: drift monitoring is off
        self._scanner = scanner
        self._settings = settings
        self._chat = chat_model
        guard_context = {
            "guard_num_ctx": settings.guard_num_ctx,
            "guard_num_predict": settings.guard_num_predict,
        }
        self.limits = Limits(settings.max_batch, settings.max_text_chars, **guard_context)
        self.chat_limits = Limits(
            settings.chat_max_messages, settings.max_text_chars, **guard_context
        )
        self.chunk_policy = ChunkPolicy(settings.chat_chunk_tokens, settings.chat_chunk)
        self._batchers: dict[str, Batcher[tuple[str, str], Prediction]] = {}
        # Readiness checks shared by concurrent probes (a flood makes one call at a time).
        self._guard_check = _SharedCall(lambda: self._scanner.readiness())
        self._chat_check = None if chat_model is None else _SharedCall(chat_model.readiness)

    # --- read-only views for front ends -----------------------------------------------
    @property
    def default_model(self) -> str:
        return self._settings.default_model

    def model_names(self) -> list[str]:
        return self._registry.names()

    def model_info(self, name: str | None = None) -> ModelInfo:
        """Raises ``UnknownModelError`` for a name that is not loaded ("" included: only a
        name left out means the default)."""
        return self._registry.info(self._settings.default_model if name is None else name)

    def models(self) -> list[ModelInfo]:
        return [self._registry.info(name) for name in self._registry.names()]

    async def readiness(self) -> dict[str, Any]:
        """The scanner's readiness report, with which screens are on. Concurrent callers
        share one check."""
        state = await self._guard_check()
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
        if self._drift is not None:  # descriptors only; the tests run off the request path
            scores = [r.prediction.probabilities[info.labels[1]] for r in result.results]
            self._drift.observe(info.name, texts, scores)
        return result

    # --- drift ---------------------------------------------------------------------------
    @property
    def drift(self) -> DriftMonitor | None:
        return self._drift

    def drift_status(self, model: str | None = None) -> dict[str, Any]:
        """The drift monitor's state (GET /v1/drift): figures and vocabulary words, no
        caller text. Raises UnknownModelError for a model that is not loaded."""
        from service.drift.outcome import DISABLED

        if model is not None:
            self.model_info(model)
        return self._drift.report(model) if self._drift is not None else dict(DISABLED)

    async def drift_report(self, model: str | None = None, request: str = "") -> DriftOutcome:
        """The drift status as a guarded answer: ``request`` (or a plain request naming the
        model) screened as the user's message, the report's words as the reply.

        Raises UnknownModelError, ContentBlocked, GuardError, RequestTimeout."""
        from service.drift.outcome import DriftOutcome, screened_text

        report = self.drift_status(model)
        request = request or f"drift report for {model or 'all models'}"
        try:
            reply = screened_text(report)
            screen_in, screen_out = await self._bounded(
                _all([self._screen_input(request), self._screen_output(request, reply)])
            )
            _raise_unless_passed("input", [screen_in])
            _raise_unless_passed("output", [screen_out])
        except BaseException as error:
            _count_failure("drift_report", model or "-", error)
            raise
        PIPELINE_OUTCOMES.labels("drift_report", model or "-", "ok").inc()
        return DriftOutcome(report, screen_in, screen_out)

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
            results = await self._bounded(self._scan_all(items))
            _raise_for_errors(results)
        except BaseException as error:
            _count_failure("moderate", "-", error)
            raise
        outcome = "blocked" if any(result.blocked for result in results) else "ok"
        PIPELINE_OUTCOMES.labels("moderate", "-", outcome).inc()
        return ModerationOutcome(tuple(results), _ms_since(started))

    # --- chat ----------------------------------------------------------------------------
    @property
    def chat_model(self) -> str | None:
        """The chat model's name, or None when chat is off."""
        return self._chat.model if self._chat is not None and self._chat.enabled else None

    async def chat_readiness(self) -> dict[str, Any]:
        """The chat model's readiness; concurrent callers share one check."""
        if self._chat_check is None:
            return {"ok": True, "enabled": False, "warning": "chat is off (CHAT_MODEL is empty)"}
        return await self._chat_check()

    def check_chat(self, messages: Sequence[ChatMessage], max_tokens: int | None) -> int:
        """Raise LimitExceeded for a conversation the chat refuses (one whose screen with a
        reply of max_tokens would not fit the guard's context included); the max_tokens to
        use."""
        if max_tokens is not None and max_tokens < 1:
            raise LimitExceeded([Violation(("max_tokens",), "at least 1", "greater_than_equal")])
        cap = self._settings.chat_max_tokens
        tokens = cap if max_tokens is None else min(max_tokens, cap)
        self.chat_limits.check_conversation(
            guard_view(tuple(messages)), reply_bytes=CHAT_REPLY_BYTES_PER_TOKEN * tokens
        )
        if messages[-1].role != "user":
            violation = Violation(
                ("messages", len(messages) - 1, "role"),
                "the last message must be the user's",
                "value_error",
            )
            raise LimitExceeded([violation])
        return tokens

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> tuple[ScanResult, ScreenedReply]:
        """Screen the conversation as input, then stream the reply through the hold-back.

        Returns the input screen and the reply, an async iterator of ChatDelta (released
        only after its screen passed) and one ChatEnd. Raises, before anything streams:
        LimitExceeded, ChatUnavailable (chat off), ContentBlocked (input), GuardError,
        RequestTimeout. While it streams: GuardError, ChatUnavailable."""
        conversation = tuple(messages)
        tokens = self.check_chat(conversation, max_tokens)
        chat = self._require_chat()
        started = time.perf_counter()
        input_screen = await self._chat_input(conversation)
        view, generation = self._generate(chat, conversation, tokens, temperature)
        scan = self._scanner.scan if self._settings.guard_screen_output else None
        reply = ScreenedReply(generation, view, scan, self.chunk_policy, started=started)
        return input_screen, reply

    async def chat_complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> ChatReply:
        """The whole reply at once, screened once as a whole (no streaming)."""
        conversation = tuple(messages)
        tokens = self.check_chat(conversation, max_tokens)
        chat = self._require_chat()
        input_screen = await self._chat_input(conversation)
        view, generation = self._generate(chat, conversation, tokens, temperature)
        pieces: list[str] = []
        generated = None
        async for piece in generation:
            if isinstance(piece, str):
                pieces.append(piece)
            else:
                generated = piece
        assert generated is not None  # generate() ends with one, or raises
        text = "".join(pieces)
        # Bounded like every screen of a request: a guard queue that does not move must not
        # hold the caller past REQUEST_TIMEOUT.
        output = await self._bounded(self._screen_output_turns(view, text))
        _raise_for_errors([output])
        reason: FinishReason = "length" if generated.done_reason == "length" else "stop"
        usage = Usage(generated.prompt_tokens, generated.completion_tokens, 0)
        if not output.passed:
            end = ChatEnd("content_filter", usage, output.categories, guard_calls=1)
            text = ""
        else:
            usage = Usage(generated.prompt_tokens, generated.completion_tokens, len(pieces))
            end = ChatEnd(reason, usage, guard_calls=1, screens=(output,))
        return ChatReply(text, end, input_screen, chat.model)

    def _generate(
        self,
        chat: ChatModel,
        conversation: tuple[ChatMessage, ...],
        tokens: int,
        temperature: float | None,
    ) -> tuple[tuple[Message, ...], AsyncIterator[str | Generated]]:
        """The conversation as the guard reads it, and the reply's generation, cut where the
        screen of both would no longer fit the guard's context."""
        view = guard_view(conversation)
        room = self.chat_limits.reply_bytes([message.content for message in view])
        generation = chat.generate(conversation, max_tokens=tokens, temperature=temperature)
        return view, cut_at_bytes(generation, room)

    def _require_chat(self) -> ChatModel:
        if self._chat is None or not self._chat.enabled:
            raise ChatUnavailable("disabled", "CHAT_MODEL is empty", retry_after=None)
        return self._chat

    async def _chat_input(self, conversation: tuple[ChatMessage, ...]) -> ScanResult:
        """The input screen of a chat: the whole conversation, its last user turn judged."""
        try:
            if not self._settings.guard_screen_input:
                GUARD_CALLS.labels("input", "skipped").inc()
                result = ScanResult.skipped(self._scanner.model)
            else:
                result = await self._bounded(self._scanner.scan(guard_view(conversation)))
            _raise_unless_passed("input", [result])
        except BaseException as error:
            _count_failure("chat", self.chat_model or "-", error)
            raise
        PIPELINE_OUTCOMES.labels("chat", self.chat_model or "-", "ok").inc()
        return result

    async def _screen_output_turns(
        self, conversation: tuple[Message, ...], reply: str
    ) -> ScanResult:
        if not self._settings.guard_screen_output:
            GUARD_CALLS.labels("output", "skipped").inc()
            return ScanResult.skipped(self._scanner.model)
        token = follow_up.set(True)  # the reply of a conversation admitted at its input
        try:
            return await self._scanner.scan((*conversation, Message("assistant", reply)))
        finally:
            follow_up.reset(token)

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
        """Input screens and inference start together; the output screens start as soon as
        the prediction exists (about a millisecond), while the input screens still run, so
        a request waits for about one screen, not two in a row. Nothing is returned before
        both passed, and the input's verdict is read first: an unsafe or unanswered input is
        reported as such even when its output screen finished earlier, and output screens
        still running then are cancelled."""
        started = time.perf_counter()
        BATCH_TEXTS.observe(len(texts))
        inference = asyncio.create_task(self._predict(info.name, texts))
        inputs = asyncio.ensure_future(self._screen_inputs(texts))
        outputs: asyncio.Future[list[ScanResult]] | None = None
        for task in (inference, inputs):
            task.add_done_callback(_retrieve)
        try:
            # The prediction, unless the input screens fail first (then it is never read).
            await asyncio.wait((inference, inputs), return_when=asyncio.FIRST_COMPLETED)
            if inputs.done():
                _raise_unless_passed("input", inputs.result())
            predictions, model_ms = await inference
            if len(predictions) != len(texts):
                raise RuntimeError(f"model {info.name} gave {len(predictions)} for {len(texts)}")
            rendered = [render_prediction(prediction) for prediction in predictions]
            outputs = asyncio.ensure_future(self._screen_outputs(texts, rendered))
            outputs.add_done_callback(_retrieve)
            input_screens = await inputs
            _raise_unless_passed("input", input_screens)
            output_screens = await outputs
            _raise_unless_passed("output", output_screens)
        finally:
            pending: list[asyncio.Future[Any] | None] = [inference, inputs, outputs]
            for unfinished in pending:
                if unfinished is not None and not unfinished.done():
                    unfinished.cancel()  # a refusal: the rest of the work is not wanted
        guard_ms = _ms_since(started)  # both screens, overlapping, as wall time
        results = tuple(
            TextResult(prediction, reply, screen_in, screen_out)
            for prediction, reply, screen_in, screen_out in zip(
                predictions, rendered, input_screens, output_screens, strict=True
            )
        )
        timing = Timing(guard_ms=guard_ms, model_ms=model_ms, total_ms=_ms_since(started))
        logger.info(
            "classified",
            extra={"model": info.name, "texts": len(texts), "timing": timing.to_dict()},
        )
        return ClassifyOutcome(model=info, results=results, timing=timing)

    async def _scan_all(self, conversations: Sequence[tuple[Message, ...]]) -> list[ScanResult]:
        """Each conversation's verdict: the cached ones at once, without a task each (a
        32-text request whose verdicts are known then runs no guard coroutine at all), the
        others scanned concurrently."""
        known = self._scanner.cached_all(conversations)
        missing = [i for i, verdict in enumerate(known) if verdict is None]
        scanned = await _all(self._scanner.scan(conversations[i]) for i in missing)
        results = dict(zip(missing, scanned, strict=True))
        return [verdict if verdict is not None else results[i] for i, verdict in enumerate(known)]

    async def _screen_inputs(self, texts: Sequence[str]) -> list[ScanResult]:
        if not self._settings.guard_screen_input:
            GUARD_CALLS.labels("input", "skipped").inc(len(texts))
            return [ScanResult.skipped(self._scanner.model) for _ in texts]
        return await self._scan_all([(Message("user", text),) for text in texts])

    async def _screen_outputs(
        self, texts: Sequence[str], replies: Sequence[str]
    ) -> list[ScanResult]:
        if not self._settings.guard_screen_output:
            GUARD_CALLS.labels("output", "skipped").inc(len(texts))
            return [ScanResult.skipped(self._scanner.model) for _ in texts]
        # The request was admitted with its input screens: its output screens are follow-ups.
        token = follow_up.set(True)
        try:
            return await self._scan_all(
                [
                    (Message("user", text), Message("assistant", reply))
                    for text, reply in zip(texts, replies, strict=True)
                ]
            )
        finally:
            follow_up.reset(token)

    async def _screen_input(self, text: str) -> ScanResult:
        return (await self._screen_inputs([text]))[0]

    async def _screen_output(self, text: str, reply: str) -> ScanResult:
        return (await self._screen_outputs([text], [reply]))[0]

    async def _predict(self, name: str, texts: list[str]) -> tuple[list[Prediction], float]:
        started = time.perf_counter()
        # Combined with concurrent calls for the same model (or for the base and adapters of
        # one batch group) into one forward pass; a refused request that cancels this await
        # returns at once and only its own slice is dropped.
        batcher = self._batcher(self._registry.batch_group(name))
        predictions = await batcher.submit([(name, text) for text in texts])
        return predictions, _ms_since(started)

    def _batcher(self, name: str) -> Batcher[tuple[str, str], Prediction]:
        batcher = self._batchers.get(name)
        if batcher is None:
            batcher = self._batchers[name] = Batcher(
                self._registry.predict_mixed,
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
        if self._chat is not None:
            await self._chat.aclose()


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
    if not awaitables:
        return []
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


class _SharedCall:
    """``call()`` run once for all who ask while it runs; each gets its own copy of the
    answer, and one caller going away does not cancel it for the others."""

    def __init__(self, call: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._call = call
        self._running: asyncio.Future[dict[str, Any]] | None = None

    async def __call__(self) -> dict[str, Any]:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._call())
            self._running.add_done_callback(_retrieve)
        return dict(await asyncio.shield(self._running))


def _retrieve(task: asyncio.Future[Any]) -> None:
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
