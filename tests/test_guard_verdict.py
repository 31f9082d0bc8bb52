"""Verdict parsing, blocking policy and the verdict cache (pure functions, no I/O)."""

from __future__ import annotations

import hashlib

import pytest

from service.guard import Category, Decision, GuardError, Message, ScanResult, ScanStatus
from service.guard.cache import VerdictCache, conversation_key
from service.guard.llama_guard import classify, same_model
from service.guard.verdict import is_blocked, parse_answer, parse_verdict

MODEL = "llama-guard3:1b"


@pytest.mark.parametrize("answer", ["safe", "SAFE", "  Safe \n", "\nsafe\n\n"])
def test_safe_answers_allow(answer: str) -> None:
    verdict = parse_verdict(answer, model=MODEL)
    assert verdict == ScanResult(Decision.ALLOW, (), "safe", ScanStatus.OK, MODEL)


@pytest.mark.parametrize(
    ("answer", "codes"),
    [
        ("unsafe\nS1", ["S1"]),
        ("unsafe\nS1,S10", ["S1", "S10"]),
        ("  UNSAFE \n s1, s10 ", ["S1", "S10"]),
        ("unsafe\nS1\nS10", ["S1", "S10"]),
        ("unsafe\nS2 S14", ["S2", "S14"]),
        ("unsafe\nS10,S1,S10", ["S10", "S1"]),
    ],
)
def test_unsafe_answers_block_with_named_categories(answer: str, codes: list[str]) -> None:
    verdict = parse_verdict(answer, model=MODEL)
    assert not verdict.safe and verdict.blocked
    assert [category.code for category in verdict.categories] == codes
    names = {"S1": "Violent Crimes", "S2": "Non-Violent Crimes", "S10": "Hate"}
    names["S14"] = "Code Interpreter Abuse"
    assert [category.name for category in verdict.categories] == [names[c] for c in codes]


@pytest.mark.parametrize("code", ["S99", "S15", "S0", "S01", "S010", "S1x"])
@pytest.mark.parametrize("block", [[], ["S1", "S9", "S11"]])
def test_a_code_outside_the_taxonomy_fails_closed_whatever_the_block_list(
    code: str, block: list[str]
) -> None:
    # With a block list, an unknown code would otherwise be "not listed" and let through.
    with pytest.raises(GuardError, match="not a hazard code of S1..S14") as caught:
        parse_verdict(f"unsafe\n{code}", model=MODEL, block_categories=block)
    assert caught.value.kind == "unparseable"
    with pytest.raises(GuardError):
        parse_verdict(f"unsafe\nS10,{code}", model=MODEL, block_categories=block)


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "   \n  ",
        "I cannot judge this conversation.",
        "safe\nS1",
        "safe and sound",
        "unsafe",
        "  unsafe \n\n",
        "unsafe S1",
        "unsafe\nviolent crimes",
        "unsafe\nS1, maybe S2",
        "The conversation is unsafe\nS1",
    ],
)
def test_anything_else_is_unparseable(answer: str) -> None:
    with pytest.raises(GuardError) as caught:
        parse_answer(answer)
    assert caught.value.kind == "unparseable"


def test_unsafe_without_code_is_an_error_not_a_pass_or_a_bare_block() -> None:
    with pytest.raises(GuardError, match="without any hazard category code") as caught:
        parse_verdict("unsafe\n", model=MODEL)
    assert caught.value.kind == "unparseable"


def test_policy_reports_unsafe_verdicts_without_blocking_codes() -> None:
    verdict = parse_verdict("unsafe\nS10", model=MODEL, block_categories=["S1", "S9"])
    assert verdict.safe is False and verdict.blocked is False
    assert verdict.categories == (Category("S10", "Hate"),)
    assert parse_verdict("unsafe\nS10,S9", model=MODEL, block_categories=["S1", "S9"]).blocked


