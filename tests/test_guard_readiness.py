"""Readiness and model management against the Ollama test double."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from service.config import Settings
from service.guard import GuardError, LlamaGuard
from tests.helpers import screen_user
from tests.ollama_double import OllamaDouble

MakeSettings = Callable[..., Settings]


async def test_ready_when_ollama_answers_and_holds_the_model(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    async with LlamaGuard(guard_settings()) as guard:
        state = await guard.readiness()
    assert state == {
        "ollama": True,
        "model_present": True,
        "model": "llama-guard3:1b",
        "screen_input": True,
        "screen_output": True,
        "detail": None,
    }
    assert [r.path for r in ollama_double.requests] == ["/api/tags"]


async def test_not_ready_when_the_model_is_missing(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_models(["llama3.2:1b", "llama-guard3:8b"])
    async with LlamaGuard(guard_settings()) as guard:
        state = await guard.readiness()
    assert state["ollama"] is True and state["model_present"] is False
    assert "llama-guard3:8b" in state["detail"] and "ollama pull llama-guard3:1b" in state["detail"]


async def test_not_ready_when_ollama_is_unreachable(
    closed_port: int, guard_settings: MakeSettings
) -> None:
    async with LlamaGuard(guard_settings(ollama_host=f"http://127.0.0.1:{closed_port}")) as guard:
        state = await guard.readiness()
    assert state["ollama"] is False and state["model_present"] is False
    assert f"127.0.0.1:{closed_port}" in state["detail"] and "connection" in state["detail"]


@pytest.mark.parametrize(
    ("configured", "listed"),
    [
        ("llama-guard3:1b", "llama-guard3:1b"),
        ("llama-guard3", "llama-guard3:latest"),
        ("llama-guard3:latest", "llama-guard3"),
    ],
)
async def test_tag_forms_are_tolerated(
    ollama_double: OllamaDouble, guard_settings: MakeSettings, configured: str, listed: str
) -> None:
    ollama_double.set_models([listed])
    async with LlamaGuard(guard_settings(guard_model=configured)) as guard:
        assert (await guard.readiness())["model_present"] is True
        verdict = await screen_user(guard, "hello")  # the double resolves the tag the same way
    assert verdict is not None and verdict.safe


async def test_ensure_model_pulls_a_missing_model_and_logs_progress(
    ollama_double: OllamaDouble, guard_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.guard")
    ollama_double.set_models([])
    async with LlamaGuard(guard_settings(guard_pull=True)) as guard:
        assert await guard.ensure_model() is True
        assert (await guard.readiness())["model_present"] is True
    [pull] = ollama_double.requests_to("/api/pull")
    assert pull.body["model"] == "llama-guard3:1b" and pull.body["stream"] is True
    assert ollama_double.models == ["llama-guard3:1b"]
    progress = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("pulling manifest" in m for m in progress)
    assert any("500000/1000000 bytes (50%)" in m for m in progress)
    assert any(m.endswith(": success") for m in progress)


async def test_ensure_model_does_nothing_when_the_model_is_present(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    async with LlamaGuard(guard_settings(guard_pull=True)) as guard:
        assert await guard.ensure_model() is True
    assert ollama_double.requests_to("/api/pull") == []


async def test_ensure_model_without_guard_pull_only_warns(
    ollama_double: OllamaDouble, guard_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    ollama_double.set_models([])
    async with LlamaGuard(guard_settings(guard_pull=False)) as guard:
        assert await guard.ensure_model() is False
    assert ollama_double.requests_to("/api/pull") == []
    assert any("GUARD_PULL=true" in r.getMessage() for r in caplog.records)


async def test_ensure_model_reports_a_failed_pull(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_models([])
    ollama_double.fail_pull("pull model manifest: file does not exist")
    async with LlamaGuard(guard_settings(guard_pull=True, guard_model="llama-guard9:1b")) as guard:
        with pytest.raises(GuardError, match="file does not exist") as caught:
            await guard.ensure_model()
    assert caught.value.kind == "model_missing"
    assert ollama_double.models == []


async def test_ensure_model_fails_closed_when_ollama_is_unreachable(
    closed_port: int, guard_settings: MakeSettings
) -> None:
    settings = guard_settings(ollama_host=f"http://127.0.0.1:{closed_port}", guard_pull=True)
    async with LlamaGuard(settings) as guard:
        with pytest.raises(GuardError) as caught:
            await guard.ensure_model()
    assert caught.value.kind == "connection"
