"""/readyz reports the chat model: present on Ollama, missing (not ready), or chat switched off
by configuration (ready, with a warning). Real Hypercorn process over HTTP/2."""

from __future__ import annotations

from tests.helpers import h2_client, running_server
from tests.ollama_double import OllamaDouble


async def test_readyz_reports_the_chat_model(ollama_double: OllamaDouble) -> None:
    with running_server(ollama_host=ollama_double.url, models="sentiment-cnn-int8") as server:
        async with h2_client(server) as http:
            ready = await http.get("/readyz")
            ollama_double.set_models(["llama-guard3:1b"])  # the chat model is gone
            missing = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["chat"] == {"ok": True, "enabled": True, "model": "llama3.2:1b"}
    assert missing.status_code == 503
    problem = missing.json()
    assert problem["checks"]["chat"]["ok"] is False and "chat" in problem["detail"]
    assert "ollama pull llama3.2:1b" in problem["checks"]["chat"]["detail"]


async def test_chat_switched_off_is_ready_with_a_warning(ollama_double: OllamaDouble) -> None:
    with running_server(
        ollama_host=ollama_double.url, models="sentiment-cnn-int8", chat_model=""
    ) as server:
        async with h2_client(server) as http:
            ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    chat = ready.json()["checks"]["chat"]
    assert chat["ok"] is True and chat["enabled"] is False and "off" in chat["warning"]


async def test_probes_take_head_and_not_ready_says_when_to_retry(
    ollama_double: OllamaDouble,
) -> None:
    with running_server(
        ollama_host=ollama_double.url, models="sentiment-cnn-int8", guard_retry_after=9
    ) as server:
        async with h2_client(server) as http:
            for path in ("/healthz", "/readyz"):
                head = await http.head(path)
                assert head.status_code == 200 and head.content == b""
            ollama_double.set_models([])
            missing = await http.get("/readyz")
            head = await http.head("/readyz")
    assert missing.status_code == 503 and missing.headers["retry-after"] == "9"
    assert head.status_code == 503 and head.headers["retry-after"] == "9"
