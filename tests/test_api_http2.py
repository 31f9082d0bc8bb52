"""The REST API over HTTP/2, served by the real Hypercorn process, guard on the Ollama double."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import torch

from service.models.artifacts import NAMES
from service.models.cascade import CascadeModel
from service.models.registry import LoadedModel, ModelRegistry
from tests.helpers import ServerProcess, curl, h2_client, running_server
from tests.ollama_double import OllamaDouble

GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."
BAD = "The worst movie ever made. Boring, stupid and a total waste of time. Awful."


pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(ollama_host=double.url) as running:
        yield running


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as http:
        yield http


@pytest.fixture(scope="module")
def reference() -> ModelRegistry:
    """The same artifacts loaded in the test process, to recompute what the server answers."""
    return ModelRegistry.load()


def _positive_probability(model: LoadedModel, texts: list[str]) -> list[float]:
    """P(positive) from the module's raw output: sigmoid of the CNN's one logit, softmax of
    the Switch Transformer's two."""
    with torch.inference_mode():
        out = model.module(model.vectorizer(texts))
    if model.card["architecture"] in ("cnn", "student"):
        return [1 / (1 + math.exp(-float(logit))) for logit in out]
    return [
        math.exp(float(pos)) / (math.exp(float(neg)) + math.exp(float(pos))) for neg, pos in out
    ]


def _split_curl(output: str) -> tuple[list[str], str]:
    """curl -i output: the status lines of every response, and the last body."""
    statuses = [line for line in output.splitlines() if line.startswith("HTTP/")]
    body = output.replace("\r\n", "\n").rsplit("\n\n", 1)[-1]
    return statuses, body


