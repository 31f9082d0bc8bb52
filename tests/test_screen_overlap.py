"""The two screens of a classification overlap: the output screen starts while the input
screen still runs. What is returned does not change: a result only when both passed, the
input's verdict read first (an unsafe or unanswered input is an input refusal even when its
output screen answered earlier), and an output screen still running at a refusal is
cancelled. The guard is the Ollama double, scripted per screen (one message = the input
screen, user + assistant = the output screen), reached through the real client."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from service.config import Settings
from service.core.errors import ContentBlocked
from service.core.pipeline import GuardedPipeline
from service.guard import GuardError, LlamaGuard
from service.models.registry import ModelRegistry
from tests.ollama_double import OllamaDouble

MODEL = "sentiment-cnn-int8"
TEXT = "A wonderful, moving film."


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(names=[MODEL])


@pytest.fixture
async def pipeline(
    guard_settings: Callable[..., Settings], registry: ModelRegistry
) -> AsyncIterator[GuardedPipeline]:
    settings = guard_settings(
        guard_retries=0, guard_cache_size=0, guard_timeout=5.0, default_model=MODEL
    )
    guard = LlamaGuard(settings)
    yield GuardedPipeline(registry, guard, settings)
    await guard.aclose()


class Script:
    """Per-screen answers; the input screen can wait until the output screen arrived (or
    answered), and the output screen can be held until released."""

    def __init__(self, input_answer: str, output_answer: str) -> None:
        self.input_answer = input_answer
        self.output_answer = output_answer
        self.output_arrived = threading.Event()
        self.output_answered = threading.Event()
        self.release_output = threading.Event()
        self.release_output.set()
        self.input_waits_for: threading.Event | None = None
        self.input_saw_output = False
        self.input_answered_at = 0.0
        self.output_answered_at = 0.0

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        if len(messages) == 1:  # the input screen
            if self.input_waits_for is not None:
                self.input_saw_output = self.input_waits_for.wait(4)
                time.sleep(0.2)  # and its verdict reaches the pipeline well after
            self.input_answered_at = time.monotonic()
            return self.input_answer
        self.output_arrived.set()
        self.release_output.wait(10)
        self.output_answered_at = time.monotonic()
        self.output_answered.set()
        return self.output_answer


async def test_the_output_screen_starts_while_the_input_screen_runs(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    script = Script("safe", "safe")
    script.input_waits_for = script.output_arrived  # held until the output screen arrives
    ollama_double.set_rules(script)
    outcome = await pipeline.classify([TEXT])
    # Screened one after the other, the input screen would have waited in vain.
    assert script.input_saw_output
    assert script.output_answered_at < script.input_answered_at
    [result] = outcome.results
    assert result.input_screen.passed and result.output_screen.passed
    assert outcome.timing.guard_ms < outcome.timing.total_ms + 1


async def test_unsafe_input_is_an_input_refusal_though_its_output_screen_answered_first(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    script = Script("unsafe\nS9", "unsafe\nS1")
    script.input_waits_for = script.output_answered
    ollama_double.set_rules(script)
    with pytest.raises(ContentBlocked) as refused:
        await pipeline.classify([TEXT])
    assert script.output_answered_at < script.input_answered_at
    assert refused.value.stage == "input"
    assert [c.code for c in refused.value.categories] == ["S9"]


async def test_an_unanswered_input_refuses_though_its_output_screen_passed_first(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    script = Script("I would rather not say", "safe")
    script.input_waits_for = script.output_answered
    ollama_double.set_rules(script)
    with pytest.raises(GuardError):
        await pipeline.classify([TEXT])
    assert script.output_answered_at < script.input_answered_at


async def test_an_unsafe_output_waits_for_the_input_verdict_then_refuses_as_output(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    script = Script("safe", "unsafe\nS1")
    script.input_waits_for = script.output_answered
    ollama_double.set_rules(script)
    with pytest.raises(ContentBlocked) as refused:
        await pipeline.classify([TEXT])
    assert refused.value.stage == "output"
    assert script.input_answered_at > 0  # the input verdict was in before the refusal


async def test_an_input_refusal_cancels_the_output_screen_still_running(
    pipeline: GuardedPipeline, ollama_double: OllamaDouble
) -> None:
    script = Script("unsafe\nS2", "safe")
    script.release_output.clear()  # the output screen hangs until released
    script.input_waits_for = script.output_arrived
    ollama_double.set_rules(script)
    try:
        started = time.monotonic()
        with pytest.raises(ContentBlocked) as refused:
            await pipeline.classify([TEXT])
        assert refused.value.stage == "input"
        # Refused without waiting for the output verdict, which has not been given.
        assert not script.output_answered.is_set()
        assert time.monotonic() - started < 4
    finally:
        script.release_output.set()


def test_a_follow_up_screen_has_its_own_places_and_never_crowds_out_a_new_request() -> None:
    from service.guard.admission import Admission

    admission = Admission(concurrency=1, queue=1, caller_share=1.0)
    assert admission.enter("a") is None and admission.enter("b") is None
    assert admission.enter("c") is not None  # first screens: the queue is full
    # The admitted requests' output screens still get places...
    assert admission.enter("a", follow_up=True) is None
    assert admission.enter("b", follow_up=True) is None
    assert admission.enter("a", follow_up=True) is not None  # ...bounded by the capacity
    admission.leave("a")
    # ...and do not count against a new request's first screen.
    assert admission.enter("c") is None
    assert admission.held == 4
    for who, following in (("b", False), ("c", False), ("a", True), ("b", True)):
        admission.leave(who, following)
    assert admission.held == 0
