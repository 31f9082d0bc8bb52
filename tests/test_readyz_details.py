"""/readyz stays open for probes, but with API_TOKENS set only an authenticated caller sees its
details (the Ollama URL, model names, the guard's detail text); anyone else gets the verdict
and each check's ``ok``. Over HTTP/2 against the real service."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

TOKEN = "readyz-detail-token"
OTHER = "second-token"
CHECKS = ("models", "ollama", "guard_model", "screens", "chat")

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(
        ollama_host=double.url, models="sentiment-cnn-int8", api_tokens=f"{TOKEN},{OTHER}"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def open_server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(ollama_host=double.url, models="sentiment-cnn-int8") as running:
        yield running


async def readyz(server: ServerProcess, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with h2_client(server) as client:
        response = await client.get("/readyz", headers=headers)
    assert response.http_version == "HTTP/2"
    return response


def assert_redacted(response: httpx.Response, double: OllamaDouble, *, ready: bool) -> None:
    body: dict[str, Any] = response.json()
    assert body["ready"] is ready
    chat = body["checks"].pop("chat")
    assert set(chat) == {"ok"}  # its detail (the chat model's name) is hidden too
    assert body["checks"] == {name: {"ok": ready or name in ("models", "screens")}
                              for name in CHECKS if name != "chat"}  # fmt: skip
    for secret in (double.url, str(double.port), "llama-guard3", "llama3.2", "sentiment-cnn-int8"):
        assert secret not in response.text, response.text


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", ""])
async def test_an_unauthenticated_probe_sees_only_the_verdict(
    server: ServerProcess, double: OllamaDouble, token: str | None
) -> None:
    response = await readyz(server, token)
    assert response.status_code == 200, response.text
    assert response.json() == {"ready": True, "checks": {name: {"ok": True} for name in CHECKS}}
    assert_redacted(response, double, ready=True)


@pytest.mark.parametrize("token", [TOKEN, OTHER])
async def test_an_authenticated_caller_sees_everything(
    server: ServerProcess, double: OllamaDouble, token: str
) -> None:
    response = await readyz(server, token)
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert checks["ollama"] == {"ok": True, "url": double.url}
    assert checks["guard_model"] == {"ok": True, "model": "llama-guard3:1b"}
    assert checks["models"]["default"] == "sentiment-cnn-int8"
    assert checks["screens"] == {"ok": True, "input": True, "output": True}


async def test_not_ready_hides_the_detail_text_without_a_token(
    server: ServerProcess, double: OllamaDouble
) -> None:
    double.set_models(["llama3.2:1b"])  # the guard model is gone
    response = await readyz(server)
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == "/problems/not-ready" and problem["ready"] is False
    assert problem["checks"] == {
        "models": {"ok": True},
        "ollama": {"ok": True},
        "guard_model": {"ok": False},
        "screens": {"ok": True},
        "chat": {"ok": True},
    }
    assert problem["detail"] == "failing checks: guard_model"
    assert double.url not in response.text and "ollama pull" not in response.text

    full = await readyz(server, TOKEN)
    assert full.status_code == 503
    checks = full.json()["checks"]
    assert checks["ollama"]["url"] == double.url
    assert double.url in checks["detail"] and "ollama pull" in checks["detail"]


async def test_ollama_down_hides_the_url_without_a_token(
    server: ServerProcess, double: OllamaDouble
) -> None:
    double.fail_next(4, status=500, path="/api/tags")  # the guard's and the chat's checks
    response = await readyz(server)
    assert response.status_code == 503
    assert response.json()["checks"]["ollama"] == {"ok": False}
    assert_redacted(response, double, ready=False)
    full = await readyz(server, TOKEN)
    assert full.status_code == 503 and double.url in full.json()["checks"]["detail"]


async def test_without_api_tokens_everyone_sees_everything(
    open_server: ServerProcess, double: OllamaDouble
) -> None:
    response = await readyz(open_server)
    assert response.status_code == 200
    assert response.json()["checks"]["ollama"] == {"ok": True, "url": double.url}


async def test_concurrent_probes_share_one_check_of_ollama(
    open_server: ServerProcess, double: OllamaDouble
) -> None:
    double.set_latency(0.3, path="/api/tags")  # each check takes a while: probes pile up
    async with h2_client(open_server) as http:
        answers = await asyncio.gather(*(http.get("/readyz") for _ in range(20)))
        assert all(answer.status_code == 200 for answer in answers)
        assert all(answer.json()["ready"] for answer in answers)
        # One check for the guard's model and one for the chat model's (both list the tags),
        # not two per probe.
        assert len(double.requests_to("/api/tags")) <= 4
        # Later probes make a check of their own: nothing is kept after the answer.
        before = len(double.requests_to("/api/tags"))
        await http.get("/readyz")
        assert len(double.requests_to("/api/tags")) > before
