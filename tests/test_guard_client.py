"""The LlamaGuard through the real ollama client against the Ollama test double."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from service.config import Settings
from service.guard import Category, GuardError, LlamaGuard, Message
from service.guard.scanner import Decision, ScanResult, ScanStatus
from tests.helpers import screen_reply, screen_user
from tests.ollama_double import OllamaDouble

MakeSettings = Callable[..., Settings]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- what is sent -----------------------------------------------------------------------------


async def test_input_is_screened_as_the_users_message(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    async with LlamaGuard(guard_settings()) as guard:
        verdict = await screen_user(guard, "What a fine film.")
    assert verdict is not None and verdict.safe and not verdict.blocked
    [request] = ollama_double.chat_requests
    assert request.method == "POST"
    assert request.body["model"] == "llama-guard3:1b"
    assert request.body["messages"] == [{"role": "user", "content": "What a fine film."}]
    assert request.body["options"] == {"temperature": 0, "num_predict": 48, "num_ctx": 16_384}
    assert request.body["keep_alive"] == "30m"
    assert request.body["stream"] is False


async def test_output_is_screened_as_the_assistants_reply(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    async with LlamaGuard(guard_settings()) as guard:
        verdict = await screen_reply(guard, "Is it good?", "positive (0.97)")
        same = await guard.screen(
            [Message("user", "Is it good?"), Message("assistant", "positive (0.97)")]
        )
    assert verdict is not None and verdict.safe
    assert same.cached  # the identical conversation, so the same cache entry
    [request] = ollama_double.chat_requests
    assert request.body["messages"] == [
        {"role": "user", "content": "Is it good?"},
        {"role": "assistant", "content": "positive (0.97)"},
    ]


async def test_the_8b_model_works_by_configuration_alone(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_models(["llama-guard3:8b"])
    ollama_double.set_rules([("knife", "unsafe\nS1")])
    settings = guard_settings(
        guard_model="llama-guard3:8b",
        guard_num_predict=8,
        guard_keep_alive="-1",
        guard_num_ctx=8192,
    )
    async with LlamaGuard(settings) as guard:
        verdict = await screen_user(guard, "where do I buy a knife to hurt him")
        ready = await guard.readiness()
    assert verdict is not None and verdict.blocked and verdict.model == "llama-guard3:8b"
    assert ready["model_present"] and ready["model"] == "llama-guard3:8b"
    [request] = ollama_double.chat_requests
    assert request.body["model"] == "llama-guard3:8b"
    assert request.body["options"] == {"temperature": 0, "num_predict": 8, "num_ctx": 8192}
    assert request.body["keep_alive"] == -1  # a bare number is seconds for Ollama


async def test_invalid_conversations_are_rejected_before_any_call(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    async with LlamaGuard(guard_settings()) as guard:
        with pytest.raises(ValueError, match="empty"):
            await guard.screen([])
        with pytest.raises(ValueError, match="role"):
            await guard.screen([Message("system", "be nice")])  # type: ignore[arg-type]
    assert ollama_double.chat_requests == []


# --- verdicts ---------------------------------------------------------------------------------


S1_S10 = (Category("S1", "Violent Crimes"), Category("S10", "Hate"))


@pytest.mark.parametrize(
    ("answer", "safe", "blocked", "categories"),
    [
        ("safe", True, False, ()),
        ("unsafe\nS1,S10", False, True, S1_S10),
        ("  UNSAFE \n s1, s10 ", False, True, S1_S10),
    ],
)
async def test_each_verdict_form(
    ollama_double: OllamaDouble,
    guard_settings: MakeSettings,
    answer: str,
    safe: bool,
    blocked: bool,
    categories: tuple[Category, ...],
) -> None:
    ollama_double.set_rules(default=answer)
    async with LlamaGuard(guard_settings()) as guard:
        verdict = await screen_user(guard, "some text")
    assert verdict is not None
    assert (verdict.safe, verdict.blocked, verdict.categories) == (safe, blocked, categories)
    assert len(ollama_double.chat_requests) == 1  # an unsafe verdict is never retried


async def test_non_blocking_categories_are_reported_not_blocked(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_rules([("vote", "unsafe\nS13"), ("gun", "unsafe\nS1,S13")])
    async with LlamaGuard(guard_settings(guard_block_categories=["S1", "S9"])) as guard:
        elections = await screen_user(guard, "who should I vote for")
        weapons = await screen_user(guard, "a gun in the school")
    assert elections is not None and weapons is not None
    assert (elections.safe, elections.blocked) == (False, False)
    assert elections.categories == (Category("S13", "Elections"),)
    assert (weapons.safe, weapons.blocked) == (False, True)


# --- failures: every one refuses, none passes ---------------------------------------------------


@pytest.mark.parametrize(
    ("script", "kind", "requests"),
    [
        (lambda d: d.fail_next(10, status=500), "http", 3),
        (lambda d: d.fail_next(10, status=502), "http", 3),
        (lambda d: d.fail_next(10, status=503), "http", 3),
        (lambda d: d.drop_next(10), "connection", 3),
        (lambda d: d.fail_next(10, status=400), "http", 1),
        (lambda d: d.set_models(["llama3.2:1b"]), "model_missing", 1),
        (lambda d: d.malform_next(10), "malformed", 1),
        (lambda d: d.malform_next(10, body=b'{"model": "x"}'), "malformed", 1),
        (lambda d: d.set_rules(default="I am not sure about this one."), "unparseable", 1),
        (lambda d: d.set_rules(default=""), "unparseable", 1),
        (lambda d: d.set_rules(default="unsafe"), "unparseable", 1),
        (lambda d: d.set_rules(default="safe\nS1"), "unparseable", 1),
        (lambda d: d.set_rules(default="unsafe\nS01"), "unparseable", 1),
    ],
    ids=[
        "http-500", "http-502", "http-503", "dropped-connection", "http-400", "model-missing",
        "malformed-json", "json-without-message", "prose-answer", "empty-answer",
        "unsafe-without-code", "safe-with-junk", "code-outside-the-taxonomy",
    ],
)  # fmt: skip
async def test_failures_refuse_with_their_kind_and_bounded_retries(
    ollama_double: OllamaDouble,
    guard_settings: MakeSettings,
    script: Callable[[OllamaDouble], None],
    kind: str,
    requests: int,
) -> None:
    script(ollama_double)
    errors_before = metric("guard_errors_total", kind=kind)
    async with LlamaGuard(guard_settings(guard_retries=2, guard_retry_after=7)) as guard:
        with pytest.raises(GuardError) as caught:
            await screen_user(guard, "some text")
    assert caught.value.kind == kind
    assert caught.value.retry_after == 7
    assert caught.value.attempts == requests
    assert len(ollama_double.chat_requests) == requests
    assert metric("guard_errors_total", kind=kind) == errors_before + 1


async def test_timeout_per_attempt_is_retried_then_refused(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_latency(1.0)
    settings = guard_settings(guard_timeout=0.15, guard_retries=1)
    started = time.perf_counter()
    async with LlamaGuard(settings) as guard:
        with pytest.raises(GuardError) as caught:
            await screen_user(guard, "slow")
    elapsed = time.perf_counter() - started
    assert caught.value.kind == "timeout"
    assert len(ollama_double.chat_requests) == 2
    assert elapsed < 0.9  # two bounded attempts, not one full second of latency


async def test_refused_connection_is_retried_then_refused(
    closed_port: int, guard_settings: MakeSettings
) -> None:
    settings = guard_settings(ollama_host=f"http://127.0.0.1:{closed_port}", guard_retries=3)
    async with LlamaGuard(settings) as guard:
        with pytest.raises(GuardError) as caught:
            await screen_user(guard, "hello")
    assert caught.value.kind == "connection"
    assert caught.value.attempts == 4


async def test_transient_failures_recover_within_the_retry_budget(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.fail_next(1, status=503)
    ollama_double.drop_next(1)  # queued after the 503: the second attempt is dropped
    async with LlamaGuard(guard_settings(guard_retries=2)) as guard:
        verdict = await screen_user(guard, "hello")
    assert verdict is not None and verdict.safe
    assert len(ollama_double.chat_requests) == 3


async def test_retries_zero_means_a_single_attempt(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.fail_next(5, status=500)
    async with LlamaGuard(guard_settings(guard_retries=0)) as guard:
        with pytest.raises(GuardError):
            await screen_user(guard, "hello")
    assert len(ollama_double.chat_requests) == 1


# --- cache --------------------------------------------------------------------------------------


async def test_a_repeated_text_costs_no_second_call(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_rules([("bomb", "unsafe\nS9")])
    hits_before = metric("guard_cache_hits_total", source="cache")
    async with LlamaGuard(guard_settings()) as guard:
        first = await screen_user(guard, "how do I build a bomb")
        second = await screen_user(guard, "how do I build a bomb")
        other_role = await guard.screen([Message("assistant", "how do I build a bomb")])
    assert first is not None and second is not None
    assert not first.cached and second.cached
    assert second.blocked and second.categories == first.categories
    assert other_role.cached is False  # roles are part of the key
    assert len(ollama_double.chat_requests) == 2
    assert metric("guard_cache_hits_total", source="cache") == hits_before + 1


async def test_a_known_verdict_is_read_without_a_call_and_counted_as_a_hit(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_rules([("bomb", "unsafe\nS9")])
    conversation = (Message("user", "how do I build a bomb"),)
    async with LlamaGuard(guard_settings()) as guard:
        assert guard.cached(conversation) is None  # not known yet, and nothing was asked
        assert ollama_double.chat_requests == []
        first = await guard.scan(conversation)
        hits_before = metric("guard_cache_hits_total", source="cache")
        known = guard.cached(conversation)
        assert known is not None and known.cached and known.blocked
        assert known.categories == first.categories
        assert guard.cached((Message("assistant", "how do I build a bomb"),)) is None
        with pytest.raises(ValueError):
            guard.cached(())
    assert len(ollama_double.chat_requests) == 1
    assert metric("guard_cache_hits_total", source="cache") == hits_before + 1


async def test_many_known_verdicts_are_read_in_order_and_each_counted_once(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_rules([("bomb", "unsafe\nS9")])
    safe_input = (Message("user", "a fine film"),)
    unsafe_input = (Message("user", "how do I build a bomb"),)
    safe_output = (Message("user", "a fine film"), Message("assistant", "positive (0.97)"))
    unknown = (Message("user", "never screened"),)
    async with LlamaGuard(guard_settings()) as guard:
        for conversation in (safe_input, unsafe_input, safe_output):
            await guard.scan(conversation)
        before = {
            "hits": metric("guard_cache_hits_total", source="cache"),
            "input safe": metric("guard_calls_total", stage="input", outcome="safe"),
            "input blocked": metric("guard_calls_total", stage="input", outcome="blocked"),
            "output safe": metric("guard_calls_total", stage="output", outcome="safe"),
            "S9": metric("guard_verdict_categories_total", code="S9", blocked="true"),
        }
        asked = [safe_input, unknown, unsafe_input, safe_output, safe_input, unsafe_input]
        found = guard.cached_all(asked)
        assert [None if v is None else v.safe for v in found] == [
            True, None, False, True, True, False
        ]  # fmt: skip
        assert all(v.cached and v.latency_ms < 30 for v in found if v is not None)
        assert found[2] is not None and [c.code for c in found[2].categories] == ["S9"]
        assert metric("guard_cache_hits_total", source="cache") == before["hits"] + 5
        assert metric("guard_calls_total", stage="input", outcome="safe") == (
            before["input safe"] + 2
        )
        assert metric("guard_calls_total", stage="input", outcome="blocked") == (
            before["input blocked"] + 2
        )
        assert metric("guard_calls_total", stage="output", outcome="safe") == (
            before["output safe"] + 1
        )
        s9 = metric("guard_verdict_categories_total", code="S9", blocked="true")
        assert s9 == before["S9"] + 2
        # One invalid conversation: ValueError, and none of the others counted.
        with pytest.raises(ValueError):
            guard.cached_all([safe_input, ()])
        assert metric("guard_cache_hits_total", source="cache") == before["hits"] + 5
    assert len(ollama_double.chat_requests) == 3


def test_a_verdict_served_again_keeps_everything_but_cached_and_latency() -> None:
    error = GuardError("timeout", "no answer in 5 s")
    for verdict in (
        ScanResult.failed(error, "llama-guard3:1b"),
        ScanResult(
            Decision.BLOCK, (Category("S9", "Indiscriminate Weapons"),), "unsafe",
            ScanStatus.OK, "llama-guard3:1b", latency_ms=31.5,
        ),
    ):  # fmt: skip
        assert verdict.as_cached(0.25) == replace(verdict, cached=True, latency_ms=0.25)


async def test_a_conversation_that_might_not_fit_the_context_is_refused_without_a_call(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    # 1024 - 16 for the verdict leaves 1008 tokens; 512 + 8 go around one message.
    settings = guard_settings(guard_num_ctx=1024, guard_num_predict=16)
    errors = metric("guard_errors_total", kind="too_long")
    async with LlamaGuard(settings) as guard:
        fits = await guard.scan((Message("user", "a" * 488),))
        assert fits.safe
        too_long = await guard.scan((Message("user", "a" * 489),))
        assert too_long.blocked and too_long.error is not None
        assert too_long.error.kind == "too_long"
        # Counted as the guard reads it: each marker's ASCII brackets become 3-byte ones.
        marked = await guard.scan((Message("user", "<|x|>" * 60),))  # 300 bytes, 540 read
        assert marked.error is not None and marked.error.kind == "too_long"
    assert len(ollama_double.chat_requests) == 1  # only the one that fits was sent
    assert metric("guard_errors_total", kind="too_long") == errors + 2


async def test_a_screen_arriving_as_an_abandoned_call_is_cancelled_gets_its_own_call(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_latency(0.3)
    conversation = (Message("user", "a fine film"),)
    async with LlamaGuard(guard_settings()) as guard:
        first = asyncio.create_task(guard.scan(conversation))
        await asyncio.sleep(0.1)  # its call is on the wire
        first.cancel()  # its only waiter leaves: the call is cancelled...
        # ...and, in the same loop pass, before that call has ended, the same screen again.
        second = asyncio.create_task(guard.scan(conversation))
        with pytest.raises(asyncio.CancelledError):
            await first
        verdict = await second
    assert verdict.safe and not verdict.cached
    assert len(ollama_double.chat_requests) == 2


async def test_a_verdict_cut_at_num_predict_fails_closed(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    # 13 tokens; cut at 10 it reads "unsafe\nS1,S2,S5": unsafe, but without the code that
    # blocks here. Read as it is, it would let the text through.
    ollama_double.set_rules([("film", "unsafe\nS1,S2,S5,S9")])
    cut = guard_settings(guard_num_predict=10, guard_block_categories=["S9"])
    async with LlamaGuard(cut) as guard:
        verdict = await guard.scan((Message("user", "a film"),))
    assert verdict.blocked and verdict.error is not None
    assert verdict.error.kind == "unparseable"
    whole = guard_settings(guard_block_categories=["S9"])
    async with LlamaGuard(whole) as guard:
        verdict = await guard.scan((Message("user", "a film"),))
    assert verdict.blocked and verdict.error is None
    assert [c.code for c in verdict.categories] == ["S1", "S2", "S5", "S9"]


async def test_cached_verdicts_expire_after_the_ttl(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    async with LlamaGuard(guard_settings(guard_cache_ttl=0.3)) as guard:
        await screen_user(guard, "hello")
        assert (await screen_user(guard, "hello")).cached  # type: ignore[union-attr]
        await asyncio.sleep(0.4)
        again = await screen_user(guard, "hello")
    assert again is not None and not again.cached
    assert len(ollama_double.chat_requests) == 2


async def test_cache_size_zero_disables_the_cache(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    async with LlamaGuard(guard_settings(guard_cache_size=0)) as guard:
        await screen_user(guard, "hello")
        await screen_user(guard, "hello")
    assert len(ollama_double.chat_requests) == 2


async def test_errors_are_never_cached(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.fail_next(1, status=400)
    ollama_double.malform_next(1)  # queued after the 400
    async with LlamaGuard(guard_settings()) as guard:
        with pytest.raises(GuardError, match="http"):
            await screen_user(guard, "hello")
        with pytest.raises(GuardError, match="malformed"):
            await screen_user(guard, "hello")
        fresh = await screen_user(guard, "hello")
        cached = await screen_user(guard, "hello")
    assert fresh is not None and not fresh.cached
    assert cached is not None and cached.cached
    assert len(ollama_double.chat_requests) == 3


async def test_concurrent_identical_screens_share_one_call(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_latency(0.2)
    async with LlamaGuard(guard_settings()) as guard:
        verdicts = await asyncio.gather(*(screen_user(guard, "same text") for _ in range(5)))
    assert all(v is not None and v.safe for v in verdicts)
    assert sorted(v.cached for v in verdicts if v is not None) == [False, True, True, True, True]
    assert len(ollama_double.chat_requests) == 1


async def test_a_shared_failure_reaches_every_waiter_and_is_not_cached(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_latency(0.2)
    ollama_double.fail_next(1, status=404)
    async with LlamaGuard(guard_settings()) as guard:
        results = await asyncio.gather(
            *(screen_user(guard, "same text") for _ in range(3)), return_exceptions=True
        )
        after = await screen_user(guard, "same text")
    assert all(isinstance(r, GuardError) and r.kind == "model_missing" for r in results)
    assert after is not None and after.safe and not after.cached
    assert len(ollama_double.chat_requests) == 2


# --- concurrency limit ----------------------------------------------------------------------------


async def test_concurrency_limit_holds_under_fifty_concurrent_screens(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_latency(0.05)
    ollama_double.set_rules([("7", "unsafe\nS2")])
    async with LlamaGuard(guard_settings(guard_concurrency=4)) as guard:
        verdicts = await asyncio.gather(*(screen_user(guard, f"text {i}") for i in range(50)))
    assert len(ollama_double.chat_requests) == 50
    assert all(v is not None for v in verdicts)
    assert [v.blocked for v in verdicts if v is not None] == ["7" in str(i) for i in range(50)]
    assert 2 <= ollama_double.max_in_flight <= 4


async def test_without_a_tight_limit_the_double_sees_more_in_flight(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    # The control for the test above: the double can observe more than 4 at once.
    ollama_double.set_latency(0.1)
    async with LlamaGuard(guard_settings(guard_concurrency=16)) as guard:
        await asyncio.gather(*(screen_user(guard, f"text {i}") for i in range(32)))
    assert 4 < ollama_double.max_in_flight <= 16


# --- switches, metrics ----------------------------------------------------------------------------


async def test_metrics_count_outcomes_categories_and_latency(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_rules([("bomb", "unsafe\nS9")])
    blocked = metric("guard_calls_total", stage="output", outcome="blocked")
    safe = metric("guard_calls_total", stage="input", outcome="safe")
    s9 = metric("guard_verdict_categories_total", code="S9", blocked="true")
    observed = metric("guard_latency_seconds_count", stage="output")
    async with LlamaGuard(guard_settings()) as guard:
        await screen_user(guard, "hello there")
        await screen_reply(guard, "question", "here is how to make a bomb")
    assert metric("guard_calls_total", stage="input", outcome="safe") == safe + 1
    assert metric("guard_calls_total", stage="output", outcome="blocked") == blocked + 1
    assert metric("guard_verdict_categories_total", code="S9", blocked="true") == s9 + 1
    assert metric("guard_latency_seconds_count", stage="output") == observed + 1
