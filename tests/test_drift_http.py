"""The drift monitor in the running service, over HTTP/2: a window of IMDB test reviews is no
drift, a window of code-review comments is (length, word count, vocabulary), the Prometheus
gauges and the log follow, the window forgets once full, nothing keeps a raw text, the
offline Evidently report agrees with the online verdicts, and the A2A drift-report answer
passes both screens."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import parse_agent_card
from a2a.helpers import get_data_parts
from a2a.types import Message, Part, Role, SendMessageRequest, TaskState
from google.protobuf.struct_pb2 import Value
from prometheus_client.parser import text_string_to_metric_families

from service.drift.report import build_report
from service.models.artifacts import PACKAGE_ARTIFACTS
from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

pytestmark = pytest.mark.usefixtures("fresh_double")

FIXTURES = Path(__file__).parent / "fixtures"
CNN = "sentiment-cnn-int8"
MOE = "switch-moe"
WINDOW = 200
BATCH = 50
DRIFT_SETTINGS = {
    "models": f"{CNN},{MOE}",
    "drift_window": WINDOW,
    "drift_min_window": 100,
    "drift_check_every": BATCH,
    "drift_check_interval": 600,  # checks come from the text count only: deterministic
}


def _texts(name: str) -> list[str]:
    with gzip.open(FIXTURES / name, "rt", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    random.Random(7).shuffle(texts)  # the IMDB sample alternates labels in runs
    return texts


IMDB = _texts("imdb_test_sample.jsonl.gz")
CODE = _texts("code_reviews_sample.jsonl.gz")


@pytest.fixture(scope="module")
def server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    port = free_port()  # the agent card names it
    public_url = f"http://127.0.0.1:{port}"
    with running_server(
        ollama_host=double.url, port=port, public_url=public_url, **DRIFT_SETTINGS
    ) as running:
        yield running


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server, timeout=60) as client:
        yield client


async def send(http: httpx.AsyncClient, texts: list[str], model: str) -> None:
    for start in range(0, len(texts), BATCH):
        response = await http.post(
            "/v1/classify", json={"texts": texts[start : start + BATCH], "model": model}
        )
        assert response.status_code == 200, response.text
        assert response.http_version == "HTTP/2"


async def checked(http: httpx.AsyncClient, model: str, observed: int) -> dict[str, Any]:
    """The model's entry of /v1/drift once the check of its first ``observed`` texts ran."""
    for _ in range(300):
        response = await http.get("/v1/drift", params={"model": model})
        assert response.status_code == 200 and response.http_version == "HTTP/2"
        [entry] = response.json()["models"]
        if entry["check"] is not None and entry["check"]["observed"] == observed:
            return entry
        await asyncio.sleep(0.05)
    raise AssertionError(f"no drift check of {observed} texts for {model}: {entry}")


def verdicts(entry: dict[str, Any]) -> dict[str, bool]:
    return {f["feature"]: f["drift"] for f in entry["check"]["features"]}


async def gauges(http: httpx.AsyncClient, model: str) -> dict[tuple[str, str], float]:
    """(metric, feature) -> value of the drift gauges of ``model``."""
    text = (await http.get("/metrics")).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("drift_") and sample.labels.get("model") == model:
                values[(sample.name, sample.labels.get("feature", ""))] = sample.value
    return values


async def test_code_reviews_drift_where_imdb_does_not_and_the_window_forgets(
    http: httpx.AsyncClient, server: ServerProcess
) -> None:
    await send(http, IMDB[:WINDOW], CNN)
    entry = await checked(http, CNN, WINDOW)
    assert entry["monitored"] and entry["drift"] is False
    assert not any(verdicts(entry).values()), entry["check"]["features"]
    calm = await gauges(http, CNN)
    assert calm[("drift_detected", "length")] == 0 and calm[("drift_model_drifted", "")] == 0

    await send(http, CODE[:WINDOW], CNN)
    entry = await checked(http, CNN, 2 * WINDOW)
    drifted = verdicts(entry)
    assert entry["drift"] is True
    assert drifted["length"] and drifted["words"] and drifted["tokens"], drifted
    assert entry["window"] == {
        "texts": WINDOW, "max_texts": WINDOW, "min_texts": 100, "observed": 2 * WINDOW,
    }  # fmt: skip
    gained = [w["word"] for w in entry["check"]["words"]["gained"]]
    lost = [w["word"] for w in entry["check"]["words"]["lost"]]
    assert {"film", "movie"} & set(lost) and {"test", "function", "def"} & set(gained)
    hot = await gauges(http, CNN)
    limits = {f["feature"]: f["threshold"] for f in entry["check"]["features"]}
    for feature in ("length", "words", "tokens"):
        assert hot[("drift_detected", feature)] == 1
        assert hot[("drift_statistic", feature)] > calm[("drift_statistic", feature)]
        assert hot[("drift_threshold", feature)] == limits[feature]
    assert hot[("drift_model_drifted", "")] == 1 and hot[("drift_window_texts", "")] == WINDOW
    entered = server.wait_for_log(lambda e: e.get("message") == "drift entered")
    assert [e["model"] for e in entered] == [CNN]
    # Logged once, at the first check that found drift (part-way into the code reviews).
    assert entered[0]["features"] and entered[0]["window"] == WINDOW

    # The other model saw none of it.
    [moe] = (await http.get("/v1/drift", params={"model": MOE})).json()["models"]
    assert moe["window"]["observed"] == 0 and moe["check"] is None

    # A full window of IMDB reviews pushes every code review out: no drift again.
    await send(http, IMDB[WINDOW:] + IMDB[: 2 * WINDOW - len(IMDB)], CNN)
    entry = await checked(http, CNN, 3 * WINDOW)
    assert entry["drift"] is False and entry["window"]["texts"] == WINDOW
    assert not any(verdicts(entry).values())
    left = server.wait_for_log(lambda e: e.get("message") == "drift left")
    assert [e["model"] for e in left] == [CNN]
    assert (await gauges(http, CNN))[("drift_model_drifted", "")] == 0


