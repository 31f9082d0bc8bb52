"""The A2A agent over HTTP/2 on the real Hypercorn process, guard on the Ollama double:
the card, every advertised interface, both protocol versions' method names, streaming,
get/list/cancel, refusals and the protocol's own errors. No API_TOKENS here (see
test_auth.py for the protected agent)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import parse_agent_card
from a2a.helpers import get_data_parts, get_text_parts
from a2a.types import AgentCard, Message, Part, Role, SendMessageRequest, TaskState

from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."
BAD = "The worst movie ever made. Boring, stupid and a total waste of time. Awful."
V1 = {"A2A-Version": "1.0"}
MAX_BATCH = 8


pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def public_url(free_port: Callable[[], int]) -> str:
    # "localhost", not the bind address: proves the card follows PUBLIC_URL.
    return f"http://localhost:{free_port()}"


@pytest.fixture(scope="module")
def server(double: OllamaDouble, public_url: str) -> Iterator[ServerProcess]:
    port = public_url.rsplit(":", 1)[1]
    with running_server(
        ollama_host=double.url, port=port, public_url=public_url, max_batch=MAX_BATCH
    ) as running:
        yield running


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as client:
        yield client


# --- request builders and answer readers for both protocol versions ---------------------------


def message(version: str, *parts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A user message; parts given as {"text": ...} or {"data": {...}}."""
    if version == "1.0":
        return {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "parts": list(parts), **fields}
    typed = [{"kind": "text" if "text" in p else "data", **p} for p in parts]
    return {
        "role": "user",
        "kind": "message",
        "messageId": uuid.uuid4().hex,
        "parts": typed,
        **fields,
    }


SEND = {"1.0": "SendMessage", "0.3": "message/send"}
STREAM = {"1.0": "SendStreamingMessage", "0.3": "message/stream"}
GET = {"1.0": "GetTask", "0.3": "tasks/get"}
CANCEL = {"1.0": "CancelTask", "0.3": "tasks/cancel"}


async def rpc(
    http: httpx.AsyncClient,
    method: str,
    params: dict[str, Any],
    *,
    version: str = "1.0",
    path: str = "/a2a/jsonrpc",
) -> dict[str, Any]:
    """One JSON-RPC call; returns the whole response object (result or error)."""
    request_id = uuid.uuid4().hex
    response = await http.post(
        path,
        json={"jsonrpc": "2.0", "id": request_id, "method": method, "params": params},
        headers=V1 if version == "1.0" else {},
    )
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200, response.text  # JSON-RPC errors ride in a 200
    answer = response.json()
    assert answer["jsonrpc"] == "2.0" and answer["id"] == request_id
    return answer


async def send(
    http: httpx.AsyncClient, version: str, *parts: dict[str, Any], **params: Any
) -> dict[str, Any]:
    """message/send or SendMessage; the task it answers with."""
    answer = await rpc(
        http, SEND[version], {"message": message(version, *parts), **params}, version=version
    )
    assert "result" in answer, answer
    return task_of(answer["result"], version)


def task_of(result: dict[str, Any], version: str) -> dict[str, Any]:
    if version == "1.0":
        assert set(result) == {"task"}, result
        return result["task"]
    assert result["kind"] == "task", result
    return result


def state(task: dict[str, Any]) -> str:
    """'completed' for both TASK_STATE_COMPLETED (1.0) and completed (0.3)."""
    return task["status"]["state"].removeprefix("TASK_STATE_").lower().replace("_", "-")


def texts(parts: list[dict[str, Any]]) -> list[str]:
    return [part["text"] for part in parts if "text" in part]


