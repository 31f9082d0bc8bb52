"""Proof that no route reaches a model, or returns its result, except through the
GuardedPipeline with both screens; and error answers that need a fault injected into the app
(the last-resort 500, the request timeout, an unreachable Ollama), exercised in-process."""

from __future__ import annotations

import ast
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from service.app import create_app
from service.config import Settings
from service.guard import LlamaGuard
from service.models.registry import ModelRegistry
from tests.helpers import SpyRegistry
from tests.ollama_double import OllamaDouble

REPO = Path(__file__).resolve().parents[1]
MODEL = "sentiment-cnn-int8"

A2A_1 = {"A2A-Version": "1.0"}


SENT_TEXTS = {"A lovely film.", "A dreadful film."}  # every text _requests() sends


def _requests() -> list[tuple[dict[str, str], dict[str, Any]]]:
    """(headers, body) pairs that a model-reaching route could accept: the REST shapes and
    the A2A message shapes (JSON-RPC and HTTP+JSON, protocol 1.0 and 0.3). Every route is
    tried with each."""
    text = "A lovely film."
    part_1 = {"text": text}
    part_03 = {"kind": "text", "text": text}

    def message(role: str, part: dict[str, Any]) -> dict[str, Any]:
        return {"role": role, "messageId": uuid.uuid4().hex, "parts": [part]}

    return [
        ({}, {"text": text}),
        ({}, {"texts": [text, "A dreadful film."]}),
        ({}, {"messages": [{"role": "user", "content": text}]}),
        ({}, {"text": text, "model": MODEL}),
        (A2A_1, {"jsonrpc": "2.0", "id": 1, "method": "SendMessage",
                 "params": {"message": message("ROLE_USER", part_1)}}),
        ({}, {"jsonrpc": "2.0", "id": 2, "method": "message/send",
              "params": {"message": message("user", part_03)}}),
        (A2A_1, {"message": message("ROLE_USER", part_1)}),
        ({}, {"message": message("user", part_03)}),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(names=[MODEL])


@pytest.fixture
async def make_client(
    guard_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Any]]:
    stack: list[Any] = []

    async def make(registry: Any, **overrides: Any) -> tuple[FastAPI, httpx.AsyncClient]:
        values = {"guard_retries": 0, "guard_cache_size": 0, "default_model": MODEL}
        settings = guard_settings(**{**values, **overrides})
        guard = LlamaGuard(settings)
        app = create_app(settings, registry=registry, scanner=guard)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        stack.append((lifespan, client, guard))
        return app, client

    yield make
    for lifespan, client, guard in stack:
        await client.aclose()
        await lifespan.__aexit__(None, None, None)
        await guard.aclose()


def _concrete(path: str) -> str:
    # Path parameters get a plausible value.
    return path.replace("{slug}", "content-blocked").replace("{", "").replace("}", "")


async def _walk_every_route(
    app: FastAPI, client: httpx.AsyncClient
) -> tuple[list[httpx.Response], list[str]]:
    """Every route with every method and request shape: the answers, and the calls that got
    no answer at all (as "METHOD /path: ExceptionName")."""
    failures: list[str] = []
    responses = []
    for route in iter_route_contexts(app.routes):
        if route.path is None:
            continue
        for method in sorted(route.methods or {"GET"}):
            if method == "HEAD":
                continue
            requests = _requests() if method in ("POST", "PUT", "PATCH") else [({}, None)]
            for headers, body in requests:
                try:
                    response = await client.request(
                        method, _concrete(route.path), json=body, headers=headers
                    )
                except Exception as exc:  # no answer at all is no leak
                    # A streaming route may fail after its response started; the server
                    # then resets the stream, so nothing reaches the client.
                    failures.append(f"{method} {route.path}: {type(exc).__name__}")
                    continue
                responses.append(response)
    return responses, failures


def _results_in(response: httpx.Response) -> list[dict[str, Any]]:
    """Every model prediction anywhere in a JSON or server-sent-events answer (a dict whose
    label is a class)."""
    content_type = response.headers.get("content-type", "")
    if "json" in content_type:
        documents = [response.json()]
    elif "text/event-stream" in content_type:
        documents = [
            json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")
        ]
    else:
        return []
    found: list[dict[str, Any]] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("label") in ("positive", "negative") and "score" in node:
                found.append(node)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(documents)
    return found


def _assert_every_call_answered(failures: list[str]) -> None:
    """Only a stream may end without an answer (reset after it started); every other call
    answers, so a walk cannot pass by raising everywhere."""
    unanswered = [f for f in failures if not re.search(r":(stream|subscribe): ", f)]
    assert unanswered == [], unanswered


def _assert_only_inside_classify(calls: list[dict[str, Any]]) -> None:
    """The spy saw the model run, only inside the pipeline's classify, only on texts sent."""
    assert calls, "no route reached the model: the walk proves nothing"
    assert {call["pipeline"] for call in calls} == {"classify"}
    assert {text for call in calls for text in call["texts"]} <= SENT_TEXTS