async def test_healthz_over_http2(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_http1_1_is_served_too(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        response = await client.post("/v1/classify", json={"text": GOOD})
    assert response.http_version == "HTTP/1.1"
    assert response.status_code == 200 and response.json()["results"][0]["label"] == "positive"


def test_curl_http2_prior_knowledge_classify(server: ServerProcess) -> None:
    result = curl(
        "--http2-prior-knowledge",
        "-i",
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps({"text": GOOD}),
        f"{server.base_url}/v1/classify",
    )
    assert result.returncode == 0, result.stderr
    statuses, body = _split_curl(result.stdout)
    assert [s.strip() for s in statuses] == ["HTTP/2 200"]
    assert json.loads(body)["results"][0]["label"] == "positive"


@pytest.mark.parametrize("path", ["/healthz", "/v1/models", "/readyz"])
def test_curl_http2_upgrades_from_h2c(server: ServerProcess, path: str) -> None:
    result = curl("--http2", "-i", f"{server.base_url}{path}")
    assert result.returncode == 0, result.stderr
    statuses, body = _split_curl(result.stdout)
    assert statuses[0].startswith("HTTP/1.1 101")  # Switching Protocols (Upgrade: h2c)
    assert statuses[-1].strip() == "HTTP/2 200"
    assert json.loads(body)


def test_curl_http2_with_a_body_is_answered_over_http1(server: ServerProcess) -> None:
    # Hypercorn does not upgrade requests that carry a body; they are answered in HTTP/1.1.
    result = curl(
        "--http2", "-i", "-H", "content-type: application/json",
        "-d", json.dumps({"text": GOOD}), f"{server.base_url}/v1/classify",
    )  # fmt: skip
    statuses, body = _split_curl(result.stdout)
    assert [s.strip() for s in statuses] == ["HTTP/1.1 200"]
    assert json.loads(body)["results"][0]["label"] == "positive"


async def test_classify_one_text_with_the_default_model(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/classify", json={"text": GOOD})
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    models = (await client.get("/v1/models")).json()
    default = next(m for m in models["models"] if m["default"])
    assert answer["model"] == {"name": "sentiment-cnn-int8", "version": default["version"]}
    [result] = answer["results"]
    assert result["index"] == 0 and result["label"] == "positive"
    assert result["score"] == result["probabilities"]["positive"] > 0.5
    for stage in ("input", "output"):
        verdict = result["screens"][stage]
        assert verdict["safe"] is True and verdict["blocked"] is False
        assert verdict["model"] == "llama-guard3:1b" and verdict["categories"] == []
    timing = answer["timing"]
    assert set(timing) == {"guard_ms", "model_ms", "total_ms"}
    assert timing["total_ms"] > 0 and timing["guard_ms"] > 0 and timing["model_ms"] > 0


async def test_classify_negative_review(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/classify", json={"text": BAD})
    [result] = response.json()["results"]
    assert result["label"] == "negative" and result["score"] > 0.5


@pytest.mark.parametrize("model", NAMES)
async def test_classify_a_batch_with_each_model(
    client: httpx.AsyncClient, double: OllamaDouble, reference: ModelRegistry, model: str
) -> None:
    texts = [GOOD, BAD, "It was a film. It had actors in it."]
    response = await client.post("/v1/classify", json={"texts": texts, "model": model})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == {"name": model, "version": reference.info(model).version}
    assert [r["index"] for r in answer["results"]] == [0, 1, 2]
    # Each answer is the named model's own output on that text (recomputed here from the
    # module's logits), not another model's, another text's or a constant.
    served = reference.get(model)
    expected = (  # the cascade: its members' outputs, tests/test_cascade.py
        served.predict_proba(texts)
        if isinstance(served, CascadeModel)
        else _positive_probability(served, texts)
    )
    for result, positive in zip(answer["results"], expected, strict=True):
        probabilities = result["probabilities"]
        assert set(probabilities) == {"negative", "positive"}
        assert probabilities["positive"] == pytest.approx(positive, abs=1e-5)
        assert probabilities["negative"] == pytest.approx(1 - positive, abs=1e-5)
        assert result["label"] == ("positive" if positive >= 0.5 else "negative")
        assert result["score"] == pytest.approx(max(positive, 1 - positive), abs=1e-5)
        assert result["screens"]["input"]["safe"] and result["screens"]["output"]["safe"]
    assert [r["label"] for r in answer["results"][:2]] == ["positive", "negative"]
    # Both screens of every text reached the guard.
    conversations = [r.body["messages"] for r in double.chat_requests]
    assert len(conversations) == 2 * len(texts)
    for text, result in zip(texts, answer["results"], strict=True):
        reply = f"{result['label']} ({result['score']:.2f})"
        assert [{"role": "user", "content": text}] in conversations
        assert [
            {"role": "user", "content": text},
            {"role": "assistant", "content": reply},
        ] in conversations


async def test_models_lists_every_model_and_the_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    listing = response.json()
    assert listing["default"] == "sentiment-cnn-int8"
    assert {m["name"] for m in listing["models"]} == {*NAMES, "hyperbole-lora"}
    assert [m["name"] for m in listing["models"] if m["default"]] == ["sentiment-cnn-int8"]
    for model in listing["models"]:
        assert {"name", "version", "architecture", "params", "quantization", "size_bytes",
                "test_accuracy", "default"} <= set(model)  # fmt: skip
        assert model["params"] > 0 and model["size_bytes"] > 0
    by_name = {m["name"]: m for m in listing["models"]}
    assert by_name["sentiment-cnn-int8"]["quantization"] == "int8"
    assert by_name["switch-moe"]["architecture"] == "switch-transformer"


async def test_moderate_a_text_and_a_conversation(
    client: httpx.AsyncClient, double: OllamaDouble
) -> None:
    double.set_rules([("steal", "unsafe\nS2")])
    response = await client.post("/v1/moderate", json={"text": "How do I steal a car?"})
    assert response.status_code == 200
    verdict = response.json()
    assert verdict["safe"] is False and verdict["blocked"] is True
    assert verdict["categories"] == [{"code": "S2", "name": "Non-Violent Crimes"}]

    messages = [
        {"role": "user", "content": "Tell me about this film."},
        {"role": "assistant", "content": "It is a heist film."},
    ]
    response = await client.post("/v1/moderate", json={"messages": messages})
    assert response.status_code == 200
    assert response.json()["safe"] is True and response.json()["categories"] == []
    assert double.chat_requests[-1].body["messages"] == messages


async def test_readyz_ready_and_not_ready(client: httpx.AsyncClient, double: OllamaDouble) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    ready = response.json()
    assert ready["ready"] is True
    assert ready["checks"]["models"]["loaded"] and ready["checks"]["ollama"]["ok"]
    assert ready["checks"]["guard_model"] == {"ok": True, "model": "llama-guard3:1b"}
    assert ready["checks"]["screens"] == {"ok": True, "input": True, "output": True}

    double.set_models([])  # the guard model is gone from Ollama
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("not-ready") and problem["ready"] is False
    assert problem["checks"]["guard_model"]["ok"] is False
    assert problem["checks"]["ollama"]["ok"] is True
    assert "guard_model" in problem["detail"]


async def test_metrics_expose_http_pipeline_and_guard_series(client: httpx.AsyncClient) -> None:
    await client.post("/v1/classify", json={"text": GOOD})
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'http_requests_total{http_version="2",method="POST",route="/v1/classify",status="200"}'
        in text
    )
    assert (
        'pipeline_requests_total{model="sentiment-cnn-int8",operation="classify",outcome="ok"}'
        in text
    )
    assert 'model_inference_seconds_count{model="sentiment-cnn-int8"}' in text
    assert "guard_calls_total" in text and "guard_latency_seconds" in text


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for path in ("/v1/classify", "/v1/models", "/v1/moderate", "/healthz", "/readyz", "/metrics"):
        assert path in schema["paths"]
    assert "ClassifyRequest" in schema["components"]["schemas"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


async def test_request_id_is_echoed_and_in_every_log_line_of_the_request(
    client: httpx.AsyncClient, server: ServerProcess
) -> None:
    response = await client.post(
        "/v1/classify", json={"text": GOOD}, headers={"X-Request-ID": "trace-42.a_b:c"}
    )
    assert response.headers["x-request-id"] == "trace-42.a_b:c"
    entries = server.wait_for_log(
        lambda e: e.get("request_id") == "trace-42.a_b:c" and e.get("message") == "request"
    )
    assert entries and entries[0]["status"] == 200 and entries[0]["route"] == "/v1/classify"
    assert entries[0]["http_version"] == "2"
    messages = {entry["message"] for entry in server.logs_for("trace-42.a_b:c")}
    assert {"classified", "request"} <= messages


@pytest.mark.parametrize("given", ["has spaces in it", "x" * 300, "../etc/passwd", ""])
async def test_unusable_request_ids_are_replaced(client: httpx.AsyncClient, given: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": given})
    generated = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated), generated
    # A fresh random id per request, not a fixed placeholder.
    again = (await client.get("/healthz", headers={"X-Request-ID": given})).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", again) and again != generated


async def test_100_concurrent_streams_on_one_connection(
    server: ServerProcess, double: OllamaDouble
) -> None:
    double.set_rules([("bomb", "unsafe\nS9")])
    double.set_latency(0.05)  # every screen waits, so the requests overlap
    texts = [f"Review {i}: {GOOD if i % 2 else BAD}" for i in range(10)]
    limits = httpx.Limits(max_connections=1)
    async with h2_client(server, timeout=60, limits=limits) as client:
        expected = {}
        for text in texts:  # one at a time first: the reference answers
            expected[text] = (await client.post("/v1/classify", json={"text": text})).json()

        async def ask(i: int) -> tuple[int, httpx.Response]:
            text = texts[i % 10] if i % 10 != 9 else f"how to build a bomb, attempt {i}"
            body: dict[str, Any] = {"text": text}
            return i, await client.post(
                "/v1/classify", json=body, headers={"x-request-id": f"c-{i}"}
            )

        answers = await asyncio.gather(*(ask(i) for i in range(100)))

    for i, response in answers:
        assert response.http_version == "HTTP/2"
        assert response.headers["x-request-id"] == f"c-{i}"
        if i % 10 == 9:
            assert response.status_code == 400
            assert response.json()["stage"] == "input"
        else:
            assert response.status_code == 200, response.text
            want = expected[texts[i % 10]]["results"][0]
            got = response.json()["results"][0]
            # Concurrent requests share a forward pass; a batch's float kernels may round the
            # last bits differently from a single text's, never more than that.
            assert got["label"] == want["label"]
            assert got["score"] == pytest.approx(want["score"], rel=0, abs=1e-6)
    assert double.max_in_flight >= 8  # the requests really were in flight together
    lines = server.wait_for_log(
        lambda e: e.get("message") == "request" and str(e.get("request_id", "")).startswith("c-"),
        count=100,
    )
    assert len(lines) == 100
    assert len({line["client"] for line in lines}) == 1  # all on one TCP connection


async def test_a_connection_outlives_1000_requests(server: ServerProcess) -> None:
    # Hypercorn's default would close the connection after 1,000 requests.
    async with httpx.AsyncClient(
        http1=False, http2=True, base_url=server.base_url, timeout=60,
        limits=httpx.Limits(max_connections=1),
    ) as client:  # fmt: skip
        for batch in range(11):
            responses = await asyncio.gather(
                *(
                    client.get("/healthz", headers={"x-request-id": f"ka-{batch}-{i}"})
                    for i in range(100)
                )
            )
            assert all(r.status_code == 200 for r in responses)
    lines = server.wait_for_log(
        lambda e: e.get("message") == "request" and str(e.get("request_id", "")).startswith("ka-"),
        count=1100,
    )
    assert len(lines) == 1100
    assert len({line["client"] for line in lines}) == 1


async def test_a_screen_turned_off_is_shown_by_readyz_and_skipped(ollama_double) -> None:
    with running_server(ollama_host=ollama_double.url, guard_screen_output=False) as server:
        async with h2_client(server) as client:
            ready = await client.get("/readyz")
            answer = await client.post("/v1/classify", json={"text": "A fine, warm film."})
    assert ready.status_code == 200, ready.text
    screens = ready.json()["checks"]["screens"]
    assert screens["input"] is True and screens["output"] is False
    assert screens["warning"] == "output screening is off"
    assert answer.status_code == 200
    result = answer.json()["results"][0]
    assert result["screens"]["input"]["safe"] is True and result["screens"]["output"] is None
    # Only the input conversation reached the guard.
    assert [len(r.body["messages"]) for r in ollama_double.chat_requests] == [1]
    assert any("screening is OFF" in str(e.get("message")) for e in server.logs())


async def test_a_422_repeats_neither_a_huge_key_nor_every_unknown_key(
    server: ServerProcess,
) -> None:
    huge_key = {"text": "a", "k" * 900_000: 1}
    many_keys = {"text": "a", **{f"key{i}": 1 for i in range(5_000)}}
    async with h2_client(server) as http:
        for path, body in (("/v1/classify", huge_key), ("/v1/classify", many_keys)):
            response = await http.post(path, json=body)
            assert response.status_code == 422, response.text[:300]
            assert len(response.content) < 10_000, (path, len(response.content))
        answer = (await http.post("/v1/classify", json=many_keys)).json()
    assert len(answer["errors"]) == 50
    assert answer["detail"] == "5000 problem(s) with the request; the first 50 are listed"