async def test_no_raw_text_in_the_drift_state_or_the_logs(
    http: httpx.AsyncClient, server: ServerProcess
) -> None:
    marker = f"zebracorn{uuid.uuid4().hex[:8]}"
    texts = [f"{marker} was an unforgettable film, said the critic.", *CODE[:24], *IMDB[:25]]
    await send(http, texts, MOE)
    await checked(http, MOE, len(texts))
    state = (await http.get("/v1/drift")).text + (await http.get("/metrics")).text
    logs = "\n".join(server.lines)
    assert marker not in state and marker not in logs
    for text in (t for t in texts if len(t) >= 20):
        probe = text[:40]  # the start of every text that was sent
        assert probe not in state and probe not in logs


async def observed(http: httpx.AsyncClient, model: str) -> int:
    [entry] = (await http.get("/v1/drift", params={"model": model})).json()["models"]
    return int(entry["window"]["observed"])


async def test_the_offline_report_agrees_with_the_online_verdicts(http: httpx.AsyncClient) -> None:
    thresholds = (await http.get("/v1/drift")).json()["settings"]["thresholds"]
    seen = await observed(http, MOE)
    verdicts_seen = []
    for window in (IMDB[:WINDOW], CODE[:WINDOW]):  # each fills the whole window
        await send(http, window, MOE)
        seen += len(window)
        entry = await checked(http, MOE, seen)
        offline, _ = build_report(
            window, model_name=MOE, root=PACKAGE_ARTIFACTS, thresholds=thresholds
        )
        online = {f["feature"]: f for f in entry["check"]["features"]}
        for feature in offline["features"]:
            name = feature["feature"]
            assert feature["drift"] == online[name]["drift"], (name, feature, online[name])
            assert feature["statistic"] == pytest.approx(online[name]["statistic"], abs=0.01)
        verdicts_seen.append((entry["drift"], offline["drift"]))
    assert verdicts_seen == [(False, False), (True, True)]


async def test_bad_queries_get_problem_documents(http: httpx.AsyncClient) -> None:
    unknown = await http.get("/v1/drift", params={"model": "no-such-model"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    assert unknown.json()["type"].endswith("model-not-found")
    empty = await http.get("/v1/drift", params={"model": ""})
    assert empty.status_code == 422
    assert empty.headers["content-type"].startswith("application/problem+json")


async def _ask_drift(http: httpx.AsyncClient, model: str) -> Any:
    card = parse_agent_card((await http.get("/.well-known/agent-card.json")).json())
    assert "drift-report" in [skill.id for skill in card.skills]
    async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as sdk_http:
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=sdk_http)).create(card)
        data = Value()
        data.struct_value.update({"skill": "drift-report", "model": model})
        request = SendMessageRequest(
            message=Message(
                role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(data=data)]
            )
        )
        [event] = [event async for event in client.send_message(request)]
    return event.task


async def test_the_a2a_drift_report_is_screened(
    http: httpx.AsyncClient, double: OllamaDouble
) -> None:
    seen = await observed(http, CNN)
    await send(http, CODE[:WINDOW], CNN)
    await checked(http, CNN, seen + WINDOW)
    double.reset()
    task = await _ask_drift(http, CNN)
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    [data] = get_data_parts(task.artifacts[0].parts)
    [entry] = data["models"]
    assert entry["model"] == CNN and entry["drift"] is True
    assert data["screens"]["input"]["safe"] and data["screens"]["output"]["safe"]
    screened = [r.body["messages"] for r in double.chat_requests]
    assert len(screened) == 2  # the request as the user's message, the report as the reply
    reply = next(m for m in screened if len(m) == 2)[-1]["content"]
    assert "drift in length" in reply and "words gained" in reply

    # The output screen blocks: the report is refused, not returned.
    double.set_rules([("words gained", "unsafe\nS10")])
    task = await _ask_drift(http, CNN)
    assert task.status.state == TaskState.TASK_STATE_REJECTED
    assert not task.artifacts