async def test_every_route_reaches_models_only_through_the_pipeline(
    make_client: Callable[..., Any], registry: ModelRegistry, ollama_double: OllamaDouble
) -> None:
    spy = SpyRegistry(registry)
    app, client = await make_client(spy)
    assert [call["pipeline"] for call in spy.calls] == [
        "warm_up"
    ]  # start-up ran the model once, inside the pipeline
    spy.calls.clear()

    # LlamaGuard says safe: results come back, and each carries both screens' verdicts.
    responses, failures = await _walk_every_route(app, client)
    _assert_every_call_answered(failures)
    calls = len(responses) + len(failures)
    with_results = [r for r in responses if _results_in(r)]
    paths = {r.request.url.path for r in with_results}
    # REST and A2A (JSON-RPC at / and at its own path, HTTP+JSON) all answered.
    assert {"/v1/classify", "/"} <= paths and any(p.startswith("/a2a/") for p in paths)
    for response in with_results:
        for result in _results_in(response):
            assert result["screens"]["input"]["safe"] is True
            assert result["screens"]["output"]["safe"] is True
    _assert_only_inside_classify(spy.calls)

    # LlamaGuard says unsafe to everything: no route returns any model result. The verdicts
    # are slowed down so the inference that runs alongside the input screen has started
    # before each refusal: those model calls must be inside classify too.
    ollama_double.set_rules(default="unsafe\nS1")
    ollama_double.set_latency(0.05)
    spy.calls.clear()
    responses, failures = await _walk_every_route(app, client)
    _assert_every_call_answered(failures)
    assert len(responses) + len(failures) == calls
    assert not [r for r in responses if _results_in(r)]
    _assert_only_inside_classify(spy.calls)
    ollama_double.set_latency(0.0)

    # LlamaGuard blocks only replies: the model runs, its answers are still never returned.
    ollama_double.set_rules([("positive (", "unsafe\nS5"), ("negative (", "unsafe\nS5")])
    spy.calls.clear()
    responses, failures = await _walk_every_route(app, client)
    _assert_every_call_answered(failures)
    assert len(responses) + len(failures) == calls
    _assert_only_inside_classify(spy.calls)
    assert not [r for r in responses if _results_in(r)]
    blocked = [
        r.json()
        for r in responses
        if r.headers.get("content-type") == "application/problem+json" and r.status_code == 400
    ]
    assert blocked and all(b["stage"] == "output" for b in blocked)


def _entry_point_modules() -> list[Path]:
    roots = [REPO / "service" / name for name in ("rest", "web", "a2a")] + [REPO / "agents"]
    files = [path for root in roots if root.is_dir() for path in root.rglob("*.py")]
    return [*files, REPO / "service" / "app.py"]


def test_request_entry_points_never_call_the_registry() -> None:
    # Static half of the proof: code that handles requests (REST routes, the A2A agents, app
    # wiring) never calls predict, nor reaches into the pipeline's registry.
    offenders = []
    for path in _entry_point_modules():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("predict", "predict_proba",
                                                                 "_registry"):  # fmt: skip
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} .{node.attr}")
    assert offenders == []


async def test_unexpected_error_is_a_500_problem_without_a_stack_trace(
    make_client: Callable[..., Any],
    registry: ModelRegistry,
    ollama_double: OllamaDouble,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spy = SpyRegistry(registry)
    _, client = await make_client(spy)
    spy.fail = True  # healthy at start-up, broken by the time the request arrives
    with caplog.at_level(logging.ERROR):
        response = await client.post(
            "/v1/classify", json={"text": "A film."}, headers={"x-request-id": "boom-1"}
        )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/internal-error") and body["status"] == 500
    assert body["request_id"] == "boom-1" == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "corrupted" not in response.text
    # The details are in the log instead.
    assert any("corrupted" in str(record.exc_info) for record in caplog.records)


async def test_request_timeout_is_a_504_problem(
    make_client: Callable[..., Any], registry: ModelRegistry, ollama_double: OllamaDouble
) -> None:
    _, client = await make_client(registry, request_timeout=0.5, guard_timeout=5.0)
    ollama_double.set_latency(2.0)
    started = time.monotonic()
    response = await client.post("/v1/classify", json={"text": "A film."})
    assert time.monotonic() - started < 1.5
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/request-timeout")
    assert response.headers["retry-after"]


async def test_unreachable_ollama_refuses_and_is_not_ready(
    make_client: Callable[..., Any], registry: ModelRegistry, closed_port: int
) -> None:
    _, client = await make_client(
        registry, ollama_host=f"http://127.0.0.1:{closed_port}", guard_retry_after=11
    )
    response = await client.post("/v1/classify", json={"text": "A film."})
    assert response.status_code == 503 and response.headers["retry-after"] == "11"
    assert response.json()["kind"] == "connection"
    assert (await client.post("/v1/moderate", json={"text": "hello"})).status_code == 503
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["ollama"]["ok"] is False
    assert (await client.get("/healthz")).status_code == 200  # alive, not ready