def datas(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [part["data"] for part in parts if "data" in part]


def only_artifact(task: dict[str, Any]) -> tuple[dict[str, Any], str]:
    [artifact] = task["artifacts"]
    [data] = datas(artifact["parts"])
    [summary] = texts(artifact["parts"])
    return data, summary


async def sse(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> list[dict[str, Any]]:
    """POST and read a server-sent-event stream to its end; the JSON of every event."""
    events: list[dict[str, Any]] = []
    async with http.stream("POST", path, json=body, headers=headers) as response:
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        data: list[str] = []
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                events.append(json.loads("\n".join(data)))
                data = []
    return events


async def rest_classify(http: httpx.AsyncClient, texts_: list[str], model: str) -> dict:
    response = await http.post("/v1/classify", json={"texts": texts_, "model": model})
    assert response.status_code == 200, response.text
    return response.json()


def same_results(a2a: dict[str, Any], rest: dict[str, Any]) -> None:
    """The A2A data part holds the REST answer's objects (timings aside)."""
    assert a2a["model"] == rest["model"]
    assert set(a2a) == set(rest) == {"model", "results", "timing"}
    for mine, theirs in zip(a2a["results"], rest["results"], strict=True):
        assert mine["index"] == theirs["index"]
        assert mine["label"] == theirs["label"]
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-9)
        assert mine["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-9)
        for stage in ("input", "output"):
            ours = {k: v for k, v in mine["screens"][stage].items() if k != "latency_ms"}
            rest_screen = {k: v for k, v in theirs["screens"][stage].items() if k != "latency_ms"}
            assert ours == rest_screen


# --- the card ----------------------------------------------------------------------------------


async def test_card_parses_names_skills_and_follows_public_url(
    http: httpx.AsyncClient, public_url: str
) -> None:
    response = await http.get("/.well-known/agent-card.json")
    assert response.http_version == "HTTP/2" and response.status_code == 200
    raw = response.json()
    card = parse_agent_card(json.loads(response.text))
    assert card.name == "Guarded Inference Service" and card.version == "0.1.0"
    assert card.description and card.provider.organization and card.provider.url == public_url
    assert card.capabilities.streaming is True
    assert [skill.id for skill in card.skills] == [
        "sentiment-cnn", "sentiment-moe", "sentiment-cascade", "hyperbole", "moderation", "chat",
        "drift-report",
    ]  # fmt: skip
    for skill in card.skills:
        assert skill.name and skill.description and skill.tags and skill.examples
        assert list(skill.input_modes) == ["text/plain", "application/json"]
        # A chat reply is text; the other skills answer with data and a text summary.
        outputs = ["text/plain"] if skill.id == "chat" else ["application/json", "text/plain"]
        assert list(skill.output_modes) == outputs
    assert [(i.protocol_binding, i.protocol_version, i.url) for i in card.supported_interfaces] == [
        ("JSONRPC", "1.0", f"{public_url}/a2a/jsonrpc"),
        ("HTTP+JSON", "1.0", f"{public_url}/a2a/rest"),
        ("JSONRPC", "0.3", f"{public_url}/a2a/jsonrpc"),
        ("HTTP+JSON", "0.3", f"{public_url}/a2a/rest"),
    ]
    # Without API_TOKENS the card declares no security and offers no extended card.
    assert not card.security_schemes and not card.security_requirements
    assert card.capabilities.extended_agent_card is False
    assert "security" not in raw and "supportsAuthenticatedExtendedCard" not in raw
    # The 0.3 fields ride along for 0.3 clients.
    assert raw["url"] == f"{public_url}/a2a/jsonrpc" and raw["preferredTransport"] == "JSONRPC"
    assert raw["protocolVersion"] == "0.3"
    assert raw["additionalInterfaces"] == [
        {"url": f"{public_url}/a2a/rest", "transport": "HTTP+JSON"}
    ]


def _card_with_only(card: AgentCard, index: int) -> AgentCard:
    only = AgentCard()
    only.CopyFrom(card)
    interface = card.supported_interfaces[index]
    del only.supported_interfaces[:]
    only.supported_interfaces.append(interface)
    return only


@pytest.mark.parametrize("stream", [False, True], ids=["send", "stream"])
@pytest.mark.parametrize(
    "index", [0, 1, 2, 3], ids=["jsonrpc-1.0", "rest-1.0", "jsonrpc-0.3", "rest-0.3"]
)
async def test_every_advertised_interface_answers_through_the_sdk_client(
    http: httpx.AsyncClient, double: OllamaDouble, index: int, stream: bool
) -> None:
    card = parse_agent_card((await http.get("/.well-known/agent-card.json")).json())
    interface = card.supported_interfaces[index]
    seen: list[tuple[str, str | None, str]] = []

    async def record(response: httpx.Response) -> None:
        request = response.request
        seen.append((request.url.path, request.headers.get("a2a-version"), response.http_version))

    async with httpx.AsyncClient(
        http1=False, http2=True, timeout=30, event_hooks={"response": [record]}
    ) as sdk_http:
        config = ClientConfig(
            streaming=stream,
            httpx_client=sdk_http,
            supported_protocol_bindings=[interface.protocol_binding],
        )
        client = ClientFactory(config).create(_card_with_only(card, index))
        request = SendMessageRequest(
            message=Message(
                role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=GOOD)]
            )
        )
        events = [event async for event in client.send_message(request)]

    states = [e.status_update.status.state for e in events if e.HasField("status_update")]
    if stream:
        assert events[0].HasField("task")
        assert events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
        assert states == [TaskState.TASK_STATE_WORKING, TaskState.TASK_STATE_COMPLETED]
        [artifact] = [e.artifact_update.artifact for e in events if e.HasField("artifact_update")]
    else:
        [event] = events
        assert event.task.status.state == TaskState.TASK_STATE_COMPLETED
        [artifact] = event.task.artifacts
    [data] = get_data_parts(artifact.parts)
    assert data["model"]["name"] == "sentiment-cnn-int8"
    assert data["results"][0]["label"] == "positive"
    assert get_text_parts(artifact.parts) == [
        f"sentiment-cnn-int8: positive ({data['results'][0]['score']:.2f})"
    ]
    # The interface the card named answered, at its protocol version, over HTTP/2.
    assert seen and all(version == "HTTP/2" for _, _, version in seen)
    assert {header for _, header, _ in seen} == {interface.protocol_version}
    base_path = httpx.URL(interface.url).path
    for path, _, _ in seen:
        if interface.protocol_binding == "HTTP+JSON" and interface.protocol_version == "0.3":
            assert path.startswith(base_path + "/v1/message:")
        elif interface.protocol_binding == "HTTP+JSON":
            assert path.startswith(base_path + "/message:")
        else:
            assert path == base_path
    assert len(double.chat_requests) == 2  # input and output screen


