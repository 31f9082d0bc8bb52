"""Every refusal path of the REST API, over HTTP/2 against the real server process."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess, curl, h2_client, running_server
from tests.ollama_double import OllamaDouble

PROBLEM_JSON = "application/problem+json"
MAX_BODY = 48 * 1024


pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(
        ollama_host=double.url,
        models="sentiment-cnn-int8,sentiment-cnn-int4",
        guard_timeout=1.0,
        guard_retries=0,
        guard_retry_after=7,
        max_body_bytes=MAX_BODY,
        max_text_chars=2000,
        max_batch=8,
    ) as running:
        yield running


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as http:
        yield http


def problem(response: httpx.Response, status: int, type_suffix: str) -> dict[str, Any]:
    """Check the RFC 9457 shape and return the document."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status
    assert body["type"].endswith(type_suffix)
    assert body["title"] and body["detail"]
    assert body["instance"] == response.request.url.path
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


async def test_blocked_input(client: httpx.AsyncClient, double: OllamaDouble) -> None:
    double.set_rules([("bomb", "unsafe\nS9,S1")])
    response = await client.post(
        "/v1/classify", json={"texts": ["A nice film.", "How to build a bomb"]}
    )
    body = problem(response, 400, "/content-blocked")
    assert body["stage"] == "input" and body["indices"] == [1]
    assert body["categories"] == [
        {"code": "S9", "name": "Indiscriminate Weapons"},
        {"code": "S1", "name": "Violent Crimes"},
    ]
    assert "results" not in body
    # Both texts were screened as input; nothing the model said was returned. (Their output
    # screens start while the input screens run, so they may have been asked.)
    screened = [r.body["messages"] for r in double.chat_requests]
    inputs = [conversation for conversation in screened if len(conversation) == 1]
    assert len(inputs) == 2 and len(screened) <= 4
    for text in ("A nice film.", "How to build a bomb"):
        assert [{"role": "user", "content": text}] in inputs


async def test_blocked_output(client: httpx.AsyncClient, double: OllamaDouble) -> None:
    double.set_rules([("positive (", "unsafe\nS5"), ("negative (", "unsafe\nS5")])
    response = await client.post("/v1/classify", json={"text": "A film about a politician."})
    body = problem(response, 400, "/content-blocked")
    assert body["stage"] == "output"
    assert body["categories"] == [{"code": "S5", "name": "Defamation"}]
    assert "results" not in body and "label" not in response.text


@pytest.mark.parametrize(
    ("script", "kind"),
    [
        (lambda d: d.fail_next(1, status=500), "http"),
        (lambda d: d.drop_next(1), "connection"),
        (lambda d: d.malform_next(1), "malformed"),
        (lambda d: d.set_rules(default="Well, it depends on the context."), "unparseable"),
        (lambda d: d.set_rules(default="unsafe"), "unparseable"),
        (lambda d: d.set_models([]), "model_missing"),
        (lambda d: d.set_latency(1.5), "timeout"),
    ],
    ids=["status-500", "dropped", "malformed-body", "nonsense", "unsafe-no-code", "no-model",
         "slow"],
)  # fmt: skip
async def test_guard_failures_refuse_with_503_and_retry_after(
    client: httpx.AsyncClient, double: OllamaDouble, script: Any, kind: str
) -> None:
    script(double)
    response = await client.post("/v1/classify", json={"text": "A fine film."})
    body = problem(response, 503, "/guard-unavailable")
    assert response.headers["retry-after"] == "7"
    assert body["kind"] == kind and body["retry_after"] == 7
    assert "results" not in body


async def test_moderate_guard_failure_is_503(
    client: httpx.AsyncClient, double: OllamaDouble
) -> None:
    double.fail_next(1, status=503)
    response = await client.post("/v1/moderate", json={"text": "hello"})
    problem(response, 503, "/guard-unavailable")
    assert response.headers["retry-after"] == "7"


def test_oversized_body_with_content_length_is_413(
    server: ServerProcess, double: OllamaDouble, tmp_path: Path
) -> None:
    body = tmp_path / "big.json"
    body.write_bytes(json.dumps({"text": "x" * 1_000_000}).encode())
    result = curl(
        "--http2-prior-knowledge", "-i", "-H", "content-type: application/json",
        "--data-binary", f"@{body}", f"{server.base_url}/v1/classify",
    )  # fmt: skip
    assert result.stdout.startswith("HTTP/2 413")
    head, _, payload = result.stdout.replace("\r\n", "\n").partition("\n\n")
    assert "content-type: application/problem+json" in head
    document = json.loads(payload)
    assert document["type"].endswith("/body-too-large") and str(MAX_BODY) in document["detail"]
    assert double.chat_requests == []


