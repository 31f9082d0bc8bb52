"""The hyperbole adapter served by the real app under Hypercorn over HTTP/2: REST and A2A,
both guard screens, failing closed, listed with its base, mixed with the base's traffic in
shared batches, and an unknown adapter refused."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import parse_agent_card
from a2a.helpers import get_data_parts
from a2a.types import Message, Role, SendMessageRequest, TaskState

from service.a2a.parts import data_part
from service.models.artifacts import PACKAGE_ARTIFACTS
from service.models.registry import ModelRegistry
from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

SHIPPED = PACKAGE_ARTIFACTS / "adapters" / "hyperbole-lora"

ADAPTER = "hyperbole-lora"
SENTENCES = [
    "I have told you a million times to close the door.",
    "This bag weighs a ton.",
    "It rained on Tuesday afternoon.",
    "The soup was a little too salty.",
]

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    port = free_port()
    with running_server(
        ollama_host=double.url, port=port, public_url=f"http://127.0.0.1:{port}",
        batch_max_wait_ms=20,
    ) as running:  # fmt: skip
        yield running


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as client:
        yield client


@pytest.fixture(scope="module")
def reference() -> ModelRegistry:
    return ModelRegistry.load(["sentiment-cnn", ADAPTER])


async def test_classify_with_the_adapter_screens_both_ways(
    http: httpx.AsyncClient, double: OllamaDouble, reference: ModelRegistry
) -> None:
    response = await http.post("/v1/classify", json={"texts": SENTENCES, "model": ADAPTER})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"]["name"] == ADAPTER
    expected = reference.predict(ADAPTER, SENTENCES)
    for result, prediction in zip(answer["results"], expected, strict=True):
        assert set(result["probabilities"]) == {"literal", "hyperbole"}
        assert result["label"] == prediction.label
        assert result["score"] == pytest.approx(prediction.score, abs=1e-5)
        assert result["screens"]["input"]["safe"] and result["screens"]["output"]["safe"]
    replies = [
        [m["content"] for m in r.body["messages"]]
        for r in double.chat_requests
        if len(r.body["messages"]) == 2
    ]
    assert sorted(replies) == sorted(
        [text, f"{r['label']} ({r['score']:.2f})"]
        for text, r in zip(SENTENCES, answer["results"], strict=True)
    )
    assert len(double.chat_requests) == 2 * len(SENTENCES)


async def test_unsafe_input_to_the_adapter_is_refused(
    http: httpx.AsyncClient, double: OllamaDouble
) -> None:
    double.set_rules([("bomb", "unsafe\nS9")])
    response = await http.post(
        "/v1/classify",
        json={"text": "I could build a bomb a million times over.", "model": ADAPTER},
    )
    assert response.status_code == 400
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["type"].endswith("/content-blocked") and "S9" in str(problem)


async def test_an_unreadable_guard_answer_refuses_the_adapter(
    http: httpx.AsyncClient, double: OllamaDouble
) -> None:
    double.set_rules([], default="perhaps")
    response = await http.post("/v1/classify", json={"text": SENTENCES[0], "model": ADAPTER})
    assert response.status_code == 503
    assert "label" not in response.text


async def test_models_lists_the_adapter_with_its_base(http: httpx.AsyncClient) -> None:
    listing = (await http.get("/v1/models")).json()
    by_name = {m["name"]: m for m in listing["models"]}
    adapter = by_name[ADAPTER]
    assert adapter["base"] == "sentiment-cnn" and "sentiment-cnn" in by_name
    card = json.loads((SHIPPED / "card.json").read_text())
    assert adapter["adapter"] == {
        "rank": 4, "alpha": 8.0, "merged": False,
        "test_auc": card["adapter_test_auc"]["auc"],
        "majority_test_accuracy": card["comparison"]["majority_class"]["test_accuracy"],
    }  # fmt: skip
    assert adapter["adapter"]["test_auc"] > 0.5
    assert adapter["labels"] == ["literal", "hyperbole"]
    assert 0.5 < adapter["test_accuracy"] < 1 and adapter["params"] > 0
    assert by_name["sentiment-cnn-int8"]["labels"] == ["negative", "positive"]
    assert "base" not in by_name["sentiment-cnn-int8"]


async def test_an_unknown_adapter_is_404_not_the_base(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/classify", json={"text": SENTENCES[0], "model": "hyperbole-lora-v9"}
    )
    assert response.status_code == 404
    assert response.json()["type"].endswith("/model-not-found")
    assert "hyperbole-lora" in response.json()["available"]


async def test_concurrent_base_and_adapter_requests_share_batches_correctly(
    server: ServerProcess, http: httpx.AsyncClient, reference: ModelRegistry
) -> None:
    async def ask(i: int) -> tuple[str, str, dict]:
        model = ADAPTER if i % 2 else "sentiment-cnn"
        text = SENTENCES[i % len(SENTENCES)]
        response = await http.post("/v1/classify", json={"text": text, "model": model})
        assert response.status_code == 200, response.text
        return model, text, response.json()["results"][0]

    before = await _batch_calls(http)
    answers = await asyncio.gather(*(ask(i) for i in range(24)))
    for model, text, result in answers:
        [alone] = reference.predict(model, [text])
        assert result["label"] == alone.label
        assert result["score"] == pytest.approx(alone.score, abs=1e-5)
    # The texts of both models went through the base's batcher: 24 calls in fewer forwards.
    calls, forwards = (
        after - first for after, first in zip(await _batch_calls(http), before, strict=True)
    )
    assert calls == 24 and forwards < 24


async def _batch_calls(http: httpx.AsyncClient) -> tuple[float, float]:
    """(calls, forward passes) the sentiment-cnn batch group has run, from /metrics."""
    text = (await http.get("/metrics")).text
    calls = forwards = 0.0
    for line in text.splitlines():
        if line.startswith('model_batch_requests_sum{model="sentiment-cnn"}'):
            calls = float(line.split()[-1])
        if line.startswith('model_batch_requests_count{model="sentiment-cnn"}'):
            forwards = float(line.split()[-1])
    return calls, forwards


async def test_the_hyperbole_skill_answers_through_the_sdk_client(
    http: httpx.AsyncClient, double: OllamaDouble, reference: ModelRegistry
) -> None:
    card = parse_agent_card((await http.get("/.well-known/agent-card.json")).json())
    assert "hyperbole" in [skill.id for skill in card.skills]
    async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as sdk_http:
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=sdk_http)).create(card)
        request = SendMessageRequest(
            message=Message(
                role=Role.ROLE_USER,
                message_id=uuid.uuid4().hex,
                parts=[data_part({"skill": "hyperbole", "texts": SENTENCES[:2]})],
            )
        )
        [event] = [event async for event in client.send_message(request)]
    assert event.task.status.state == TaskState.TASK_STATE_COMPLETED
    [result] = get_data_parts(event.task.artifacts[0].parts)
    assert result["model"]["name"] == ADAPTER
    expected = reference.predict(ADAPTER, SENTENCES[:2])
    assert [r["label"] for r in result["results"]] == [p.label for p in expected]
    assert len(double.chat_requests) == 4  # two texts, two screens each