def test_seed_curl_example_works_verbatim(server: ServerProcess) -> None:
    body = (
        '{"jsonrpc":"2.0","id":"1","method":"message/send","params":{"message":{"role":"user",'
        '"parts":[{"kind":"text","text":"hello there!"}],"messageId":"m1","kind":"message"}}}'
    )
    result = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--max-time", "30",
            "--http2-prior-knowledge", "-H", "Content-Type: application/json",
            f"http://127.0.0.1:{server.port}/", "-d", body,
        ],
        capture_output=True, text=True, timeout=35, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["id"] == "1" and "error" not in answer
    task = answer["result"]
    assert task["kind"] == "task" and task["status"]["state"] == "completed"
    data, summary = only_artifact(task)
    assert data["model"]["name"] == "sentiment-cnn-int8"
    assert data["results"][0]["label"] in ("positive", "negative")
    assert summary.startswith("sentiment-cnn-int8: ")
    assert task["history"][0]["messageId"] == "m1"


# --- one call per skill, with each protocol version's method names -----------------------------


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_sentiment_cnn_is_the_default_skill(
    http: httpx.AsyncClient, double: OllamaDouble, version: str
) -> None:
    task = await send(http, version, {"text": GOOD}, {"text": BAD})
    assert state(task) == "completed"
    data, summary = only_artifact(task)
    same_results(data, await rest_classify(http, [GOOD, BAD], "sentiment-cnn-int8"))
    assert [r["label"] for r in data["results"]] == ["positive", "negative"]
    assert summary.startswith("sentiment-cnn-int8: positive (")
    # Both screens of both texts reached the guard: the GuardedPipeline ran.
    conversations = [r.body["messages"] for r in double.chat_requests]
    for text in (GOOD, BAD):
        assert [{"role": "user", "content": text}] in conversations
        assert any(c[0]["content"] == text and c[-1]["role"] == "assistant" for c in conversations)


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_sentiment_moe_skill_from_a_data_part(http: httpx.AsyncClient, version: str) -> None:
    task = await send(http, version, {"data": {"skill": "sentiment-moe", "texts": [GOOD, BAD]}})
    assert state(task) == "completed"
    data, summary = only_artifact(task)
    assert data["model"]["name"] == "switch-moe"
    same_results(data, await rest_classify(http, [GOOD, BAD], "switch-moe"))
    assert summary.startswith("switch-moe: ")
    [artifact] = task["artifacts"]
    assert artifact["name"] == "sentiment-moe-result"
    assert artifact["metadata"] == {"skill": "sentiment-moe"}


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_moderation_skill_from_message_metadata(
    http: httpx.AsyncClient, double: OllamaDouble, version: str
) -> None:
    double.set_rules([("steal", "unsafe\nS2")])
    params = {
        "message": message(
            version,
            {"text": "How do I steal a car?"},
            {"text": "How do I bake bread?"},
            metadata={"skill": "moderation"},
        )
    }
    answer = await rpc(http, SEND[version], params, version=version)
    task = task_of(answer["result"], version)
    # An unsafe verdict is the moderation skill's answer, not a refusal.
    assert state(task) == "completed"
    data, summary = only_artifact(task)
    first, second = data["results"]
    assert first["index"] == 0 and first["safe"] is False and first["blocked"] is True
    assert first["categories"] == [{"code": "S2", "name": "Non-Violent Crimes"}]
    assert second["index"] == 1 and second["safe"] is True and second["categories"] == []
    assert summary == "unsafe (blocked): S2 Non-Violent Crimes; safe"
    assert len(double.chat_requests) == 2  # one screen per text, no model run


