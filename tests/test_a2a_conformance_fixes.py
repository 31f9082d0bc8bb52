"""Conformance fixes over HTTP/2 on the real Hypercorn process (API_TOKENS set): the card's
security schemes hold one form per protocol version, ListTasks refuses an unknown status
filter, and the HTTP+JSON routes answer at the origin as at /a2a/rest."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import parse_agent_card
from a2a.compat.v0_3 import types as v03
from a2a.types import AgentCard, Message, Part, Role, SendMessageRequest, TaskState

from service.a2a.sdk_compat import SCHEME_KINDS, card_of
from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

TOKEN = "conformance-token-3c9d1e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
V1 = {"A2A-Version": "1.0", **AUTH}
GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."
CARD = "/.well-known/agent-card.json"

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    port = free_port()
    with running_server(
        ollama_host=double.url, port=port, public_url=f"http://127.0.0.1:{port}", api_tokens=TOKEN
    ) as running:
        yield running


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as client:
        yield client


# --- 1. the card's security schemes --------------------------------------------------------


async def test_card_security_schemes_hold_one_form_per_protocol_version(
    http: httpx.AsyncClient,
) -> None:
    v1 = await http.get(CARD, headers={"A2A-Version": "1.0"})
    legacy = await http.get(CARD)
    assert v1.http_version == legacy.http_version == "HTTP/2"
    # 1.0: exactly one scheme kind per entry, nothing else.
    [(name, entry)] = v1.json()["securitySchemes"].items()
    assert name == "bearer" and list(entry) == ["httpAuthSecurityScheme"]
    assert set(entry) <= SCHEME_KINDS
    assert entry["httpAuthSecurityScheme"]["scheme"] == "Bearer"
    # 0.3: the 0.3 shape, no 1.0 key.
    entry = legacy.json()["securitySchemes"]["bearer"]
    assert entry["type"] == "http" and entry["scheme"] == "Bearer" and entry["description"]
    assert not set(entry) & SCHEME_KINDS
    assert legacy.json()["security"] == [{"bearer": []}]
    # Both views parse to the bearer scheme: a2a-sdk 1.x, and the 0.3 card model.
    for raw in (v1.json(), legacy.json()):
        card = parse_agent_card(json.loads(json.dumps(raw)))
        assert card.security_schemes["bearer"].http_auth_security_scheme.scheme == "Bearer"
    old = v03.AgentCard.model_validate(legacy.json())
    assert old.security_schemes is not None
    scheme = old.security_schemes["bearer"].root
    assert isinstance(scheme, v03.HTTPAuthSecurityScheme) and scheme.scheme == "Bearer"
    # Each view its own ETag, revalidated per view.
    assert v1.headers["etag"] != legacy.headers["etag"]
    assert "a2a-version" in v1.headers["vary"].lower()
    again = await http.get(
        CARD, headers={"A2A-Version": "1.0", "If-None-Match": v1.headers["etag"]}
    )
    assert again.status_code == 304
    assert (await http.get(CARD, headers={"If-None-Match": v1.headers["etag"]})).status_code == 200


def _request() -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=GOOD)])
    )


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_sdk_client_reads_the_card_and_authenticates(
    server: ServerProcess, version: str
) -> None:
    async with httpx.AsyncClient(http1=False, http2=True, headers=AUTH) as http:
        config = ClientConfig(streaming=False, httpx_client=http)
        factory = ClientFactory(config)
        client = await factory.create_from_url(server.base_url)
        if version == "0.3":
            card = AgentCard()
            card.CopyFrom(card_of(client))  # the card it resolved
            kept = [i for i in card.supported_interfaces if i.protocol_version == "0.3"]
            del card.supported_interfaces[:]
            card.supported_interfaces.extend(kept)
            client = factory.create(card)
        [event] = [event async for event in client.send_message(_request())]
        assert event.task.status.state == TaskState.TASK_STATE_COMPLETED


# --- 2. ListTasks with an unknown status filter --------------------------------------------


@pytest.mark.parametrize("status", ["TASK_STATE_BOGUS", "completed", 99, "99"])
async def test_list_tasks_refuses_an_unknown_status_filter(
    http: httpx.AsyncClient, status: Any
) -> None:
    for path in ("/", "/a2a/jsonrpc"):
        response = await http.post(
            path,
            json={"jsonrpc": "2.0", "id": 7, "method": "ListTasks", "params": {"status": status}},
            headers=V1,
        )
        assert response.http_version == "HTTP/2" and response.status_code == 200
        error = response.json()["error"]
        assert error["code"] == -32602, error
        assert (
            "TASK_STATE_COMPLETED" in error["message"] and "TASK_STATE_WORKING" in error["message"]
        )
    for path in ("/a2a/rest/tasks", "/tasks"):
        response = await http.get(path, params={"status": str(status)}, headers=V1)
        assert response.status_code == 400, response.text
        body = response.json()["error"]
        assert body["status"] == "INVALID_ARGUMENT" and "TASK_STATE_COMPLETED" in body["message"]


@pytest.mark.parametrize("status", ["TASK_STATE_COMPLETED", 3, "3"])
async def test_list_tasks_takes_a_known_status_filter(http: httpx.AsyncClient, status: Any) -> None:
    response = await http.post(
        "/",
        json={"jsonrpc": "2.0", "id": 7, "method": "ListTasks", "params": {"status": status}},
        headers=V1,
    )
    assert "result" in response.json(), response.text
    response = await http.get("/a2a/rest/tasks", params={"status": str(status)}, headers=V1)
    assert response.status_code == 200, response.text


async def test_tasks_list_does_not_exist_in_0_3(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/", json={"jsonrpc": "2.0", "id": 1, "method": "tasks/list", "params": {}}, headers=AUTH
    )
    assert response.json()["error"]["code"] == -32601


# --- 3. HTTP+JSON at the origin ---------------------------------------------------------------

V03_MESSAGE = {"message": {"messageId": "", "role": "ROLE_USER", "content": [{"text": GOOD}]}}
V10_MESSAGE = {"message": {"messageId": "", "role": "ROLE_USER", "parts": [{"text": GOOD}]}}


def _body(template: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(json.dumps(template))
    body["message"]["messageId"] = uuid.uuid4().hex
    return body


@pytest.mark.parametrize(
    ("version", "headers", "origin", "canonical", "message"),
    [
        ("1.0", V1, "", "/a2a/rest", V10_MESSAGE),
        ("0.3", AUTH, "/v1", "/a2a/rest/v1", V03_MESSAGE),
    ],
)
async def test_http_json_answers_at_the_origin_as_at_a2a_rest(
    http: httpx.AsyncClient,
    version: str,
    headers: dict[str, str],
    origin: str,
    canonical: str,
    message: dict[str, Any],
) -> None:
    tasks = {}
    for prefix in (origin, canonical):
        response = await http.post(f"{prefix}/message:send", json=_body(message), headers=headers)
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200, (prefix, response.text)
        task = response.json()["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        tasks[prefix] = task
    for prefix in (origin, canonical):
        for task in tasks.values():  # one store: each path reads the other's task
            response = await http.get(f"{prefix}/tasks/{task['id']}", headers=headers)
            assert response.status_code == 200, response.text
            assert response.json()["id"] == task["id"]
        response = await http.post(
            f"{prefix}/tasks/{uuid.uuid4()}:cancel", json={}, headers=headers
        )
        assert response.status_code == 404, response.text
        # Protected like their twins.
        response = await http.post(f"{prefix}/message:send", json=_body(message))
        assert response.status_code == 401
    card = "/extendedAgentCard" if version == "1.0" else "/v1/card"
    response = await http.get(card, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["name"]
    if version == "1.0":
        listed = await http.get("/tasks", headers=headers)
        assert listed.status_code == 200 and listed.json()["tasks"]


async def test_the_rest_api_still_answers_and_the_card_names_a2a_rest(
    http: httpx.AsyncClient,
) -> None:
    assert (await http.get("/v1/models", headers=AUTH)).status_code == 200
    classify = await http.post("/v1/classify", json={"texts": [GOOD]}, headers=AUTH)
    assert classify.status_code == 200, classify.text
    moderate = await http.post("/v1/moderate", json={"text": GOOD}, headers=AUTH)
    assert moderate.status_code == 200, moderate.text
    moderations = await http.post("/v1/moderations", json={"input": GOOD}, headers=AUTH)
    assert moderations.status_code == 200, moderations.text
    chat = await http.post(
        "/v1/chat/completions",
        json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "Hello"}]},
        headers=AUTH,
    )
    assert chat.status_code == 200, chat.text
    raw = (await http.get(CARD, headers={"A2A-Version": "1.0"})).json()
    urls = {interface["url"] for interface in raw["supportedInterfaces"]}
    assert {url.split(":", 2)[-1].split("/", 1)[-1] for url in urls} == {"a2a/jsonrpc", "a2a/rest"}
    openapi = (await http.get("/openapi.json")).json()["paths"]
    assert "/a2a/rest/message:send" in openapi and "/message:send" not in openapi


# --- 4. 0.3 HTTP+JSON inputs: role, snake_case query parameters, unread data parts ---------

NO_ROLE = {
    "1.0": ("/a2a/rest/message:send", V1,
            {"message": {"messageId": "", "parts": [{"text": GOOD}]}}),
    "0.3": ("/a2a/rest/v1/message:send", AUTH,
            {"message": {"messageId": "", "content": [{"text": GOOD}]}}),
}  # fmt: skip
RPC_NO_ROLE = {
    "1.0": (V1, "SendMessage", {"messageId": "", "parts": [{"text": GOOD}]}),
    "0.3": (AUTH, "message/send",
            {"messageId": "", "kind": "message", "parts": [{"kind": "text", "text": GOOD}]}),
}  # fmt: skip


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_a_message_without_a_role_is_invalid_params_on_json_rpc(
    http: httpx.AsyncClient, version: str
) -> None:
    headers, method, message = RPC_NO_ROLE[version]
    message = {**message, "messageId": uuid.uuid4().hex}
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {"message": message}}
    response = await http.post("/a2a/jsonrpc", json=body, headers=headers)
    assert response.http_version == "HTTP/2" and response.status_code == 200
    error = response.json()["error"]
    assert error["code"] == -32602, error
    assert "role" in json.dumps(error)


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_a_message_without_a_role_is_refused_on_http_json(
    http: httpx.AsyncClient, version: str
) -> None:
    path, headers, message = NO_ROLE[version]
    response = await http.post(path, json=_body(message), headers=headers)
    assert response.http_version == "HTTP/2"
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert "role" in json.dumps(error)
    # The same message with its role completes.
    message["message"]["role"] = "ROLE_USER"
    response = await http.post(path, json=_body(message), headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("headers", "prefix", "message"),
    [(V1, "/a2a/rest", V10_MESSAGE), (AUTH, "/a2a/rest/v1", V03_MESSAGE)],
    ids=["1.0", "0.3"],
)
async def test_a_snake_case_query_parameter_is_refused_naming_the_camel_case_one(
    http: httpx.AsyncClient, headers: dict[str, str], prefix: str, message: dict[str, Any]
) -> None:
    sent = await http.post(f"{prefix}/message:send", json=_body(message), headers=headers)
    task_id = sent.json()["task"]["id"]
    for query in ("history_length=-1", "history_length=1"):
        response = await http.get(f"{prefix}/tasks/{task_id}?{query}", headers=headers)
        assert response.status_code == 400, response.text
        assert "historyLength, not history_length" in response.json()["error"]["message"]
    # camelCase, as the specification names it: refused when negative, honoured otherwise.
    response = await http.get(f"{prefix}/tasks/{task_id}?historyLength=-1", headers=headers)
    assert response.status_code == 400, response.text
    whole = await http.get(f"{prefix}/tasks/{task_id}", headers=headers)
    assert len(whole.json()["history"]) > 1
    response = await http.get(f"{prefix}/tasks/{task_id}?historyLength=1", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["history"] == whole.json()["history"][-1:]
    if prefix == "/a2a/rest":
        response = await http.get(f"{prefix}/tasks?page_size=1", headers=headers)
        assert response.status_code == 400 and "pageSize" in response.json()["error"]["message"]


FOREIGN_DATA = {"source": "crm", "ticket": 42}
# One message, a text beside a data part this agent does not read, on each binding.
MIXED = {
    "jsonrpc-1.0": ("/a2a/jsonrpc", V1, {"jsonrpc": "2.0", "id": 1, "method": "SendMessage",
        "params": {"message": {"messageId": "", "role": "ROLE_USER",
                               "parts": [{"text": GOOD}, {"data": FOREIGN_DATA}]}}}),
    "jsonrpc-0.3": ("/a2a/jsonrpc", AUTH, {"jsonrpc": "2.0", "id": 1, "method": "message/send",
        "params": {"message": {"messageId": "", "role": "user", "kind": "message",
                               "parts": [{"kind": "text", "text": GOOD},
                                         {"kind": "data", "data": FOREIGN_DATA}]}}}),
    "rest-1.0": ("/a2a/rest/message:send", V1, {"message": {"messageId": "", "role": "ROLE_USER",
        "parts": [{"text": GOOD}, {"data": FOREIGN_DATA}]}}),
    "rest-0.3": ("/a2a/rest/v1/message:send", AUTH, {"message": {"messageId": "",
        "role": "ROLE_USER", "content": [{"text": GOOD}, {"data": {"data": FOREIGN_DATA}}]}}),
}  # fmt: skip


def _with_id(body: dict[str, Any]) -> dict[str, Any]:
    body = json.loads(json.dumps(body))
    (body.get("params") or body)["message"]["messageId"] = uuid.uuid4().hex
    return body


def _parts_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    message = (body.get("params") or body)["message"]
    parts: list[dict[str, Any]] = message.get("parts") or message["content"]
    return parts


def _answer(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    return body.get("result", body) if "jsonrpc" in body else body


@pytest.mark.parametrize("binding", list(MIXED))
async def test_a_text_beside_a_data_part_the_agent_does_not_read_is_classified(
    http: httpx.AsyncClient, binding: str
) -> None:
    path, headers, template = MIXED[binding]
    response = await http.post(path, json=_with_id(template), headers=headers)
    assert response.status_code == 200, response.text
    body = _answer(response)
    assert "error" not in body, body
    task = body.get("task", body)
    assert task["status"]["state"] in ("TASK_STATE_COMPLETED", "completed"), task
    assert "positive" in json.dumps(task["artifacts"])

    # Only the unread data part: nothing to work on, refused naming the keys it reads.
    only_data = _with_id(template)
    del _parts_of(only_data)[0]
    refused = await http.post(path, json=only_data, headers=headers)
    assert "none of the keys" in refused.text, refused.text
    # A data part with a key it reads and an unknown one: a typo, refused naming it.
    typo = _with_id(template)
    data = {"text": GOOD, "modle": "switch-moe"}
    _parts_of(typo)[1]["data"] = {"data": data} if binding == "rest-0.3" else data
    refused = await http.post(path, json=typo, headers=headers)
    assert "unknown keys ['modle']" in refused.text, refused.text

    # The history keeps what is not read too: a few KB of it pass, more is refused.
    for size, accepted in ((6_000, True), (9_000, False)):
        padded = _with_id(template)
        foreign = {"source": "crm", "note": "n" * size}
        _parts_of(padded)[1]["data"] = {"data": foreign} if binding == "rest-0.3" else foreign
        answer = await http.post(path, json=padded, headers=headers)
        if accepted:
            assert "positive" in answer.text, answer.text
        else:
            assert "bytes beyond the texts and data this agent reads" in answer.text, answer.text
            assert "at most 8192" in answer.text, answer.text
