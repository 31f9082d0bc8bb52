"""Guarded chat in the core: the conversation is screened before generation, the streamed reply
is held back and released only in chunks whose screen passed, an unsafe chunk stops the reply
with content_filter, a guard failure ends it with the guard's error, and nothing unscreened is
ever released. The real Llama Guard client and chat model client, over loopback to the Ollama
double, through the real ``ollama`` package."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from service.chat.model import ChatModel
from service.chat.types import ChatDelta, ChatEnd, ChatEvent, ChatMessage
from service.config import Settings
from service.core.errors import ChatUnavailable, ContentBlocked, RequestTimeout
from service.core.limits import LimitExceeded
from service.core.pipeline import GuardedPipeline
from service.guard import GuardError, LlamaGuard
from service.models.registry import ModelRegistry
from tests.helpers import judge_failing_past
from tests.ollama_double import OllamaDouble

REPLY = (
    "Sourdough needs a starter. Feed it flour and water daily. Mix the dough, let it rise "
    "overnight, shape it, and bake it hot. FORBIDDEN words come later in this reply, after "
    "the first chunks. The crust should be dark and crisp."
)
WORDS = REPLY.split()


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(names=["sentiment-cnn-int8"])


@pytest.fixture
async def make_pipeline(
    guard_settings: Callable[..., Settings], registry: ModelRegistry
) -> AsyncIterator[Callable[..., GuardedPipeline]]:
    made: list[GuardedPipeline] = []
    guards: list[LlamaGuard] = []

    def make(**overrides: Any) -> GuardedPipeline:
        values: dict[str, Any] = {
            "guard_retries": 0,
            "guard_cache_size": 0,
            "default_model": "sentiment-cnn-int8",
            "chat_model": "llama3.2:1b",
            "chat_chunk_tokens": 4,
        }
        settings = guard_settings(**{**values, **overrides})
        guard = LlamaGuard(settings)
        pipeline = GuardedPipeline(registry, guard, settings, ChatModel(settings))
        guards.append(guard)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        await pipeline.aclose()
    for guard in guards:
        await guard.aclose()


def _ask(text: str) -> list[ChatMessage]:
    return [ChatMessage("system", "You are a baker."), ChatMessage("user", text)]


async def _collect(pipeline: GuardedPipeline, text: str, **kw: Any) -> list[ChatEvent]:
    _, reply = await pipeline.chat(_ask(text), **kw)
    return [event async for event in reply]


async def test_a_safe_reply_streams_in_screened_chunks(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    ollama_double.set_replies(None, default=REPLY.replace("FORBIDDEN", "Fine"))
    events = await _collect(make_pipeline(), "How do I bake bread?")
    deltas = [e.text for e in events if isinstance(e, ChatDelta)]
    end = events[-1]
    assert isinstance(end, ChatEnd) and end.finish_reason == "stop"
    assert "".join(deltas) == REPLY.replace("FORBIDDEN", "Fine")
    assert all(len(d.split()) <= 4 for d in deltas)
    screens = ollama_double.chat_requests
    # One input screen of the conversation, then one per chunk, each of the reply so far.
    assert len(screens) == 1 + len(deltas) == 1 + end.guard_calls
    assert [m["role"] for m in screens[0].body["messages"]] == ["user", "user"]
    # (Screens overlap generation, so they may reach the guard out of order.)
    screened = sorted(s.body["messages"][-1]["content"] for s in screens[1:])
    prefixes = ["".join(deltas[: i + 1]) for i in range(len(deltas))]
    assert screened == sorted(prefixes)
    assert all(s.body["messages"][-1]["role"] == "assistant" for s in screens[1:])
    (generation,) = ollama_double.generation_requests
    assert generation.body["stream"] is True and generation.body["model"] == "llama3.2:1b"
    assert generation.body["messages"][0] == {"role": "system", "content": "You are a baker."}


async def test_sentence_chunks_end_at_a_sentence_once_they_hold_a_quarter_of_the_tokens(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    reply = "Yes. No. Sure thing. Fine. Maybe later, friend. " + " ".join(["on"] * 10) + "."
    ollama_double.set_replies(None, default=reply)
    pipeline = make_pipeline(chat_chunk="sentences", chat_chunk_tokens=8)  # at least 2 pieces
    events = await _collect(pipeline, "Well?")
    deltas = [e.text for e in events if isinstance(e, ChatDelta)]
    # A one-word sentence does not make a chunk of its own; a long one is cut at 8 pieces.
    assert [d.strip() for d in deltas] == [
        "Yes. No.",
        "Sure thing.",
        "Fine. Maybe later, friend.",
        " ".join(["on"] * 8),
        "on on.",
    ]
    end = events[-1]
    assert isinstance(end, ChatEnd) and end.guard_calls == len(deltas)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 64])
async def test_no_piece_is_released_before_the_screen_that_covers_it(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble, chunk: int
) -> None:
    # Every screen is slow, and the guard records when it answered; a piece may only come
    # out after the answer of the screen whose reply-so-far contains it.
    answered: list[tuple[str, float]] = []

    def judge(messages: list[dict[str, Any]]) -> str:
        time.sleep(0.02)
        if messages[-1]["role"] == "assistant":
            answered.append((messages[-1]["content"], time.monotonic()))
        return "unsafe\nS1" if "FORBIDDEN" in messages[-1]["content"] else "safe"

    ollama_double.set_rules(judge)
    ollama_double.set_replies(None, default=REPLY)
    _, reply = await make_pipeline(chat_chunk_tokens=chunk).chat(_ask("Bread?"))
    released = ""
    async for event in reply:
        if isinstance(event, ChatDelta):
            released += event.text
            now = time.monotonic()
            covering = [at for text, at in answered if text.startswith(released)]
            assert covering and min(covering) <= now, f"released {released!r} unscreened"
        else:
            assert event.finish_reason == "content_filter"
            assert [c.code for c in event.categories] == ["S1"]
    assert "FORBIDDEN" not in released
    # Everything before the unsafe chunk was released; the chunk itself was not.
    forbidden_at = WORDS.index("FORBIDDEN")
    assert len(released.split()) == (forbidden_at // chunk) * chunk


async def test_an_unsafe_chunk_stops_generation(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    ollama_double.set_rules([("FORBIDDEN", "unsafe\nS9")])
    ollama_double.set_replies(None, default=REPLY)
    ollama_double.set_token_delay(0.02)
    events = await _collect(make_pipeline(), "Bread?")
    end = events[-1]
    assert isinstance(end, ChatEnd) and end.finish_reason == "content_filter"
    assert end.guard_dict() == {
        "stage": "output",
        "categories": [{"code": "S9", "name": "Indiscriminate Weapons"}],
    }
    # The stream was cut: the double saw the client go away before its last token.
    await asyncio.sleep(0.3)
    assert ollama_double.client_disconnects >= 1


async def test_a_blocked_conversation_is_refused_before_generation(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    ollama_double.set_rules([("bomb", "unsafe\nS9")])
    with pytest.raises(ContentBlocked) as caught:
        await make_pipeline().chat(_ask("How do I build a bomb?"))
    assert caught.value.stage == "input"
    assert ollama_double.generation_requests == []


async def test_a_guard_failure_mid_reply_ends_it_with_the_guard_error(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    ollama_double.set_replies(None, default=REPLY)
    ollama_double.set_rules(judge_failing_past(4))  # the first chunk, "Sourdough needs a starter."
    _, reply = await make_pipeline().chat(_ask("Bread?"))
    released = []
    with pytest.raises(GuardError) as caught:
        async for event in reply:
            assert isinstance(event, ChatDelta)
            released.append(event.text)
    assert caught.value.kind == "unparseable"
    assert len(released) == 1  # only the chunk whose screen passed


async def test_a_model_that_drops_mid_reply_ends_it_with_the_model_error(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    ollama_double.set_replies(None, default=REPLY)
    ollama_double.break_stream_after(10)
    _, reply = await make_pipeline().chat(_ask("Bread?"))
    released = ""
    with pytest.raises(ChatUnavailable) as caught:
        async for event in reply:
            assert isinstance(event, ChatDelta)
            released += event.text
    assert caught.value.kind == "connection"
    assert len(released.split()) <= 10


async def test_max_tokens_is_capped_and_ends_with_length(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    ollama_double.set_replies(None, default=REPLY.replace("FORBIDDEN", "Fine"))
    events = await _collect(make_pipeline(chat_max_tokens=6), "Bread?", max_tokens=1000)
    (generation,) = ollama_double.generation_requests
    assert generation.body["options"]["num_predict"] == 6
    end = events[-1]
    assert isinstance(end, ChatEnd) and end.finish_reason == "length"
    released = "".join(e.text for e in events if isinstance(e, ChatDelta))
    assert len(released.split()) == 6


async def test_the_whole_reply_is_screened_once_without_streaming(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    ollama_double.set_replies(None, default=REPLY)
    ollama_double.set_rules([("FORBIDDEN", "unsafe\nS9")])
    blocked = await make_pipeline().chat_complete(_ask("Bread?"))
    assert blocked.text == "" and blocked.end.finish_reason == "content_filter"
    assert len(ollama_double.chat_requests) == 2  # input, then the whole reply
    ollama_double.reset()
    ollama_double.set_replies(None, default="Knead, rise, bake.")
    fine = await make_pipeline().chat_complete(_ask("Bread?"))
    assert fine.text == "Knead, rise, bake." and fine.end.finish_reason == "stop"


async def test_a_replys_chunk_screens_are_follow_ups_a_full_queue_does_not_refuse(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    # One place per caller for first screens: the input screen takes it. The chunks' screens
    # overlap (all start while the first still runs); as first screens, the second would be
    # refused and the reply cut off. As follow-ups they have places of their own.
    reply = "one two three four five six seven eight"
    ollama_double.set_replies(None, default=reply)
    ollama_double.set_latency(0.2)
    pipeline = make_pipeline(guard_concurrency=2, guard_queue=0, guard_caller_share=0.5)
    events = await _collect(pipeline, "Count to eight.")
    end = events[-1]
    assert isinstance(end, ChatEnd) and end.finish_reason == "stop", end
    assert "".join(e.text for e in events if isinstance(e, ChatDelta)) == reply
    assert end.guard_calls == 2


async def test_the_whole_replys_screen_ends_at_the_request_timeout(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    ollama_double.set_replies(None, default="Knead, rise, bake.")

    def slow_on_replies(messages: list[dict[str, Any]]) -> str:
        if messages and messages[-1].get("role") == "assistant":
            time.sleep(2.0)  # the reply's screen, well past the request's deadline
        return "safe"

    ollama_double.set_rules(slow_on_replies)
    pipeline = make_pipeline(request_timeout=0.5, guard_timeout=5.0)
    started = time.perf_counter()
    with pytest.raises(RequestTimeout):
        await pipeline.chat_complete(_ask("Bread?"))
    assert time.perf_counter() - started < 1.8


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ([ChatMessage("assistant", "Hi")], ("messages", 0, "role")),
        ([ChatMessage("user", "x" * 20_001)], ("messages", 0, "content")),
        ([ChatMessage("user", "hi")] * 65, ("messages",)),
        ([ChatMessage("user", "   ")], ("messages", 0, "content")),
    ],
)
async def test_conversation_limits_are_checked_before_anything_runs(
    make_pipeline: Callable[..., GuardedPipeline],
    ollama_double: OllamaDouble,
    messages: list[ChatMessage],
    where: tuple[Any, ...],
) -> None:
    with pytest.raises(LimitExceeded) as caught:
        await make_pipeline().chat(messages)
    assert where in [violation.item for violation in caught.value.violations]
    assert ollama_double.requests == []


async def test_chat_switched_off_is_refused(
    make_pipeline: Callable[..., GuardedPipeline], ollama_double: OllamaDouble
) -> None:
    with pytest.raises(ChatUnavailable) as caught:
        await make_pipeline(chat_model="").chat(_ask("Hello"))
    assert caught.value.kind == "disabled" and caught.value.retry_after is None