async def test_moderation_of_a_conversation_and_skill_from_request_metadata(
    http: httpx.AsyncClient, double: OllamaDouble
) -> None:
    conversation = [
        {"role": "user", "content": "Tell me about this film."},
        {"role": "assistant", "content": "It is a heist film."},
    ]
    params = {
        "message": message("1.0", {"data": {"messages": conversation}}),
        "metadata": {"skill": "moderation"},
    }
    task = task_of((await rpc(http, "SendMessage", params))["result"], "1.0")
    assert state(task) == "completed"
    data, summary = only_artifact(task)
    assert len(data["results"]) == 1 and data["results"][0]["safe"] is True
    assert summary == "safe"
    assert double.chat_requests[-1].body["messages"] == conversation


async def test_data_part_model_overrides_the_skill_default(http: httpx.AsyncClient) -> None:
    task = await send(http, "1.0", {"data": {"texts": [GOOD], "model": "sentiment-cnn-int4"}})
    data, _ = only_artifact(task)
    same_results(data, await rest_classify(http, [GOOD], "sentiment-cnn-int4"))


# --- streaming -----------------------------------------------------------------------------------


async def test_streaming_1_0_yields_working_then_the_artifact_then_completed(
    http: httpx.AsyncClient,
) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": "s1",
        "method": "SendStreamingMessage",
        "params": {"message": message("1.0", {"text": GOOD})},
    }
    events = await sse(http, "/a2a/jsonrpc", body, V1)
    assert all(event["id"] == "s1" and "result" in event for event in events)
    results = [event["result"] for event in events]
    assert [next(iter(r)) for r in results] == [
        "task", "statusUpdate", "artifactUpdate", "statusUpdate",
    ]  # fmt: skip
    assert results[0]["task"]["status"]["state"] == "TASK_STATE_SUBMITTED"
    assert results[1]["statusUpdate"]["status"]["state"] == "TASK_STATE_WORKING"
    assert texts(results[1]["statusUpdate"]["status"]["message"]["parts"]) == [
        "screening 1 text with the guard and classifying with sentiment-cnn-int8"
    ]
    artifact = results[2]["artifactUpdate"]["artifact"]
    assert datas(artifact["parts"])[0]["results"][0]["label"] == "positive"
    assert results[3]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
    task_id = results[0]["task"]["id"]
    assert {r[next(iter(r))].get("taskId", task_id) for r in results} == {task_id}


