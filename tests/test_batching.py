"""The micro-batcher: combining, size and wait bounds, errors, cancellation, shutdown, and
equality of batched and single predictions for every shipped model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from service.config import Settings
from service.core.pipeline import GuardedPipeline
from service.guard import LlamaGuard
from service.models.artifacts import NAMES
from service.models.batching import Batcher, BatcherClosed
from service.models.registry import ModelRegistry, Prediction
from tests.helpers import SpyRegistry
from tests.ollama_double import OllamaDouble


class GatedForward:
    """A forward that records each batch and can hold a batch until its gate opens."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()  # set when a forward starts
        self.gate = threading.Event()  # forwards wait for it while hold is True
        self.gate.set()
        self.fail_on = fail_on

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()

    def __call__(self, texts: list[str]) -> list[str]:
        self.batches.append(list(texts))
        self.entered.set()
        self.gate.wait(10)
        if self.fail_on is not None and self.fail_on in texts:
            raise ValueError(f"cannot classify {self.fail_on!r}")
        return [text.upper() for text in texts]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(5000):  # polls a thread-side or queue-side condition, at most ~5 s
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


async def _start_blocked(batcher: Batcher[str, str], forward: GatedForward) -> asyncio.Task[Any]:
    """Submit one call whose forward is then running and held at the gate."""
    forward.hold()
    first = asyncio.create_task(batcher.submit(["first"]))
    await _until(forward.entered.is_set)
    return first


async def _queue(batcher: Batcher[str, str], calls: Sequence[list[str]]) -> list[asyncio.Task[Any]]:
    expected = batcher.queued_texts + sum(len(call) for call in calls)
    tasks = [asyncio.create_task(batcher.submit(call)) for call in calls]
    await _until(lambda: batcher.queued_texts == expected)
    return tasks


async def test_concurrent_calls_share_one_forward_and_get_their_own_slices() -> None:
    forward = GatedForward()
    batcher = Batcher(forward, max_texts=64, max_wait=0)
    first = await _start_blocked(batcher, forward)
    waiting = await _queue(batcher, [["a"], ["b", "c"], ["d"]])
    forward.gate.set()
    assert await first == ["FIRST"]
    assert await asyncio.gather(*waiting) == [["A"], ["B", "C"], ["D"]]
    assert forward.batches == [["first"], ["a", "b", "c", "d"]]
    assert batcher.forwards == 2


async def test_calls_submitted_together_run_as_one_forward() -> None:
    forward = GatedForward()
    batcher = Batcher(forward, max_texts=64, max_wait=0)
    answers = await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(10)))
    assert answers == [[f"T{i}"] for i in range(10)]
    assert forward.batches == [[f"t{i}" for i in range(10)]]


async def test_a_forward_never_exceeds_max_texts_and_calls_are_never_split() -> None:
    forward = GatedForward()
    batcher = Batcher(forward, max_texts=4, max_wait=0)
    first = await _start_blocked(batcher, forward)
    sizes = [2, 2, 1, 3, 6, 1]
    calls = [[f"c{i}-{j}" for j in range(n)] for i, n in enumerate(sizes)]
    waiting = await _queue(batcher, calls)
    forward.gate.set()
    await first
    answers = await asyncio.gather(*waiting)
    assert answers == [[text.upper() for text in call] for call in calls]
    # In arrival order: [2+2], [1+3], the oversized call alone, then the last one.
    assert [len(batch) for batch in forward.batches] == [1, 4, 4, 6, 1]
    assert forward.batches[1:] == [
        calls[0] + calls[1], calls[2] + calls[3], calls[4], calls[5]
    ]  # fmt: skip


async def test_a_busy_worker_waits_for_more_calls_within_max_wait() -> None:
    forward = GatedForward()
    # A wait bound far longer than the test: only reaching max_texts can end the wait.
    batcher = Batcher(forward, max_texts=3, max_wait=60.0)
    first = await _start_blocked(batcher, forward)
    (a,) = await _queue(batcher, [["a"]])  # arrives while a forward runs: a busy spell
    forward.gate.set()
    assert await first == ["FIRST"]
    for _ in range(20):  # the worker now waits for more than the one queued text
        await asyncio.sleep(0)
    assert forward.batches == [["first"]] and not a.done()
    rest = asyncio.create_task(batcher.submit(["b", "c"]))
    async with asyncio.timeout(5):
        assert await a == ["A"] and await rest == ["B", "C"]
    assert forward.batches == [["first"], ["a", "b", "c"]]


