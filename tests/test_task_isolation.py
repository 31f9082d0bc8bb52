"""Callers see only their own A2A tasks: with API_TOKENS=name:token,..., a task is stored with
its caller as owner, and another caller's get, list, cancel and subscribe on it answer "not
found", on both protocol versions and both bindings. Logs name the caller, never the token.
Real Hypercorn process over HTTP/2, guard on the Ollama double."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from service.web.auth import identify, token_identities
from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

ALICE, BOB = "tok-alice-5f1c9a02", "tok-bob-8e2d4731"
V1 = {"A2A-Version": "1.0"}
TASK_NOT_FOUND = -32001

pytestmark = pytest.mark.usefixtures("fresh_double")


def test_entries_name_their_tokens() -> None:
    identities = token_identities(["alice:s3cret", "bare-token", "bob:x:y"])
    assert identities["s3cret"] == "alice"
    assert identities["x:y"] == "bob"  # only the first colon separates the name
    assert identities["bare-token"].startswith("token-") and "bare" not in identities["bare-token"]
    assert identify("s3cret", identities) == "alice"
    assert identify("s3cret ", identities) is None and identify(None, identities) is None
    # One caller may hold two tokens while rolling one over.
    assert token_identities(["ops:old", "ops:new"]) == {"old": "ops", "new": "ops"}
    with pytest.raises(ValueError, match="same token twice"):
        token_identities(["a:one", "b:one"])
    with pytest.raises(ValueError, match="empty token"):
        token_identities(["a:"])


@pytest.fixture(scope="module")
def server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    port = free_port()
    with running_server(
        ollama_host=double.url,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        api_tokens=f"alice:{ALICE},bob:{BOB}",
    ) as running:
        yield running


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as client:
        yield client


def _as(token: str, version: str = "1.0") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    return {**headers, **V1} if version == "1.0" else headers


async def _rpc(
    http: httpx.AsyncClient, token: str, method: str, params: dict[str, Any], version: str
) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": uuid.uuid4().hex, "method": method, "params": params}
    response = await http.post("/", json=body, headers=_as(token, version))
    assert response.status_code == 200 and response.http_version == "HTTP/2"
    answer: dict[str, Any] = response.json()
    return answer


async def _send(http: httpx.AsyncClient, token: str, version: str) -> str:
    if version == "1.0":
        message = {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "parts": [{"text": "Fine."}]}
        answer = await _rpc(http, token, "SendMessage", {"message": message}, version)
        task_id: str = answer["result"]["task"]["id"]
    else:
        message = {
            "role": "user",
            "kind": "message",
            "messageId": uuid.uuid4().hex,
            "parts": [{"kind": "text", "text": "Fine."}],
        }
        answer = await _rpc(http, token, "message/send", {"message": message}, version)
        task_id = answer["result"]["id"]
    return task_id


async def test_json_rpc_1_0_tasks_are_the_callers_own(http: httpx.AsyncClient) -> None:
    task_id = await _send(http, ALICE, "1.0")
    mine = await _rpc(http, ALICE, "GetTask", {"id": task_id}, "1.0")
    assert mine["result"]["id"] == task_id
    for method, params in (
        ("GetTask", {"id": task_id}),
        ("CancelTask", {"id": task_id}),
    ):
        theirs = await _rpc(http, BOB, method, params, "1.0")
        assert theirs["error"]["code"] == TASK_NOT_FOUND, (method, theirs)
    listed_by_bob = await _rpc(http, BOB, "ListTasks", {}, "1.0")
    assert task_id not in {task["id"] for task in listed_by_bob["result"].get("tasks", [])}
    listed_by_alice = await _rpc(http, ALICE, "ListTasks", {}, "1.0")
    assert task_id in {task["id"] for task in listed_by_alice["result"]["tasks"]}


async def test_json_rpc_0_3_tasks_are_the_callers_own(http: httpx.AsyncClient) -> None:
    task_id = await _send(http, ALICE, "0.3")
    mine = await _rpc(http, ALICE, "tasks/get", {"id": task_id}, "0.3")
    assert mine["result"]["id"] == task_id
    for method in ("tasks/get", "tasks/cancel"):
        theirs = await _rpc(http, BOB, method, {"id": task_id}, "0.3")
        assert theirs["error"]["code"] == TASK_NOT_FOUND, (method, theirs)


async def test_http_json_tasks_are_the_callers_own(http: httpx.AsyncClient) -> None:
    task_id = await _send(http, ALICE, "1.0")
    mine = await http.get(f"/a2a/rest/tasks/{task_id}", headers=_as(ALICE))
    assert mine.status_code == 200 and mine.json()["id"] == task_id
    theirs = await http.get(f"/a2a/rest/tasks/{task_id}", headers=_as(BOB))
    assert theirs.status_code == 404
    theirs_03 = await http.get(f"/a2a/rest/v1/tasks/{task_id}", headers=_as(BOB, "0.3"))
    assert theirs_03.status_code == 404
    cancel = await http.post(f"/a2a/rest/tasks/{task_id}:cancel", headers=_as(BOB), json={})
    assert cancel.status_code == 404
    listed = await http.get("/a2a/rest/tasks", headers=_as(BOB))
    assert listed.status_code == 200
    assert task_id not in {task["id"] for task in listed.json().get("tasks", [])}


async def test_subscribing_to_anothers_task_is_not_found(http: httpx.AsyncClient) -> None:
    task_id = await _send(http, ALICE, "1.0")
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SubscribeToTask",
        "params": {"id": task_id},
    }
    async with http.stream("POST", "/", json=body, headers=_as(BOB)) as response:
        text = (await response.aread()).decode()
    assert str(TASK_NOT_FOUND) in text
    assert "Fine." not in text and "artifact" not in text  # nothing of alice's task


async def test_logs_name_the_caller_never_the_token(
    http: httpx.AsyncClient, server: ServerProcess
) -> None:
    await _send(http, BOB, "1.0")
    server.wait_for_log(lambda entry: entry.get("caller") == "bob")
    text = "\n".join(server.lines)
    assert '"caller": "bob"' in text or '"caller":"bob"' in text
    assert ALICE not in text and BOB not in text