def test_policy_empty_list_blocks_everything_explicit_list_only_its_codes() -> None:
    unknown = (Category("S99", "Unknown category"),)
    assert is_blocked(unknown, [])
    assert not is_blocked(unknown, ["S1"])
    assert not is_blocked((), [])
    assert is_blocked((Category("S3", "Sex-Related Crimes"),), ["s3"])


def test_verdict_to_dict_shape() -> None:
    verdict = parse_verdict("unsafe\nS1", model=MODEL)
    assert verdict.to_dict() == {
        "safe": False,
        "blocked": True,
        "categories": [{"code": "S1", "name": "Violent Crimes"}],
        "model": MODEL,
        "cached": False,
        "latency_ms": 0.0,
    }


# --- cache ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SAFE = ScanResult(Decision.ALLOW, (), "safe", ScanStatus.OK, MODEL)


def test_cache_entries_expire_after_ttl() -> None:
    clock = FakeClock()
    cache = VerdictCache(size=10, ttl=60.0, clock=clock)
    cache.put("k", SAFE)
    clock.now += 59.9
    assert cache.get("k") == SAFE
    clock.now += 0.2
    assert cache.get("k") is None
    assert len(cache) == 0


def test_cache_evicts_least_recently_used() -> None:
    cache = VerdictCache(size=2, ttl=0, clock=FakeClock())
    cache.put("a", SAFE)
    cache.put("b", SAFE)
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", SAFE)
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_cache_of_size_zero_keeps_nothing() -> None:
    cache = VerdictCache(size=0, ttl=60.0)
    cache.put("a", SAFE)
    assert cache.get("a") is None and not cache.enabled


def test_cache_key_covers_model_roles_and_boundaries() -> None:
    user = [Message("user", "a")]
    keys = {
        conversation_key(MODEL, user),
        conversation_key("llama-guard3:8b", user),
        conversation_key(MODEL, [Message("assistant", "a")]),
        conversation_key(MODEL, [Message("user", "a,b")]),
        conversation_key(MODEL, [Message("user", "a"), Message("user", "b")]),
        # one text that spells out the boundary of the two turns above
        conversation_key(MODEL, [Message("user", "a4:user1:b")]),
    }
    assert len(keys) == 6
    # The SHA-256 of the model and the role-tagged turns, each string after its length,
    # written out here by hand: a key of the content (not of the objects holding it), where
    # a text holding what looks like a boundary ("1:a") stays one text.
    for conversation, payload in (
        (user, "15:llama-guard3:1b4:user1:a"),
        (
            [Message("user", "Ça va?"), Message("assistant", 'a "b", c')],
            '15:llama-guard3:1b4:user6:Ça va?9:assistant8:a "b", c',
        ),
    ):
        expected = hashlib.sha256(payload.encode("utf-8")).hexdigest()
        assert conversation_key(MODEL, conversation) == expected, payload


# --- error classification and model names -----------------------------------------------------


def test_name_resolution_failure_is_a_retryable_connection_error() -> None:
    # The ollama client raises the builtin ConnectionError for httpx.ConnectError, which is
    # what both a refused connection and a DNS failure produce.
    error, retryable = classify(ConnectionError("Name or service not known"), MODEL, 1.0)
    assert (error.kind, retryable) == ("connection", True)


@pytest.mark.parametrize(
    ("wanted", "listed", "same"),
    [
        ("llama-guard3:1b", "llama-guard3:1b", True),
        ("llama-guard3", "llama-guard3:latest", True),
        ("llama-guard3:latest", "llama-guard3", True),
        ("Llama-Guard3:8B", "llama-guard3:8b", True),
        ("llama-guard3:1b", "registry.ollama.ai/library/llama-guard3:1b", True),
        ("llama-guard3:1b", "llama-guard3:8b", False),
        ("llama-guard3:1b", "llama-guard3", False),
    ],
)
def test_model_tag_forms(wanted: str, listed: str, same: bool) -> None:
    assert same_model(wanted, listed) is same