def test_oversized_streamed_body_is_refused_before_it_ends(server: ServerProcess) -> None:
    # No Content-Length (curl -T - over HTTP/2): the limit is enforced while the body streams.
    proc = subprocess.Popen(
        ["curl", "-sS", "--http2-prior-knowledge", "-i", "-X", "POST", "-T", "-",
         "-H", "content-type: application/json", "-H", "x-request-id: streamed-413",
         f"{server.base_url}/v1/classify"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        with contextlib.suppress(BrokenPipeError):  # curl may stop reading once refused
            proc.stdin.write(b'{"text": "' + b"y" * (MAX_BODY + 40_000))
            proc.stdin.flush()
        # The answer is logged while the body is still open: nothing past the limit was read.
        logged = server.wait_for_log(
            lambda e: e.get("request_id") == "streamed-413" and e.get("message") == "request"
        )
        assert logged and logged[0]["status"] == 413
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        assert proc.wait(10) == 0
    output = proc.stdout.read().decode()
    assert output.startswith("HTTP/2 413") and "/problems/body-too-large" in output


@pytest.mark.parametrize("size", [2 * MAX_BODY, 4 * 1024 * 1024])
async def test_httpx_streaming_an_oversized_body_over_http2_gets_the_413(
    server: ServerProcess, double: OllamaDouble, size: int
) -> None:
    # httpx sends the whole body before it reads the answer: the server must take the rest
    # of the body after its 413 (and not reset the stream), or httpx fails the request.
    async def body() -> AsyncIterator[bytes]:  # a generator: no Content-Length
        yield b'{"text": "'
        for _ in range(size // 65536 + 1):
            yield b"y" * 65536
        yield b'"}'

    for attempt in range(10):
        async with h2_client(server) as http:  # a new connection each time
            response = await http.post(
                "/v1/classify", content=body(), headers={"content-type": "application/json"}
            )
            assert response.http_version == "HTTP/2"
            document = problem(response, 413, "/body-too-large")
            assert str(MAX_BODY) in document["detail"], attempt
            # The connection is still good for the next request.
            assert (await http.get("/healthz")).status_code == 200
    assert double.chat_requests == []


async def test_malformed_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/classify",
        content=b'{"text": "unterminated',
        headers={"content-type": "application/json"},
    )
    body = problem(response, 422, "/validation-error")
    assert body["errors"][0]["type"] == "json_invalid"
    assert body["detail"] == "the request body is not valid JSON"


@pytest.mark.parametrize(
    ("payload", "error_type"),
    [
        ({}, "value_error"),
        ({"text": "a", "texts": ["b"]}, "value_error"),
        ({"text": 5}, "string_type"),
        ({"texts": "not a list"}, "list_type"),
        ({"text": "a", "modle": "switch-moe"}, "extra_forbidden"),
        ([1, 2, 3], "model_attributes_type"),
    ],
)
async def test_schema_violations_are_422(
    client: httpx.AsyncClient, payload: Any, error_type: str
) -> None:
    response = await client.post("/v1/classify", json=payload)
    body = problem(response, 422, "/validation-error")
    assert error_type in [error["type"] for error in body["errors"]]
    assert all(error["loc"][0] == "body" for error in body["errors"])
    assert all("input" not in error for error in body["errors"])


JSON_BODY_ROUTES = ["/v1/classify", "/v1/moderate", "/v1/moderations", "/v1/chat/completions"]


@pytest.mark.parametrize("path", JSON_BODY_ROUTES)
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_a_body_not_declared_json_is_415_naming_the_type(
    client: httpx.AsyncClient, double: OllamaDouble, path: str, content_type: str | None
) -> None:
    # A valid JSON body, sent without saying so (curl -d without -H sends a form type).
    payload = {
        "/v1/classify": {"text": "A fine film."},
        "/v1/moderate": {"text": "A fine film."},
        "/v1/moderations": {"input": "A fine film."},
        "/v1/chat/completions": {
            "model": "llama3.2:1b",
            "messages": [{"role": "user", "content": "Hi"}],
        },
    }[path]
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post(path, content=json.dumps(payload).encode(), headers=headers)
    body = problem(response, 415, "/unsupported-media-type")
    assert body["type"] == "/problems/unsupported-media-type"
    assert body["accepted"] == ["application/json"]
    assert "application/json" in body["detail"]
    assert (content_type or "no Content-Type") in body["detail"]
    assert response.headers["accept"] == "application/json"
    assert double.chat_requests == []  # refused before anything was screened
    if path in ("/v1/moderations", "/v1/chat/completions"):
        assert body["error"]["code"] == "unsupported-media-type"  # OpenAI clients read this


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "application/merge+json"],
)
async def test_json_content_types_are_taken(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post(
        "/v1/classify", content=b'{"text": "A fine film."}', headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text


async def test_routes_without_a_body_need_no_content_type(client: httpx.AsyncClient) -> None:
    for path in ("/v1/models", "/healthz", "/problems/unsupported-media-type"):
        assert (await client.get(path)).status_code == 200
    described = (await client.get("/problems/unsupported-media-type")).json()
    assert described["status"] == 415


async def test_the_openapi_document_names_the_415(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in JSON_BODY_ROUTES:
        assert "415" in paths[path]["post"]["responses"], path


async def test_batch_over_the_limit_is_422(client: httpx.AsyncClient, double: OllamaDouble) -> None:
    response = await client.post("/v1/classify", json={"texts": ["fine"] * 9})
    body = problem(response, 422, "/validation-error")
    assert body["errors"] == [
        {"loc": ["body", "texts"], "msg": "9 texts; at most 8 per request", "type": "too_long",
         "ctx": {"max_length": "8"}}
    ]  # fmt: skip
    assert double.chat_requests == []


async def test_text_over_the_limit_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/classify", json={"text": "z" * 2001})
    body = problem(response, 422, "/validation-error")
    assert body["errors"][0]["loc"] == ["body", "text"]
    assert body["errors"][0]["type"] == "string_too_long"
    response = await client.post("/v1/classify", json={"texts": ["ok", "z" * 2001]})
    assert problem(response, 422, "/validation-error")["errors"][0]["loc"] == ["body", "texts", 1]


async def test_moderate_validation(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/moderate", json={"messages": [{"role": "system", "content": "x"}]}
    )
    body = problem(response, 422, "/validation-error")
    assert body["errors"][0]["loc"][:4] == ["body", "messages", 0, "role"]
    response = await client.post("/v1/moderate", json={"text": "q" * 2001})
    assert problem(response, 422, "/validation-error")["errors"][0]["loc"] == ["body", "text"]


async def test_unknown_model_is_404(client: httpx.AsyncClient, double: OllamaDouble) -> None:
    response = await client.post("/v1/classify", json={"text": "fine", "model": "gpt-9"})
    body = problem(response, 404, "/model-not-found")
    assert body["model"] == "gpt-9"
    assert body["available"] == ["sentiment-cnn-int4", "sentiment-cnn-int8"]
    assert double.chat_requests == []
    # An empty name is not the default: only a name left out is.
    response = await client.post("/v1/classify", json={"text": "fine", "model": ""})
    assert problem(response, 404, "/model-not-found")["model"] == ""
    # A long name is not echoed whole.
    response = await client.post("/v1/classify", json={"text": "fine", "model": "g" * 10_000})
    body = problem(response, 404, "/model-not-found")
    assert body["model"] == "g" * 100 + "... (10000 characters)"
    assert len(response.content) < 1_000


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    body = problem(await client.get("/v2/classify"), 404, "about:blank")
    assert body["title"] == "Not Found"


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/classify")
    body = problem(response, 405, "about:blank")
    assert body["title"] == "Method Not Allowed"
    assert "POST" in response.headers["allow"]


async def test_problem_types_are_documented(client: httpx.AsyncClient) -> None:
    response = await client.get("/problems/content-blocked")
    assert response.status_code == 200
    assert response.json()["status"] == 400 and response.json()["description"]


@pytest.mark.parametrize(
    "raw",
    [b"", b"null", b"\xff\xfe\x00garbage", b"[" * 5000, b'{"text": 1e999999}',
     b'{"text": "\\ud800"}', b'{"texts": ["fine", "\\udfff"]}', b'{"text": "   "}'],
)  # fmt: skip
async def test_garbage_is_never_a_500(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/v1/classify", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code in (400, 413, 422), response.text
    assert response.headers["content-type"] == PROBLEM_JSON