async def test_the_wait_is_bounded() -> None:
    forward = GatedForward()
    batcher = Batcher(forward, max_texts=64, max_wait=0.005)
    first = await _start_blocked(batcher, forward)
    (a,) = await _queue(batcher, [["a"]])
    forward.gate.set()
    async with asyncio.timeout(5):  # would hang if the wait ignored its bound
        assert await first == ["FIRST"] and await a == ["A"]
    assert forward.batches == [["first"], ["a"]]


async def test_the_first_call_after_an_idle_spell_does_not_wait() -> None:
    forward = GatedForward()
    batcher = Batcher(forward, max_texts=64, max_wait=60.0)
    async with asyncio.timeout(5):  # would take 60 s if a lone call waited for company
        assert await batcher.submit(["alone"]) == ["ALONE"]
        assert await batcher.submit(["again"]) == ["AGAIN"]
    assert forward.batches == [["alone"], ["again"]]


async def test_without_waiting_a_lone_call_runs_at_once() -> None:
    forward = GatedForward()
    batcher = Batcher(forward, max_texts=64, max_wait=0)
    first = await _start_blocked(batcher, forward)  # started without a second call
    assert forward.batches == [["first"]]
    forward.gate.set()
    assert await first == ["FIRST"]


async def test_a_forward_error_reaches_every_caller_of_that_batch() -> None:
    forward = GatedForward(fail_on="bad")
    batcher = Batcher(forward, max_texts=64, max_wait=0)
    first = await _start_blocked(batcher, forward)
    waiting = await _queue(batcher, [["x"], ["bad"], ["y", "z"]])
    forward.gate.set()
    assert await first == ["FIRST"]
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, ValueError) and "bad" in str(r) for r in results)
    # The batcher keeps working after a failed forward.
    assert await batcher.submit(["after"]) == ["AFTER"]


async def test_a_wrong_number_of_results_is_an_error_for_the_batch() -> None:
    batcher: Batcher[str, str] = Batcher(lambda texts: texts[:-1], max_texts=64, max_wait=0)
    results = await asyncio.gather(
        batcher.submit(["a"]), batcher.submit(["b"]), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) and "1 results for 2" in str(r) for r in results)


async def test_a_cancelled_waiting_caller_is_dropped_without_harming_the_others() -> None:
    forward = GatedForward()
    batcher = Batcher(forward, max_texts=64, max_wait=0)
    first = await _start_blocked(batcher, forward)
    keep1, gone, keep2 = await _queue(batcher, [["k1"], ["gone"], ["k2"]])
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    forward.gate.set()
    assert await first == ["FIRST"]
    assert await keep1 == ["K1"] and await keep2 == ["K2"]
    assert gone.cancelled()
    assert forward.batches == [["first"], ["k1", "k2"]]  # the cancelled texts never ran


async def test_cancelling_a_caller_during_its_forward_leaves_the_batch_running() -> None:
    forward = GatedForward()
    batcher = Batcher(forward, max_texts=64, max_wait=0)
    first = await _start_blocked(batcher, forward)
    gone, kept = await _queue(batcher, [["gone"], ["kept"]])
    forward.gate.set()
    await first
    forward.hold()  # the second forward (gone + kept) holds at the gate
    await _until(lambda: len(forward.batches) == 2)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    forward.gate.set()
    assert await kept == ["KEPT"]
    assert gone.cancelled() and forward.batches[1] == ["gone", "kept"]


async def test_close_fails_running_and_queued_calls_and_refuses_new_ones() -> None:
    forward = GatedForward()
    batcher = Batcher(forward, max_texts=64, max_wait=0)
    try:
        first = await _start_blocked(batcher, forward)
        (queued,) = await _queue(batcher, [["queued"]])
        async with asyncio.timeout(5):
            await batcher.aclose()
            results = await asyncio.gather(first, queued, return_exceptions=True)
        assert all(isinstance(r, BatcherClosed) for r in results)
        assert batcher.closed and batcher.queued_texts == 0
        with pytest.raises(BatcherClosed):
            await batcher.submit(["late"])
        await batcher.aclose()  # idempotent
    finally:
        forward.gate.set()


