"""API_TOKENS: every protected route and A2A method answers 401 without a valid bearer token
and works with either token; probes, metrics and the public card stay open; the card
declares the scheme and the extended card is served only with a token. Real Hypercorn
process over HTTP/2, guard on the Ollama double."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from a2a.client import A2AClientError, ClientConfig, ClientFactory
from a2a.client.card_resolver import parse_agent_card
from a2a.types import (
    GetExtendedAgentCardRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    TaskState,
)

from service.web.auth import bearer_token, is_open, token_is_valid
from tests.helpers import REPO, ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

OLD, NEW = "old-token-5f1c9a", "new-token-8e2d47"
GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."
V1 = {"A2A-Version": "1.0"}
PROBLEM_JSON = "application/problem+json"
MODEL_CARDS = "urn:guarded-inference-service:a2a:model-cards:v1"


pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    port = free_port()
    with running_server(
        ollama_host=double.url, port=port, public_url=f"http://127.0.0.1:{port}",
        api_tokens=f"ops:{OLD}, ops:{NEW}",  # one caller rolling its token over
    ) as running:  # fmt: skip
        yield running


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def msg(version: str = "1.0") -> dict[str, Any]:
    if version == "1.0":
        return {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "parts": [{"text": GOOD}]}
    return {
        "role": "user",
        "kind": "message",
        "messageId": uuid.uuid4().hex,
        "parts": [{"kind": "text", "text": GOOD}],
    }


@pytest.fixture(scope="module")
def task_id(server: ServerProcess) -> str:
    """A completed task, made with a token."""
    with httpx.Client(http1=False, http2=True, base_url=server.base_url, timeout=30) as client:
        body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": msg()}}
        answer = client.post("/a2a/jsonrpc", json=body, headers={**V1, **bearer(OLD)}).json()
    return answer["result"]["task"]["id"]


# --- what is protected ------------------------------------------------------------------------


def rpc(method: str, params: dict[str, Any], version: str = "1.0") -> dict[str, Any]:
    return {
        "body": {"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        "headers": V1 if version == "1.0" else {},
    }


def protected_calls(task: str) -> list[tuple[str, str, str, dict[str, Any], str]]:
    """(id, HTTP method, path, request kwargs, what a token-holder gets back)."""
    calls: list[tuple[str, str, str, dict[str, Any], str]] = [
        ("rest-classify", "POST", "/v1/classify", {"body": {"text": GOOD}}, "json"),
        ("rest-models", "GET", "/v1/models", {}, "json"),
        ("rest-moderate", "POST", "/v1/moderate", {"body": {"text": "hello"}}, "json"),
    ]
    jsonrpc = [
        ("SendMessage", rpc("SendMessage", {"message": msg()}), "result"),
        ("SendStreamingMessage", rpc("SendStreamingMessage", {"message": msg()}), "sse"),
        ("GetTask", rpc("GetTask", {"id": task}), "result"),
        ("ListTasks", rpc("ListTasks", {}), "result"),
        ("CancelTask", rpc("CancelTask", {"id": task}), "error"),  # already completed
        ("SubscribeToTask", rpc("SubscribeToTask", {"id": task}), "error"),  # already ended
        ("GetExtendedAgentCard", rpc("GetExtendedAgentCard", {}), "result"),
        ("message/send", rpc("message/send", {"message": msg("0.3")}, "0.3"), "result"),
        ("message/stream", rpc("message/stream", {"message": msg("0.3")}, "0.3"), "sse"),
        ("tasks/get", rpc("tasks/get", {"id": task}, "0.3"), "result"),
        ("tasks/cancel", rpc("tasks/cancel", {"id": task}, "0.3"), "error"),
        ("tasks/resubscribe", rpc("tasks/resubscribe", {"id": task}, "0.3"), "sse"),
        (
            "agent/getAuthenticatedExtendedCard",
            rpc("agent/getAuthenticatedExtendedCard", {}, "0.3"),
            "result",
        ),
    ]
    for path in ("/a2a/jsonrpc", "/"):
        calls += [(f"{name}@{path}", "POST", path, kw, want) for name, kw, want in jsonrpc]
    rest = "/a2a/rest"
    calls += [
        (
            "rest-1.0-send",
            "POST",
            f"{rest}/message:send",
            {"body": {"message": msg()}, "headers": V1},
            "json",
        ),  # fmt: skip
        (
            "rest-1.0-stream",
            "POST",
            f"{rest}/message:stream",
            {"body": {"message": msg()}, "headers": V1},
            "sse",
        ),  # fmt: skip
        ("rest-1.0-get", "GET", f"{rest}/tasks/{task}", {"headers": V1}, "json"),
        ("rest-1.0-list", "GET", f"{rest}/tasks", {"headers": V1}, "json"),
        ("rest-1.0-cancel", "POST", f"{rest}/tasks/{task}:cancel", {"headers": V1}, "refused"),
        (
            "rest-1.0-subscribe",
            "POST",
            f"{rest}/tasks/{task}:subscribe",
            {"headers": V1},
            "refused",
        ),
        ("rest-1.0-card", "GET", f"{rest}/extendedAgentCard", {"headers": V1}, "json"),
        (
            "rest-0.3-send",
            "POST",
            f"{rest}/v1/message:send",
            {
                "body": {
                    "message": {"role": "ROLE_USER", "messageId": "r3", "content": [{"text": GOOD}]}
                }
            },
            "json",
        ),  # fmt: skip
        (
            "rest-0.3-stream",
            "POST",
            f"{rest}/v1/message:stream",
            {
                "body": {
                    "message": {"role": "ROLE_USER", "messageId": "s3", "content": [{"text": GOOD}]}
                }
            },
            "sse",
        ),  # fmt: skip
        ("rest-0.3-get", "GET", f"{rest}/v1/tasks/{task}", {}, "json"),
        ("rest-0.3-subscribe", "POST", f"{rest}/v1/tasks/{task}:subscribe", {}, "refused"),
        ("rest-0.3-cancel", "POST", f"{rest}/v1/tasks/{task}:cancel", {}, "refused"),
        ("rest-0.3-card", "GET", f"{rest}/v1/card", {}, "json"),
    ]
    return calls


CALL_IDS = [call[0] for call in protected_calls("t")]


async def call(
    http: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any], auth: dict[str, str]
) -> tuple[httpx.Response, str]:
    """Make the call; the response and its whole body (streams read to the end)."""
    headers = {**kwargs.get("headers", {}), **auth}
    body = kwargs.get("body")
    async with http.stream(
        method, path, json=body if body is not None else None, headers=headers
    ) as response:
        text = (await response.aread()).decode()
    assert response.http_version == "HTTP/2"
    return response, text


def assert_401(response: httpx.Response, text: str, *, invalid_token: bool) -> None:
    assert response.status_code == 401, text
    assert response.headers["content-type"] == PROBLEM_JSON
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'realm="guarded-inference"' in challenge
    assert ('error="invalid_token"' in challenge) is invalid_token
    problem = json.loads(text)
    assert problem["status"] == 401 and problem["title"] == "Unauthorized"
    assert problem["instance"] == response.request.url.path
    assert "token" in problem["detail"]


@pytest.mark.parametrize("index", range(len(CALL_IDS)), ids=CALL_IDS)
async def test_protected_without_a_valid_token(
    http: httpx.AsyncClient, double: OllamaDouble, task_id: str, index: int
) -> None:
    _, method, path, kwargs, _ = protected_calls(task_id)[index]
    response, text = await call(http, method, path, kwargs, {})
    assert_401(response, text, invalid_token=False)
    for wrong in (bearer("not-a-token"), bearer(OLD + "x"), bearer(OLD[:-1])):
        response, text = await call(http, method, path, kwargs, wrong)
        assert_401(response, text, invalid_token=True)
    response, text = await call(http, method, path, kwargs, {"Authorization": f"Basic {OLD}"})
    assert_401(response, text, invalid_token=False)
    assert double.chat_requests == []  # nothing reached the guard, let alone a model


@pytest.mark.parametrize("index", range(len(CALL_IDS)), ids=CALL_IDS)
async def test_protected_works_with_either_token(
    http: httpx.AsyncClient, task_id: str, index: int
) -> None:
    _, method, path, kwargs, want = protected_calls(task_id)[index]
    token = (OLD, NEW)[index % 2]
    response, text = await call(http, method, path, kwargs, bearer(token))
    assert response.status_code != 401, text
    if want == "sse":
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "data:" in text
    elif want == "json":
        assert response.status_code == 200, text
        assert json.loads(text)
    elif want == "refused":  # an answer from the handler: the task already ended
        assert response.status_code == 400 and json.loads(text)["error"]
    else:
        answer = json.loads(text)
        assert response.status_code == 200 and want in answer, answer


@pytest.mark.parametrize(
    "path",
    ["/healthz", "/readyz", "/metrics", "/.well-known/agent-card.json", "/openapi.json",
     "/docs", "/problems/content-blocked"],
)  # fmt: skip
async def test_probes_metrics_and_public_card_stay_open(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    assert response.status_code == 200, response.text


# --- what the card says ------------------------------------------------------------------------


async def test_card_declares_the_bearer_scheme_and_the_extended_card(
    http: httpx.AsyncClient,
) -> None:
    raw = (await http.get("/.well-known/agent-card.json")).json()
    card = parse_agent_card(json.loads(json.dumps(raw)))
    scheme = card.security_schemes["bearer"].http_auth_security_scheme
    assert scheme.scheme == "Bearer" and scheme.description
    [requirement] = card.security_requirements
    assert list(requirement.schemes) == ["bearer"]
    assert card.capabilities.extended_agent_card is True
    # ... and the same in the 0.3 fields.
    assert raw["security"] == [{"bearer": []}]
    assert raw["supportsAuthenticatedExtendedCard"] is True
    assert raw["securitySchemes"]["bearer"]["scheme"] == "Bearer"
    assert OLD not in json.dumps(raw) and NEW not in json.dumps(raw)
    assert not card.capabilities.extensions  # model details only in the extended card


async def test_extended_card_adds_model_cards_only_with_a_token(http: httpx.AsyncClient) -> None:
    models = (await http.get("/v1/models", headers=bearer(NEW))).json()
    answers = [
        (await http.get("/a2a/rest/extendedAgentCard", headers={**V1, **bearer(NEW)})).json(),
        (
            await http.post(
                "/a2a/jsonrpc",
                json={"jsonrpc": "2.0", "id": 1, "method": "GetExtendedAgentCard", "params": {}},
                headers={**V1, **bearer(OLD)},
            )
        ).json()["result"],
        (
            await http.post(
                "/",
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "agent/getAuthenticatedExtendedCard",
                    "params": {},
                },
                headers=bearer(OLD),
            )
        ).json()["result"],
    ]
    for raw in answers:
        text = json.dumps(raw)
        assert OLD not in text and NEW not in text
        [extension] = raw["capabilities"]["extensions"]
        assert extension["uri"] == MODEL_CARDS and not extension.get("required", False)
        params = extension["params"]
        by_name = {model["name"]: model for model in params["models"]}
        assert set(by_name) == {model["name"] for model in models["models"]}
        for listed in models["models"]:
            mine = by_name[listed["name"]]
            for key in ("test_accuracy", "size_bytes", "quantization", "architecture", "params"):
                assert mine[key] == listed[key], key
            assert mine["default"] == listed["default"]
        assert by_name["sentiment-cnn-int8"]["quantization"] == "int8"
        assert params["skill_models"] == {
            "sentiment-cnn": "sentiment-cnn-int8",
            "sentiment-moe": "switch-moe",
            "sentiment-cascade": "sentiment-cascade",
            "hyperbole": "hyperbole-lora",
        }
        assert params["guard"]["model"] == "llama-guard3:1b"
        descriptions = {skill["id"]: skill["description"] for skill in raw["skills"]}
        assert "Default model: sentiment-cnn-int8 (cnn, int8," in descriptions["sentiment-cnn"]
        assert "IMDB test accuracy 0." in descriptions["sentiment-cnn"]
        assert "Default model: switch-moe (switch-transformer," in descriptions["sentiment-moe"]
    response = await http.get("/a2a/rest/extendedAgentCard", headers=V1)
    assert response.status_code == 401


# --- clients with and without the token ---------------------------------------------------------


async def test_sdk_client_with_a_token(server: ServerProcess) -> None:
    request = SendMessageRequest(
        message=Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=GOOD)])
    )
    async with httpx.AsyncClient(http1=False, http2=True, headers=bearer(NEW)) as http:
        config = ClientConfig(streaming=False, httpx_client=http)
        client = await ClientFactory(config).create_from_url(server.base_url)
        [event] = [event async for event in client.send_message(request)]
        assert event.task.status.state == TaskState.TASK_STATE_COMPLETED
        card = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
        assert card.capabilities.extensions[0].uri == MODEL_CARDS

    async with httpx.AsyncClient(http1=False, http2=True) as http:
        config = ClientConfig(streaming=False, httpx_client=http)
        client = await ClientFactory(config).create_from_url(server.base_url)  # the card is open
        with pytest.raises(A2AClientError, match="401"):
            [event async for event in client.send_message(request)]


def test_cli_with_and_without_the_token(server: ServerProcess) -> None:
    def ask(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agents", "ask", server.base_url, GOOD, *extra],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    result = ask("--token", OLD)
    assert result.returncode == 0, result.stderr
    assert "result: completed" in result.stdout
    result = ask()
    assert result.returncode == 2
    assert "401" in result.stderr and "Traceback" not in result.stderr


# --- the token check itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("BEARER abc", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_token_is_valid_against_every_configured_token() -> None:
    tokens = ("first", "second")
    assert token_is_valid("first", tokens) and token_is_valid("second", tokens)
    for wrong in ("", None, "firs", "first ", "FIRST", "secondsecond", "third"):
        assert not token_is_valid(wrong, tokens)
    assert not token_is_valid("first", ())


def test_open_paths() -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/.well-known/agent-card.json"):
        assert is_open(path)
    for path in ("/", "/a2a/jsonrpc", "/a2a/rest/tasks", "/v1/models", "/healthz/x", "/metricsx"):
        assert not is_open(path)


async def test_a_callers_cached_verdicts_are_its_own(
    double: OllamaDouble, free_port: Callable[[], int]
) -> None:
    # A cached verdict answers at once and says so: shared between callers, it would tell
    # one caller that another had sent the same text.
    port = free_port()
    alice, bob = bearer("alice-token-3c1d"), bearer("bob-token-9a7e")
    body = {"text": "A private note: the merger closes at five."}
    tokens = "alice:alice-token-3c1d,bob:bob-token-9a7e"
    with running_server(
        ollama_host=double.url, port=port, api_tokens=tokens, guard_cache_size=64
    ) as server:
        async with h2_client(server) as http:
            first = (await http.post("/v1/moderate", json=body, headers=alice)).json()
            again = (await http.post("/v1/moderate", json=body, headers=alice)).json()
            other = (await http.post("/v1/moderate", json=body, headers=bob)).json()
    assert (first["cached"], again["cached"], other["cached"]) == (False, True, False), (
        first,
        other,
    )
    assert len(double.chat_requests) == 2  # one screen each caller, none shared
