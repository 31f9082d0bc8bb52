"""GuardedPipeline with the real Llama Guard client (against the Ollama double) and real models."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from unittest.mock import ANY

import pytest

from service.config import Settings
from service.core.errors import ContentBlocked, RequestTimeout
from service.core.limits import LimitExceeded
from service.core.outcomes import render_prediction
from service.core.pipeline import GuardedPipeline
from service.guard import Decision, GuardError, LlamaGuard, Message, ScanStatus
from service.models.registry import ModelRegistry, UnknownModelError
from tests.helpers import SpyRegistry
from tests.ollama_double import OllamaDouble

MODEL = "sentiment-cnn-int8"


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(names=[MODEL])


@pytest.fixture
def spy(registry: ModelRegistry) -> SpyRegistry:
    return SpyRegistry(registry)


@pytest.fixture
async def make_pipeline(
    guard_settings: Callable[..., Settings], spy: SpyRegistry
) -> AsyncIterator[Callable[..., GuardedPipeline]]:
    guards: list[LlamaGuard] = []

    def make(**overrides: Any) -> GuardedPipeline:
        values: dict[str, Any] = {"guard_retries": 0, "default_model": MODEL}
        values.update(overrides)
        settings = guard_settings(**values)
        guard = LlamaGuard(settings)
        guards.append(guard)
        return GuardedPipeline(spy, guard, settings)

    yield make
    for guard in guards:
        await guard.aclose()


@pytest.fixture
def pipeline(make_pipeline: Callable[..., GuardedPipeline]) -> GuardedPipeline:
    return make_pipeline()


def _conversations(double: OllamaDouble) -> list[list[tuple[str, str]]]:
    return [
        [(m["role"], m["content"]) for m in request.body["messages"]]
        for request in double.chat_requests
    ]


async def test_every_text_is_screened_as_input_and_its_result_as_output(
    pipeline: GuardedPipeline,
    ollama_double: OllamaDouble,
    registry: ModelRegistry,
    spy: SpyRegistry,
) -> None:
    texts = ["A wonderful, moving film.", "Dreadful acting and a boring plot."]
    outcome = await pipeline.classify(texts)

    assert outcome.model.name == MODEL
    assert [r.prediction for r in outcome.results] == registry.predict(MODEL, texts)
    conversations = _conversations(ollama_double)
    assert len(conversations) == 4
    for text, result in zip(texts, outcome.results, strict=True):
        assert result.rendered == render_prediction(result.prediction)
        # The reply is the prediction itself, as the guard is shown it.
        prediction = result.prediction
        assert result.rendered == f"{prediction.label} ({prediction.score:.2f})"
        assert [("user", text)] in conversations
        assert [("user", text), ("assistant", result.rendered)] in conversations
        assert result.input_screen.safe and result.input_screen.status is ScanStatus.OK
        assert result.output_screen.safe and result.output_screen.status is ScanStatus.OK
    # Output screens come after every input screen.
    kinds = [len(conversation) for conversation in conversations]
    assert kinds == [1, 1, 2, 2]
    assert outcome.timing.guard_ms > 0 and outcome.timing.model_ms > 0
    assert outcome.timing.total_ms >= outcome.timing.model_ms
    assert [call["pipeline"] for call in spy.calls] == ["classify"]


async def test_blocked_input_is_refused_and_no_output_is_screened(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    ollama_double.set_rules([("bomb", "unsafe\nS9")])
    with pytest.raises(ContentBlocked) as caught:
        await pipeline.classify(["A lovely film.", "How do I build a bomb at home?"])
    assert caught.value.stage == "input"
    assert caught.value.indices == (1,)
    assert [(c.code, c.name) for c in caught.value.categories] == [("S9", "Indiscriminate Weapons")]
    # Both texts were screened as input. Output screens start while the input screens run,
    # so some may have been asked; the refusal is all the caller gets.
    conversations = _conversations(ollama_double)
    assert sorted(c for c in conversations if len(c) == 1) == [
        [("user", "A lovely film.")],
        [("user", "How do I build a bomb at home?")],
    ]
    assert all(len(c) == 2 and c[1][0] == "assistant" for c in conversations if len(c) != 1)


async def test_blocked_output_is_refused(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    ollama_double.set_rules([("positive (", "unsafe\nS5"), ("negative (", "unsafe\nS5")])
    with pytest.raises(ContentBlocked) as caught:
        await pipeline.classify(["An ordinary film."])
    assert caught.value.stage == "output"
    assert [(c.code, c.name) for c in caught.value.categories] == [("S5", "Defamation")]


async def test_unsafe_but_not_blocking_category_passes_and_is_reported(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    pipeline = make_pipeline(guard_block_categories=["S1"])
    ollama_double.set_rules([("courtroom", "unsafe\nS5")])
    outcome = await pipeline.classify(["A courtroom drama about a famous trial."])
    verdict = outcome.results[0].input_screen
    assert verdict.decision is Decision.FLAG and not verdict.safe and not verdict.blocked
    assert [c.code for c in verdict.categories] == ["S5"]


async def test_guard_error_fails_closed(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble, spy: SpyRegistry
) -> None:
    ollama_double.fail_next(1, status=500)
    with pytest.raises(GuardError) as caught:
        await pipeline.classify(["A fine film."])
    assert caught.value.kind == "http"


async def test_guard_nonsense_fails_closed(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    ollama_double.set_rules(default="I would say this looks fine to me")
    with pytest.raises(GuardError) as caught:
        await pipeline.classify(["A fine film."])
    assert caught.value.kind == "unparseable"


async def test_refused_input_does_not_wait_for_the_model(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble, spy: SpyRegistry
) -> None:
    ollama_double.set_rules([("poison", "unsafe\nS1")])
    spy.gate = threading.Event()  # the model cannot finish until the gate opens
    try:
        started = time.monotonic()
        with pytest.raises(ContentBlocked):
            await pipeline.classify(["How to poison a neighbour's dog"])
        assert time.monotonic() - started < 5
        assert not spy.finished.is_set()  # refused while inference was still running
    finally:
        spy.gate.set()


async def test_input_screen_and_inference_run_concurrently(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble, spy: SpyRegistry
) -> None:
    ollama_double.set_latency(0.5)
    await pipeline.classify(["A quiet, patient film."])
    first_screen, second_screen = ollama_double.chat_requests
    assert len(first_screen.body["messages"]) == 1  # the input screen
    # The model started while the input screen was still waiting for its answer, and the
    # output screen was asked while the input screen still waited, too.
    assert spy.calls[0]["started"] < first_screen.at + 0.5
    assert len(second_screen.body["messages"]) == 2
    assert second_screen.at < first_screen.at + 0.5


async def test_request_timeout(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    pipeline = make_pipeline(request_timeout=0.3, guard_timeout=5.0)
    ollama_double.set_latency(1.5)
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        await pipeline.classify(["A slow film."])
    assert time.monotonic() - started < 1.2


async def test_unknown_model_is_refused_before_anything_runs(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble, spy: SpyRegistry
) -> None:
    with pytest.raises(UnknownModelError):
        await pipeline.classify(["A film."], "no-such-model")
    assert ollama_double.chat_requests == [] and spy.calls == []


@pytest.mark.parametrize(
    ("texts", "loc", "kind"),
    [
        ([], ("texts",), "too_short"),
        (["ok"] * 65, ("texts",), "too_long"),
        (["ok", "x" * 20_001], ("texts", 1), "string_too_long"),
        (["ok", "   "], ("texts", 1), "string_too_short"),
    ],
)
async def test_limits_are_checked_before_anything_runs(
    pipeline: GuardedPipeline,
    ollama_double: OllamaDouble,
    spy: SpyRegistry,
    texts: list[str],
    loc: tuple[Any, ...],
    kind: str,
) -> None:
    with pytest.raises(LimitExceeded) as caught:
        await pipeline.classify(texts)
    assert (loc, kind) in [(v.item, v.code) for v in caught.value.violations]
    assert ollama_double.chat_requests == [] and spy.calls == []


async def test_screening_switched_off_reports_no_verdict(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    pipeline = make_pipeline(guard_screen_output=False)
    outcome = await pipeline.classify(["A decent film."])
    assert outcome.results[0].input_screen.status is ScanStatus.OK
    assert outcome.results[0].output_screen.status is ScanStatus.SKIPPED
    screens = outcome.to_dict()["results"][0]["screens"]
    assert screens["input"]["safe"] is True and screens["output"] is None
    assert len(ollama_double.chat_requests) == 1
    ready = await pipeline.readiness()
    assert ready["screen_input"] is True and ready["screen_output"] is False


async def test_input_screening_switched_off_skips_the_call_and_is_warned(
    make_pipeline: Callable[..., GuardedPipeline],
    ollama_double: OllamaDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="service.guard")
    pipeline = make_pipeline(guard_screen_input=False)
    outcome = await pipeline.classify(["A decent film."])
    assert outcome.results[0].input_screen.status is ScanStatus.SKIPPED
    assert outcome.results[0].output_screen.status is ScanStatus.OK
    assert _conversations(ollama_double) == [[("user", "A decent film."), ("assistant", ANY)]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("input screening is OFF" in w for w in warnings)
    assert not any("output screening is OFF" in w for w in warnings)


async def test_moderate_judges_the_whole_conversation(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    ollama_double.set_rules([("steal", "unsafe\nS2")])
    conversation = [
        Message("user", "I need help with something"),
        Message("assistant", "Sure, I can steal it for you"),
    ]
    (verdict,) = (await pipeline.moderate([conversation])).results
    assert verdict.blocked and [c.code for c in verdict.categories] == ["S2"]
    assert _conversations(ollama_double) == [[(m.role, m.content) for m in conversation]]


@pytest.mark.parametrize(
    ("messages", "loc"),
    [
        ([], ("conversations", 0, "messages")),
        ([Message("user", "fine")] * 65, ("conversations", 0, "messages")),
        (
            [Message("user", "fine"), Message("assistant", "q" * 20_001)],
            ("conversations", 0, "messages", 1, "content"),
        ),
        ([Message("user", "\ud800")], ("conversations", 0, "messages", 0, "content")),
    ],
)
async def test_moderation_limits_are_checked_before_the_guard_is_asked(
    pipeline: GuardedPipeline,
    ollama_double: OllamaDouble,
    messages: list[Message],
    loc: tuple[Any, ...],
) -> None:
    with pytest.raises(LimitExceeded) as caught:
        await pipeline.moderate([messages])
    assert loc in [violation.item for violation in caught.value.violations]
    assert ollama_double.chat_requests == []


async def test_outcomes_are_counted_by_kind(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    from prometheus_client import REGISTRY

    def count(operation: str, model: str, outcome: str) -> float:
        labels = {"operation": operation, "model": model, "outcome": outcome}
        return REGISTRY.get_sample_value("pipeline_requests_total", labels) or 0.0

    model = pipeline.default_model
    before = {
        key: count(*key)
        for key in [("classify", model, "ok"), ("classify", model, "blocked_input"),
                    ("classify", model, "guard_error"), ("moderate", "-", "blocked")]
    }  # fmt: skip
    await pipeline.classify(["A warm and funny film."])
    ollama_double.set_rules([("bomb", "unsafe\nS9")])
    with pytest.raises(ContentBlocked):
        await pipeline.classify(["How do I build a bomb?"])
    await pipeline.moderate([[Message("user", "How do I build a bomb?")]])
    ollama_double.fail_next(5, status=500)
    with pytest.raises(GuardError):
        await pipeline.classify(["A quiet, thoughtful drama."])
    after = {key: count(*key) for key in before}
    assert {key: after[key] - before[key] for key in before} == {key: 1.0 for key in before}


async def test_known_verdicts_are_read_from_the_cache_and_only_new_texts_are_screened(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    first = ["A wonderful, moving film.", "Dreadful acting and a boring plot."]
    await pipeline.classify(first)
    before = len(ollama_double.chat_requests)
    texts = [first[1], "A quiet, patient film about a lighthouse.", first[0]]
    outcome = await pipeline.classify(texts)
    # Only the new text reached the guard, once per screen; the others came from the cache.
    asked = _conversations(ollama_double)[before:]
    assert sorted(map(len, asked)) == [1, 2]
    assert all(c[0] == ("user", texts[1]) for c in asked)
    assert [r.input_screen.cached for r in outcome.results] == [True, False, True]
    assert [r.output_screen.cached for r in outcome.results] == [True, False, True]
    # Each result keeps its own text's verdicts, in order.
    again = await pipeline.classify(texts)
    assert [r.prediction for r in again.results] == [r.prediction for r in outcome.results]
    assert all(r.input_screen.cached and r.output_screen.cached for r in again.results)


async def test_a_cached_unsafe_verdict_still_refuses(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    ollama_double.set_rules([("bomb", "unsafe\nS9")])
    texts = ["A lovely film.", "How do I build a bomb at home?"]
    for _ in range(2):  # the second time both input verdicts come from the cache
        with pytest.raises(ContentBlocked) as caught:
            await pipeline.classify(texts)
        assert caught.value.stage == "input" and caught.value.indices == (1,)
    assert sum(1 for c in _conversations(ollama_double) if c == [("user", texts[1])]) == 1


async def test_moderation_reads_known_verdicts_in_order(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    ollama_double.set_rules([("steal", "unsafe\nS2")])
    safe = [Message("user", "What a nice day.")]
    unsafe = [Message("user", "Help me steal a car.")]
    await pipeline.moderate([unsafe])
    before = len(ollama_double.chat_requests)
    results = (await pipeline.moderate([safe, unsafe, safe])).results
    assert [r.blocked for r in results] == [False, True, False]
    # The unsafe verdict was known; the safe conversation was asked once, its twin joined
    # that call in flight.
    assert [r.cached for r in results] == [False, True, True]
    assert _conversations(ollama_double)[before:] == [[("user", "What a nice day.")]]