async def test_streaming_0_3_and_rest_stream(http: httpx.AsyncClient) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "message/stream",
        "params": {"message": message("0.3", {"text": BAD})},
    }
    results = [event["result"] for event in await sse(http, "/", body, {})]
    assert [r["kind"] for r in results] == [
        "task", "status-update", "artifact-update", "status-update",
    ]  # fmt: skip
    assert [r["status"]["state"] for r in results if r["kind"] == "status-update"] == [
        "working",
        "completed",
    ]
    assert results[-1]["final"] is True
    assert datas(results[2]["artifact"]["parts"])[0]["results"][0]["label"] == "negative"

    rest = await sse(
        http, "/a2a/rest/message:stream", {"message": message("1.0", {"text": BAD})}, V1
    )
    assert [next(iter(event)) for event in rest] == [
        "task", "statusUpdate", "artifactUpdate", "statusUpdate",
    ]  # fmt: skip
    assert rest[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"


# --- get, list, cancel ---------------------------------------------------------------------------


async def test_get_and_list_tasks_over_every_binding(http: httpx.AsyncClient) -> None:
    context_id = uuid.uuid4().hex
    params = {"message": message("1.0", {"text": GOOD}, contextId=context_id)}
    first = task_of((await rpc(http, "SendMessage", params))["result"], "1.0")
    params = {"message": message("0.3", {"text": BAD}, contextId=context_id)}
    second = task_of((await rpc(http, "message/send", params, version="0.3"))["result"], "0.3")
    assert first["contextId"] == second["contextId"] == context_id

    got = await rpc(http, "GetTask", {"id": first["id"]})
    assert got["result"]["id"] == first["id"] and state(got["result"]) == "completed"
    assert got["result"]["artifacts"] == first["artifacts"]
    got = await rpc(http, "tasks/get", {"id": second["id"]}, version="0.3")
    assert got["result"]["id"] == second["id"] and got["result"]["status"]["state"] == "completed"
    got = await rpc(http, "GetTask", {"id": first["id"], "historyLength": 1}, path="/")
    assert len(got["result"]["history"]) == 1

    response = await http.get(f"/a2a/rest/tasks/{second['id']}", headers=V1)
    assert response.status_code == 200 and response.json()["id"] == second["id"]
    response = await http.get(f"/a2a/rest/v1/tasks/{first['id']}")
    assert response.status_code == 200 and response.json()["id"] == first["id"]

    listed = await rpc(http, "ListTasks", {"contextId": context_id, "includeArtifacts": True})
    page = listed["result"]
    assert page["totalSize"] == 2
    assert {task["id"] for task in page["tasks"]} == {first["id"], second["id"]}
    assert all(task["artifacts"] for task in page["tasks"])
    response = await http.get(
        "/a2a/rest/tasks", params={"contextId": context_id, "pageSize": 1}, headers=V1
    )
    assert response.status_code == 200
    page = response.json()
    assert len(page["tasks"]) == 1 and page["totalSize"] == 2 and page["nextPageToken"]
    assert "artifacts" not in page["tasks"][0]  # only with includeArtifacts


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_cancel_a_running_task(
    http: httpx.AsyncClient, double: OllamaDouble, version: str
) -> None:
    latency = 1.0
    double.set_latency(latency)  # the input screen takes 1 s: the task is still running
    # Answer at once with the submitted task instead of waiting for the end.
    configuration = {"returnImmediately": True} if version == "1.0" else {"blocking": False}
    params = {"message": message(version, {"text": GOOD}), "configuration": configuration}
    task = task_of((await rpc(http, SEND[version], params, version=version))["result"], version)
    assert state(task) in ("submitted", "working")
    # Until the input screen (the user's message alone) is with the guard, at most ~5 s. Its
    # output screen starts as soon as the prediction exists and may reach the guard first.
    input_screens: list[Any] = []
    for _ in range(500):
        input_screens = [r for r in double.chat_requests if len(r.body["messages"]) == 1]
        if input_screens:
            break
        await asyncio.sleep(0.01)
    [input_screen] = input_screens

    canceled = await rpc(http, CANCEL[version], {"id": task["id"]}, version=version)
    assert state(canceled["result"]) == "canceled", canceled
    got = (await rpc(http, GET[version], {"id": task["id"]}, version=version))["result"]
    assert state(got) == "canceled" and not got.get("artifacts")
    again = await rpc(http, CANCEL[version], {"id": task["id"]}, version=version)
    assert again["error"]["code"] == -32002  # task not cancelable: it already ended
    # The abandoned request asked the guard nothing more once cancelled, even after its
    # input screen would have answered: no retry, no second round of screens. (Its output
    # screen starts while the input screen runs, so it may have been asked before.)
    cancelled_at = time.monotonic()
    await asyncio.sleep(max(0.0, input_screen.at + latency + 0.5 - time.monotonic()))
    asked = [(r.at, r.body["messages"]) for r in double.chat_requests]
    assert all(at <= cancelled_at for at, _ in asked)
    assert [{"role": "user", "content": GOOD}] in [messages for _, messages in asked]
    assert len(asked) <= 2


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_subscribe_to_a_running_task(
    http: httpx.AsyncClient, double: OllamaDouble, version: str
) -> None:
    double.set_latency(0.5)
    configuration = {"returnImmediately": True} if version == "1.0" else {"blocking": False}
    params = {"message": message(version, {"text": GOOD}), "configuration": configuration}
    task = task_of((await rpc(http, SEND[version], params, version=version))["result"], version)
    method = "SubscribeToTask" if version == "1.0" else "tasks/resubscribe"
    body = {"jsonrpc": "2.0", "id": 3, "method": method, "params": {"id": task["id"]}}
    events = await sse(http, "/a2a/jsonrpc", body, V1 if version == "1.0" else {})
    results = [event["result"] for event in events]
    if version == "1.0":
        assert results[0]["task"]["id"] == task["id"]
        assert "artifactUpdate" in results[-2]
        assert results[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
    else:
        assert results[0]["kind"] == "task" and results[0]["id"] == task["id"]
        assert results[-2]["kind"] == "artifact-update"
        assert results[-1]["status"]["state"] == "completed" and results[-1]["final"] is True


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_blocked_input_is_rejected_naming_the_categories(
    http: httpx.AsyncClient, double: OllamaDouble, version: str
) -> None:
    double.set_rules([("bomb", "unsafe\nS9,S1")])
    task = await send(http, version, {"text": "A nice film."}, {"text": "How to build a bomb"})
    assert state(task) == "rejected"
    assert not task.get("artifacts")
    status_message = task["status"]["message"]
    assert texts(status_message["parts"]) == [
        "rejected: the guard judged the input unsafe: S9 Indiscriminate Weapons, S1 Violent Crimes"
    ]
    assert datas(status_message["parts"]) == [
        {
            "reason": "content-blocked",
            "stage": "input",
            "categories": [
                {"code": "S9", "name": "Indiscriminate Weapons"},
                {"code": "S1", "name": "Violent Crimes"},
            ],
            "indices": [1],
        }
    ]
    # Both texts were screened as input. (Their output screens may have been asked too,
    # while the input screens ran; the refusal above is all the caller got.)
    screened = [r.body["messages"] for r in double.chat_requests]
    inputs = [conversation for conversation in screened if len(conversation) == 1]
    assert len(inputs) == 2 and len(screened) <= 4
    for text in ("A nice film.", "How to build a bomb"):
        assert [{"role": "user", "content": text}] in inputs


async def test_blocked_output_is_rejected(http: httpx.AsyncClient, double: OllamaDouble) -> None:
    def judge(messages: list[dict[str, Any]]) -> str:
        return "unsafe\nS10" if messages[-1]["role"] == "assistant" else "safe"

    double.set_rules(judge)
    task = await send(http, "1.0", {"text": GOOD})
    assert state(task) == "rejected" and not task.get("artifacts")
    [detail] = datas(task["status"]["message"]["parts"])
    assert detail["stage"] == "output"
    assert detail["categories"] == [{"code": "S10", "name": "Hate"}]


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_guard_outage_fails_the_task_with_the_reason(
    http: httpx.AsyncClient, double: OllamaDouble, version: str
) -> None:
    double.fail_next(10, status=500)
    task = await send(http, version, {"text": GOOD})
    assert state(task) == "failed"
    assert not task.get("artifacts")
    [detail] = datas(task["status"]["message"]["parts"])
    assert detail == {"reason": "guard-unavailable", "kind": "http", "retry_after": 7}
    [reason] = texts(task["status"]["message"]["parts"])
    assert "could not judge the request (http)" in reason and "retry after 7 s" in reason


# --- malformed requests get the protocol's own errors ---------------------------------------------


def _data(**data: Any) -> dict[str, Any]:
    return {"data": data}


MALFORMED = [
    ("file part", "1.0", [{"url": "http://127.0.0.1/x.png", "mediaType": "image/png"}], -32005),
    ("unknown skill", "1.0", [_data(skill="translate", texts=["a"])], -32602),
    ("blank text", "1.0", [{"text": "   "}], -32602),
    ("no text at all", "0.3", [_data(model="sentiment-cnn")], -32602),
    ("unknown model", "0.3", [_data(texts=["a"], model="gpt-9")], -32602),
    ("too many texts", "1.0", [_data(texts=["a"] * (MAX_BATCH + 1))], -32602),
    ("texts not strings", "1.0", [_data(texts=[1, 2])], -32602),
    ("unknown data key", "0.3", [_data(textz=["a"])], -32602),
    ("model for moderation", "1.0", [_data(skill="moderation", texts=["a"], model="x")], -32602),
    ("bad conversation", "1.0", [_data(skill="moderation", messages=[{"role": "system"}])], -32602),
]


@pytest.mark.parametrize(
    ("version", "parts", "code"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
async def test_malformed_message_gets_an_error_and_no_task(
    http: httpx.AsyncClient, double: OllamaDouble, version: str, parts: list, code: int
) -> None:
    before = (await rpc(http, "ListTasks", {}))["result"]["totalSize"]
    if version == "0.3":
        parts = [{"kind": "file", "file": p} if "url" in p else p for p in parts]
    answer = await rpc(http, SEND[version], {"message": message(version, *parts)}, version=version)
    assert "result" not in answer
    assert answer["error"]["code"] == code, answer
    assert answer["error"]["message"]
    assert (await rpc(http, "ListTasks", {}))["result"]["totalSize"] == before
    assert double.chat_requests == []  # refused before anything reached the guard


async def test_limit_errors_name_the_field(http: httpx.AsyncClient) -> None:
    answer = await rpc(
        http, "SendMessage", {"message": message("1.0", {"text": "ok"}, {"text": ""})}
    )
    error = answer["error"]
    assert error["code"] == -32602
    violations = [d for d in error["data"] if d["@type"].endswith("BadRequest")]
    assert violations[0]["fieldViolations"][0]["field"] == "texts[1]"
    # HTTP+JSON maps the same error to 400 with the same details.
    response = await http.post(
        "/a2a/rest/message:send",
        json={"message": message("1.0", {"data": {"texts": ["a"], "model": "gpt-9"}})},
        headers=V1,
    )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "gpt-9" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        ("{not json", {}, -32700),
        ('{"jsonrpc": "2.0", "id": 1, "method": "NoSuchMethod", "params": {}}', V1, -32601),
        ('{"jsonrpc": "1.0", "id": 1, "method": "GetTask", "params": {}}', V1, -32600),
        (
            '{"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": 3}}',
            {},
            -32602,  # a valid request with invalid params (the SDK alone says -32600)
        ),  # fmt: skip
        ('{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "none"}}', V1, -32001),
        # A 1.0 method name without the A2A-Version header is taken for 0.3: -32009.
        ('{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "none"}}', {}, -32009),
        (
            '{"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "none"}}',
            {},
            -32001,
        ),  # fmt: skip
    ],
    ids=["parse", "method", "jsonrpc-version", "0.3-params", "task-1.0", "no-version", "task-0.3"],
)
async def test_jsonrpc_envelope_errors(
    http: httpx.AsyncClient, body: str, headers: dict[str, str], code: int
) -> None:
    response = await http.post(
        "/", content=body, headers={"Content-Type": "application/json", **headers}
    )
    assert response.status_code == 200
    assert response.json()["error"]["code"] == code


async def test_rest_unknown_task_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/a2a/rest/tasks/no-such-task", headers=V1)
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


# --- HTTP+JSON: refusals come before a stream starts; 0.3 takes the protobuf JSON shape ----------

REST_STREAM = {"1.0": ("/a2a/rest/message:stream", V1), "0.3": ("/a2a/rest/v1/message:stream", {})}
REST_SUBSCRIBE = {
    "1.0": ("/a2a/rest/tasks/{}:subscribe", V1),
    "0.3": ("/a2a/rest/v1/tasks/{}:subscribe", {}),
}


def rest_message(version: str, *parts: dict[str, Any]) -> dict[str, Any]:
    """A user message in each version's HTTP+JSON form (the protobuf JSON of its a2a.proto):
    1.0 has "parts" like JSON-RPC 1.0; 0.3 has "content" of {"text"} / {"data": {"data"}}."""
    if version == "1.0":
        return message("1.0", *parts)
    content = [{"text": p["text"]} if "text" in p else {"data": {"data": p["data"]}} for p in parts]
    return {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "content": content}


async def refusal(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Make a call that must be refused before any event stream: its status and error."""
    async with http.stream(method, path, json=body, headers=headers) as response:
        assert response.http_version == "HTTP/2"
        # Checked before reading on: a refusal raised inside a started stream resets it.
        assert not response.headers["content-type"].startswith("text/event-stream")
        answer = json.loads(await response.aread())
    error = answer["error"]
    assert error["code"] == response.status_code and error["message"]
    return response.status_code, error


def reason(error: dict[str, Any]) -> str:
    [info] = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    return info["reason"]


def violations(error: dict[str, Any]) -> list[str]:
    [bad] = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    return [violation["field"] for violation in bad["fieldViolations"]]


@pytest.mark.parametrize("version", ["1.0", "0.3"])
@pytest.mark.parametrize(
    ("parts", "says", "fields"),
    [
        ([{"data": {"skill": "translate", "texts": ["a"]}}], "unknown skill 'translate'", None),
        ([{"text": GOOD}, {"text": "   "}], "non-blank", ["texts[1]"]),
    ],
    ids=["unknown-skill", "blank-text"],
)
async def test_rest_stream_refuses_an_invalid_message_before_the_stream_starts(
    http: httpx.AsyncClient,
    double: OllamaDouble,
    version: str,
    parts: list[dict[str, Any]],
    says: str,
    fields: list[str] | None,
) -> None:
    before = (await rpc(http, "ListTasks", {}))["result"]["totalSize"]
    path, headers = REST_STREAM[version]
    body = {"message": rest_message(version, *parts)}
    status, error = await refusal(http, "POST", path, headers, body)
    assert status == 400 and error["status"] == "INVALID_ARGUMENT"
    assert says in error["message"] and reason(error) == "INVALID_PARAMS"
    if fields:
        assert violations(error) == fields
    assert (await rpc(http, "ListTasks", {}))["result"]["totalSize"] == before
    assert double.chat_requests == []


@pytest.mark.parametrize("version", ["1.0", "0.3"])
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_rest_subscribe_refuses_unknown_and_ended_tasks_before_the_stream_starts(
    http: httpx.AsyncClient, version: str, method: str
) -> None:
    path, headers = REST_SUBSCRIBE[version]
    status, error = await refusal(http, method, path.format("no-such-task"), headers)
    assert status == 404 and error["status"] == "NOT_FOUND"
    assert reason(error) == "TASK_NOT_FOUND"

    ended = await send(http, "1.0", {"text": GOOD})
    status, error = await refusal(http, method, path.format(ended["id"]), headers)
    assert status == 400 and error["status"] == "FAILED_PRECONDITION"
    assert reason(error) == "UNSUPPORTED_OPERATION" and "terminal state" in error["message"]


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_rest_subscribe_to_a_running_task(
    http: httpx.AsyncClient, double: OllamaDouble, version: str
) -> None:
    double.set_latency(0.5)
    params = {
        "message": message("1.0", {"text": GOOD}),
        "configuration": {"returnImmediately": True},
    }
    task = task_of((await rpc(http, "SendMessage", params))["result"], "1.0")
    path, headers = REST_SUBSCRIBE[version]
    events = await sse(http, path.format(task["id"]), {}, headers)
    assert events[0]["task"]["id"] == task["id"]
    assert [next(iter(event)) for event in events[-2:]] == ["artifactUpdate", "statusUpdate"]
    assert events[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"


async def test_rest_0_3_takes_the_protobuf_json_message_the_sdk_client_sends(
    http: httpx.AsyncClient,
) -> None:
    # a2a-sdk's 0.3 client writes the proto field names: "request", "message_id".
    body = {
        "request": {
            "message_id": uuid.uuid4().hex,
            "role": "ROLE_USER",
            "content": [{"text": GOOD}, {"data": {"data": {"texts": [BAD]}}}],
        },
        "configuration": {"blocking": True},
    }
    response = await http.post("/a2a/rest/v1/message:send", json=body)
    assert response.status_code == 200, response.text
    task = response.json()["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    [artifact] = task["artifacts"]
    [data] = [part["data"]["data"] for part in artifact["parts"] if "data" in part]
    assert [result["label"] for result in data["results"]] == ["positive", "negative"]


@pytest.mark.parametrize("path", ["/a2a/rest/v1/message:send", "/a2a/rest/v1/message:stream"])
async def test_rest_0_3_refuses_a_jsonrpc_shaped_message_naming_the_expected_shape(
    http: httpx.AsyncClient, double: OllamaDouble, path: str
) -> None:
    before = (await rpc(http, "ListTasks", {}))["result"]["totalSize"]
    # The JSON-RPC form: "parts" of {"kind": "text", "text": ...}.
    status, error = await refusal(
        http, "POST", path, {}, {"message": message("0.3", {"text": GOOD})}
    )
    assert status == 400 and error["status"] == "INVALID_ARGUMENT"
    assert reason(error) == "INVALID_PARAMS" and violations(error) == ["message.parts"]
    assert '"content": [{"text": "..."}, {"data": {"data": {...}}}]' in error["message"]
    assert "JSON-RPC" in error["message"] and "at least one element" not in error["message"]
    # A JSON-RPC part inside "content" would lose its data: refused too, naming the part.
    mixed = rest_message("0.3", {"text": GOOD})
    mixed["content"].append({"kind": "data", "data": {"texts": [BAD]}})
    status, error = await refusal(http, "POST", path, {}, {"message": mixed})
    assert status == 400 and violations(error) == ["message.content[1].kind"]
    assert (await rpc(http, "ListTasks", {}))["result"]["totalSize"] == before
    assert double.chat_requests == []


def test_open_agent_logs_a_warning_at_start(server: ServerProcess) -> None:
    warnings = [
        entry
        for entry in server.logs()
        if entry.get("level") == "WARNING" and entry.get("logger") == "service.auth"
    ]
    assert warnings and "API_TOKENS is not set" in warnings[0]["message"]


async def test_no_extended_card_without_tokens(http: httpx.AsyncClient) -> None:
    answer = await rpc(http, "GetExtendedAgentCard", {})
    assert "result" not in answer
    assert answer["error"]["code"] == -32004  # unsupported operation
    response = await http.get("/a2a/rest/extendedAgentCard", headers=V1)
    assert response.status_code >= 400 and "capabilities" not in response.text