async def test_an_idle_batcher_holds_no_worker() -> None:
    forward = GatedForward()
    batcher = Batcher(forward, max_texts=64, max_wait=0)
    assert await batcher.submit(["a"]) == ["A"]
    await _until(lambda: batcher._worker is None or batcher._worker.done())
    assert await batcher.submit(["b"]) == ["B"]  # a new worker starts on demand
    await batcher.aclose()


def test_bounds_are_validated() -> None:
    with pytest.raises(ValueError):
        Batcher(lambda texts: texts, max_texts=0)
    with pytest.raises(ValueError):
        Batcher(lambda texts: texts, max_wait=-1)


# --- real models ------------------------------------------------------------------------

TEXTS = [
    "A wonderful, moving film with superb acting.",
    "Dreadful. Two hours I will never get back.",
    "The plot was thin but the photography was gorgeous.",
    "I laughed, I cried, I loved every minute of it!",
    "Boring, predictable and far too long.",
    "Not the best, not the worst.",
    "<br />An absolute masterpiece of modern cinema.<br />",
    "The worst sequel ever made; avoid at all costs.",
    "x",
    "Great cast, terrible script, forgettable music, a lovely ending. " * 30,
    "Ça m'a beaucoup plu, vraiment superbe.",
    "Meh.",
]


@pytest.fixture(scope="module")
def all_models() -> ModelRegistry:
    return ModelRegistry.load()


@pytest.mark.parametrize("name", NAMES)
async def test_batched_predictions_equal_single_predictions(
    all_models: ModelRegistry, name: str
) -> None:
    assert name in all_models.names()
    single = [all_models.predict(name, [text])[0] for text in TEXTS]
    forwards: list[int] = []

    def forward(texts: list[str]) -> list[Prediction]:
        forwards.append(len(texts))
        return all_models.predict(name, texts)

    batcher = Batcher(forward, max_texts=64, max_wait=0)
    calls = [[text] for text in TEXTS] + [TEXTS[2:7], TEXTS[::-1]]
    answers = await asyncio.gather(*(batcher.submit(call) for call in calls))
    assert forwards == [sum(len(call) for call in calls)]  # all in one forward pass
    expected = {text: prediction for text, prediction in zip(TEXTS, single, strict=True)}
    for call, answer in zip(calls, answers, strict=True):
        for text, prediction in zip(call, answer, strict=True):
            want = expected[text]
            assert prediction.label == want.label
            assert prediction.score == pytest.approx(want.score, rel=0, abs=1e-5)
            for label, p in want.probabilities.items():
                assert prediction.probabilities[label] == pytest.approx(p, rel=0, abs=1e-5)


# --- through the pipeline ---------------------------------------------------------------


@pytest.fixture
async def counted_pipeline(
    guard_settings: Callable[..., Settings], all_models: ModelRegistry
) -> AsyncIterator[tuple[GuardedPipeline, SpyRegistry]]:
    settings = guard_settings(
        guard_retries=0, default_model="sentiment-cnn-int8", batch_max_wait_ms=0
    )
    guard = LlamaGuard(settings)
    registry = SpyRegistry(all_models)
    pipeline = GuardedPipeline(registry, guard, settings)  # type: ignore[arg-type]
    yield pipeline, registry
    await pipeline.aclose()
    await guard.aclose()


async def test_concurrent_pipeline_calls_share_forward_passes(
    counted_pipeline: tuple[GuardedPipeline, SpyRegistry], ollama_double: OllamaDouble
) -> None:
    pipeline, registry = counted_pipeline
    texts = TEXTS[:8]
    outcomes = await asyncio.gather(*(pipeline.classify([text]) for text in texts))
    assert len(registry.batches) < len(texts)  # combined
    assert sorted(t for batch in registry.batches for t in batch) == sorted(texts)
    for text, outcome in zip(texts, outcomes, strict=True):
        (result,) = outcome.results
        want = registry.inner.predict("sentiment-cnn-int8", [text])[0]
        assert result.prediction.label == want.label
        assert result.prediction.score == pytest.approx(want.score, rel=0, abs=1e-5)
        assert result.output_screen.passed
        assert outcome.timing.model_ms > 0
