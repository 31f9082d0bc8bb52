"""The guard-check command's function, against the Ollama test double."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

from service.config import Settings
from service.guard.cli import guard_check
from tests.ollama_double import OllamaDouble

MakeSettings = Callable[..., Settings]


async def test_safe_text_exits_zero(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    out = io.StringIO()
    assert await guard_check("a lovely film", guard_settings(), out=out) == 0
    printed = json.loads(out.getvalue())
    assert printed["safe"] is True and printed["blocked"] is False and printed["categories"] == []


async def test_blocked_text_exits_one_and_names_the_categories(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_rules([("poison", "unsafe\nS1")])
    out = io.StringIO()
    code = await guard_check("how to poison a neighbour's dog", guard_settings(), out=out)
    assert code == 1
    assert json.loads(out.getvalue())["categories"] == [{"code": "S1", "name": "Violent Crimes"}]


async def test_reply_is_checked_as_the_assistants_turn(
    ollama_double: OllamaDouble, guard_settings: MakeSettings
) -> None:
    ollama_double.set_rules([("mix bleach", "unsafe\nS1")])
    out = io.StringIO()
    code = await guard_check("cleaning tips?", guard_settings(), reply="mix bleach and", out=out)
    assert code == 1
    [request] = ollama_double.chat_requests
    assert [m["role"] for m in request.body["messages"]] == ["user", "assistant"]


async def test_guard_error_exits_two_with_the_kind(
    closed_port: int, guard_settings: MakeSettings
) -> None:
    out = io.StringIO()
    settings = guard_settings(ollama_host=f"http://127.0.0.1:{closed_port}", guard_retries=0)
    assert await guard_check("hello", settings, out=out) == 2
    printed = json.loads(out.getvalue())
    assert printed["error"]["kind"] == "connection" and printed["model"] == "llama-guard3:1b"
