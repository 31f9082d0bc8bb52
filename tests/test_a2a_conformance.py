"""A2A conformance: every method of both protocol versions (1.0, 0.3) on both bindings
(JSON-RPC, HTTP+JSON), for a one-shot skill (sentiment) and a multi-turn one (chat), over
HTTP/2 on the real Hypercorn process. Each answer is parsed strictly with a2a-sdk's types (a
field the schema lacks fails), and each error is checked against the specification's error
table (A2A 1.0, section 5.4: JSON-RPC code, gRPC status and HTTP status; section 11.6: the
ErrorInfo reason). METHODS maps every method to the test that walks it."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from a2a.compat.v0_3 import types as v03
from a2a.types import TaskState

from service.a2a.sdk_compat import V03_METHODS
from tests.a2a_wire import (
    API_IDS,
    APIS,
    V1,
    Api,
    ApiError,
    conforms,
    event_payload,
    history,
    state_of,
    status_text,
)
from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

TOKEN = "conformance-walk-5e21"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."
REPLIES = [("first", "Alpha one two three four five."), ("second", "Beta one two three.")]
FIRST, SECOND = "My first question, please.", "And my second question?"

# The specification's table (A2A 1.0, 5.4 and 11.6), written out here rather than read from
# the SDK, so that the SDK's own mapping is checked too: JSON-RPC code, gRPC status, HTTP status,
# ErrorInfo reason. Invalid params is JSON-RPC's own -32602, INVALID_ARGUMENT / 400 on HTTP.
SPEC_ERRORS = {
    "TaskNotFound": (-32001, "NOT_FOUND", 404, "TASK_NOT_FOUND"),
    "TaskNotCancelable": (-32002, "FAILED_PRECONDITION", 400, "TASK_NOT_CANCELABLE"),
    "PushNotificationNotSupported": (
        -32003, "FAILED_PRECONDITION", 400, "PUSH_NOTIFICATION_NOT_SUPPORTED",
    ),
    "UnsupportedOperation": (-32004, "FAILED_PRECONDITION", 400, "UNSUPPORTED_OPERATION"),
    "ContentTypeNotSupported": (-32005, "INVALID_ARGUMENT", 400, "CONTENT_TYPE_NOT_SUPPORTED"),
    "VersionNotSupported": (-32009, "FAILED_PRECONDITION", 400, "VERSION_NOT_SUPPORTED"),
    "InvalidParams": (-32602, "INVALID_ARGUMENT", 400, "INVALID_PARAMS"),
}  # fmt: skip

PUSH_TESTS = (
    "test_push_notification_configs_while_push_is_off, "
    "test_push_notification_configs_while_push_is_on"
)
# Every method, by version and binding, and the test that walks it here.
METHODS: dict[str, dict[str, str]] = {
    "SendMessage": {
        "jsonrpc-1.0": "SendMessage", "jsonrpc-0.3": "message/send",
        "rest-1.0": "POST /message:send", "rest-0.3": "POST /v1/message:send",
        "test": "test_send_message_one_shot, test_a_conversation_over_send_message",
    },
    "SendStreamingMessage": {
        "jsonrpc-1.0": "SendStreamingMessage", "jsonrpc-0.3": "message/stream",
        "rest-1.0": "POST /message:stream", "rest-0.3": "POST /v1/message:stream",
        "test": "test_send_streaming_message_one_shot, test_a_conversation_over_streams",
    },
    "GetTask": {
        "jsonrpc-1.0": "GetTask", "jsonrpc-0.3": "tasks/get",
        "rest-1.0": "GET /tasks/{id}", "rest-0.3": "GET /v1/tasks/{id}",
        "test": "test_get_task",
    },
    "ListTasks": {
        "jsonrpc-1.0": "ListTasks", "jsonrpc-0.3": "(none in 0.3)",
        "rest-1.0": "GET /tasks", "rest-0.3": "(none in 0.3)",
        "test": "test_list_tasks",
    },
    "CancelTask": {
        "jsonrpc-1.0": "CancelTask", "jsonrpc-0.3": "tasks/cancel",
        "rest-1.0": "POST /tasks/{id}:cancel", "rest-0.3": "POST /v1/tasks/{id}:cancel",
        "test": "test_cancel_task",
    },
    "SubscribeToTask": {
        "jsonrpc-1.0": "SubscribeToTask", "jsonrpc-0.3": "tasks/resubscribe",
        "rest-1.0": "POST /tasks/{id}:subscribe", "rest-0.3": "POST /v1/tasks/{id}:subscribe",
        "test": "test_subscribe_to_task (a live turn: "
                "test_a2a_chat.py::test_subscribing_to_a_live_turn_streams_its_remaining_events)",
    },
    "CreateTaskPushNotificationConfig": {
        "jsonrpc-1.0": "CreateTaskPushNotificationConfig",
        "jsonrpc-0.3": "tasks/pushNotificationConfig/set",
        "rest-1.0": "POST /tasks/{id}/pushNotificationConfigs",
        "rest-0.3": "POST /v1/tasks/{id}/pushNotificationConfigs",
        "test": PUSH_TESTS,
    },
    "GetTaskPushNotificationConfig": {
        "jsonrpc-1.0": "GetTaskPushNotificationConfig",
        "jsonrpc-0.3": "tasks/pushNotificationConfig/get",
        "rest-1.0": "GET /tasks/{id}/pushNotificationConfigs/{configId}",
        "rest-0.3": "GET /v1/tasks/{id}/pushNotificationConfigs/{configId}",
        "test": PUSH_TESTS,
    },
    "ListTaskPushNotificationConfigs": {
        "jsonrpc-1.0": "ListTaskPushNotificationConfigs",
        "jsonrpc-0.3": "tasks/pushNotificationConfig/list",
        "rest-1.0": "GET /tasks/{id}/pushNotificationConfigs",
        "rest-0.3": "GET /v1/tasks/{id}/pushNotificationConfigs",
        "test": PUSH_TESTS,
    },
    "DeleteTaskPushNotificationConfig": {
        "jsonrpc-1.0": "DeleteTaskPushNotificationConfig",
        "jsonrpc-0.3": "tasks/pushNotificationConfig/delete",
        "rest-1.0": "DELETE /tasks/{id}/pushNotificationConfigs/{configId}",
        "rest-0.3": "DELETE /v1/tasks/{id}/pushNotificationConfigs/{configId}",
        "test": PUSH_TESTS,
    },
    "GetExtendedAgentCard": {
        "jsonrpc-1.0": "GetExtendedAgentCard", "jsonrpc-0.3": "agent/getAuthenticatedExtendedCard",
        "rest-1.0": "GET /extendedAgentCard", "rest-0.3": "GET /v1/card",
        "test": "test_get_extended_agent_card",
    },
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    port = free_port()
    with running_server(
        ollama_host=double.url,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        api_tokens=TOKEN,
        chat_model="llama3.2:1b",
        chat_timeout=30,
    ) as running:
        yield running


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as client:
        yield client


@pytest.fixture
def replies(fresh_double: OllamaDouble) -> OllamaDouble:
    fresh_double.set_replies(REPLIES)
    return fresh_double


def _api(http: httpx.AsyncClient, binding: str, version: str) -> Api:
    return Api(http, binding, version, auth=AUTH)


def assert_spec_error(api: Api, error: ApiError, kind: str) -> None:
    """``error`` is the specification's ``kind`` error in ``api``'s binding and version."""
    code, grpc_status, http_status, reason = SPEC_ERRORS[kind]
    if api.binding == "jsonrpc":
        assert error.code == code, error
        assert isinstance(error.message, str) and error.message
        if api.version == "0.3":
            v03.JSONRPCError.model_validate(error.raw)  # {"code", "message", "data"?}
        else:
            assert error.reason == reason, error  # 1.0: data is the list of typed details
    else:
        assert (error.code, error.status, error.reason) == (http_status, grpc_status, reason)


async def _refused(api: Api, kind: str, call: Any) -> ApiError:
    with pytest.raises(ApiError) as refused:
        await call
    assert_spec_error(api, refused.value, kind)
    return refused.value


def test_the_table_names_every_method_the_sdk_serves() -> None:
    from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher

    assert set(METHODS) == set(JsonRpcDispatcher.METHOD_TO_MODEL)
    assert {row["jsonrpc-0.3"] for row in METHODS.values()} - {"(none in 0.3)"} == set(V03_METHODS)
    for name, row in METHODS.items():
        assert V03_METHODS.get(row["jsonrpc-0.3"], name) == name
        # Each test named for this module is one of its own.
        for test in re.findall(r"(?<![:\w])test_\w+\b(?!\.py)", row["test"]):
            assert callable(globals().get(test)), test


# --- the card ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_the_public_card_parses_as_the_version_s_agent_card(
    http: httpx.AsyncClient, version: str
) -> None:
    headers = V1 if version == "1.0" else {}
    response = await http.get("/.well-known/agent-card.json", headers=headers)
    assert response.http_version == "HTTP/2" and response.status_code == 200
    api = _api(http, "jsonrpc", version)
    # Without the header it is the SDK's backward-compatible card: the 0.3 fields and the 1.0
    # ones in one object, which each version's parser reads, ignoring the other's fields.
    card = conforms(api, "card", response.json(), strict=version == "1.0")
    assert card.name and card.skills
    assert {skill.id for skill in card.skills} >= {"sentiment-cnn", "chat"}


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_get_extended_agent_card(http: httpx.AsyncClient, binding: str, version: str) -> None:
    api = _api(http, binding, version)
    card = conforms(api, "card", await api.extended_card())
    assert card.name and card.skills
    anonymous = Api(http, binding, version)
    with pytest.raises((ApiError, AssertionError, KeyError)):
        await anonymous.extended_card()  # 401 without a token


# --- a one-shot skill -------------------------------------------------------------------------


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_send_message_one_shot(
    http: httpx.AsyncClient, double: OllamaDouble, binding: str, version: str
) -> None:
    api = _api(http, binding, version)
    message = api.message(GOOD, skill="sentiment-cnn")
    params: dict[str, Any] = {"message": message}
    if binding == "jsonrpc":
        raw = await api.rpc("SendMessage" if version == "1.0" else "message/send", params)
    else:
        raw = await api.rest("POST", "/message:send", json=params)
    conforms(api, "send", raw)
    task = raw if (binding, version) == ("jsonrpc", "0.3") else raw["task"]
    conforms(api, "task", task)
    assert state_of(task["status"]["state"]) == "completed"
    assert history(task)[0] == ("user", GOOD)
    [artifact] = task["artifacts"]
    assert "positive" in str(artifact)


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_send_streaming_message_one_shot(
    http: httpx.AsyncClient, binding: str, version: str
) -> None:
    api = _api(http, binding, version)
    events = await api.stream(api.message(GOOD, skill="sentiment-cnn"))
    for event in events:
        conforms(api, "event", event_payload(api, event))
    # The stream begins with the task (or its first status) and ends when the task does.
    assert events[0].kind in ("task", "status")
    assert events[-1].kind == "status" and events[-1].state == "completed"
    assert any(event.kind == "artifact" for event in events)


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_get_task(http: httpx.AsyncClient, binding: str, version: str) -> None:
    api = _api(http, binding, version)
    sent = await api.say(GOOD, skill="sentiment-cnn")
    task = conforms(api, "task", await api.get(sent["id"]))
    assert task.id == sent["id"]
    whole = await api.get(sent["id"])
    assert len(whole["history"]) >= 2
    last = await api.get(sent["id"], history_length=1)
    assert last["history"] == whole["history"][-1:]
    await _refused(api, "TaskNotFound", api.get(str(uuid.uuid4())))
    await _refused(api, "InvalidParams", api.get(sent["id"], history_length=-1))


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_list_tasks(http: httpx.AsyncClient, binding: str, version: str) -> None:
    api = _api(http, binding, version)
    sent = [await api.say(GOOD, skill="sentiment-cnn") for _ in range(2)]
    if version == "0.3":  # 0.3 has no ListTasks: the binding's "no such method"
        if binding == "jsonrpc":
            with pytest.raises(ApiError) as missing:
                await api.list_tasks()
            assert missing.value.code == -32601
        else:
            assert (await http.get("/a2a/rest/v1/tasks", headers=AUTH)).status_code == 404
        return
    listed = conforms(api, "list", await api.list_tasks())
    assert {task["id"] for task in sent} <= {task.id for task in listed.tasks}
    page = conforms(api, "list", await api.list_tasks(pageSize=1))
    assert len(page.tasks) == 1 and page.next_page_token
    done = conforms(api, "list", await api.list_tasks(status="TASK_STATE_COMPLETED"))
    assert done.tasks
    assert {task.status.state for task in done.tasks} == {TaskState.TASK_STATE_COMPLETED}
    await _refused(api, "InvalidParams", api.list_tasks(status="TASK_STATE_BOGUS"))


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_cancel_task(
    http: httpx.AsyncClient, replies: OllamaDouble, binding: str, version: str
) -> None:
    api = _api(http, binding, version)
    done = await api.say(GOOD, skill="sentiment-cnn")
    await _refused(api, "TaskNotCancelable", api.cancel(done["id"]))
    await _refused(api, "TaskNotFound", api.cancel(str(uuid.uuid4())))
    # A conversation waiting for its next message is cancelable, once.
    waiting = await api.say(FIRST)
    assert state_of(waiting["status"]["state"]) == "input-required"
    canceled = conforms(api, "task", await api.cancel(waiting["id"]))
    assert canceled.id == waiting["id"]
    assert state_of((await api.get(waiting["id"]))["status"]["state"]) == "canceled"
    await _refused(api, "TaskNotCancelable", api.cancel(waiting["id"]))


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_subscribe_to_task(
    http: httpx.AsyncClient, replies: OllamaDouble, binding: str, version: str
) -> None:
    api = _api(http, binding, version)
    done = await api.say(GOOD, skill="sentiment-cnn")
    await _refused(api, "UnsupportedOperation", api.subscribe(done["id"]))
    await _refused(api, "TaskNotFound", api.subscribe(str(uuid.uuid4())))
    # A conversation waiting for input runs nothing: the subscription is its snapshot.
    waiting = await api.say(FIRST)
    events = await api.subscribe(waiting["id"])
    assert [event.kind for event in events] == ["task"]
    conforms(api, "event", event_payload(api, events[0]))
    assert events[0].state == "input-required"


# --- a multi-turn skill -------------------------------------------------------------------------


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_a_conversation_over_send_message(
    http: httpx.AsyncClient, replies: OllamaDouble, binding: str, version: str
) -> None:
    api = _api(http, binding, version)
    first = await api.say(FIRST)
    conforms(api, "task", first)
    assert state_of(first["status"]["state"]) == "input-required"
    second = await api.say(SECOND, task_id=first["id"], skill=None)
    conforms(api, "task", second)
    assert second["id"] == first["id"] and second["contextId"] == first["contextId"]
    assert [role for role, _ in history(second)] == ["user", "agent", "user"]
    assert status_text(second) == REPLIES[1][1]
    # A message to an ended task is refused as the specification says.
    await api.cancel(first["id"])
    await _refused(api, "UnsupportedOperation", api.say("Third?", task_id=first["id"], skill=None))


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_a_conversation_over_streams(
    http: httpx.AsyncClient, replies: OllamaDouble, binding: str, version: str
) -> None:
    api = _api(http, binding, version)
    first = await api.stream(api.message(FIRST))
    for event in first:
        conforms(api, "event", event_payload(api, event))
    assert first[-1].kind == "status" and first[-1].state == "input-required"
    task_id = first[0].raw["id"] if first[0].kind == "task" else first[0].raw["taskId"]
    second = await api.stream(api.message(SECOND, task_id=task_id, skill=None))
    for event in second:
        conforms(api, "event", event_payload(api, event))
    assert second[-1].state == "input-required" and second[-1].text == REPLIES[1][1]
    streamed = "".join(event.text for event in second if event.kind == "artifact")
    assert streamed == REPLIES[1][1]


# --- push notification configs (off in this agent's default configuration) ---------------------


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_push_notification_configs_while_push_is_off(
    http: httpx.AsyncClient, binding: str, version: str
) -> None:
    card = (await http.get("/.well-known/agent-card.json", headers=V1)).json()
    assert card["capabilities"].get("pushNotifications", False) is False
    api = _api(http, binding, version)
    task = await api.say(GOOD, skill="sentiment-cnn")
    hook = "https://hooks.example.com/a2a"
    await _refused(api, "PushNotificationNotSupported", api.push_set(task["id"], hook, id="c1"))
    await _refused(api, "PushNotificationNotSupported", api.push_get(task["id"], "c1"))
    await _refused(api, "PushNotificationNotSupported", api.push_list(task["id"]))
    await _refused(api, "PushNotificationNotSupported", api.push_delete(task["id"], "c1"))


@pytest.fixture(scope="module")
def push_server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    port = free_port()
    with running_server(
        ollama_host=double.url,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        api_tokens=TOKEN,
        a2a_push_allowed_hosts="127.0.0.1",
    ) as running:
        yield running


def _push_url(api: Api, config: Any) -> str:
    """The webhook URL of a parsed push config, whichever version's schema it is."""
    url: str = config.url if api.version == "1.0" else config.push_notification_config.url
    return url


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_push_notification_configs_while_push_is_on(
    push_server: ServerProcess, binding: str, version: str
) -> None:
    async with h2_client(push_server) as http:
        card = (await http.get("/.well-known/agent-card.json", headers=V1)).json()
        assert card["capabilities"]["pushNotifications"] is True
        api = _api(http, binding, version)
        # A finished task: its configs are kept and nothing is ever sent to them.
        task = await api.say(GOOD, skill="sentiment-cnn")
        hook = "http://127.0.0.1:9/conformance"
        stored = conforms(api, "push", await api.push_set(task["id"], hook, id="c1", token="t1"))
        assert _push_url(api, stored) == hook
        got = conforms(api, "push", await api.push_get(task["id"], "c1"))
        assert _push_url(api, got) == hook
        listed = conforms(api, "push-list", await api.push_list(task["id"]))
        configs = listed if isinstance(listed, list) else listed.configs
        assert [_push_url(api, config) for config in configs] == [hook]
        await api.push_delete(task["id"], "c1")
        await _refused(api, "TaskNotFound", api.push_get(task["id"], "c1"))
        # A host off the allowlist is invalid params; an unknown task is not found.
        elsewhere = "http://10.1.2.3/hook"
        await _refused(api, "InvalidParams", api.push_set(task["id"], elsewhere, id="c2"))
        await _refused(api, "TaskNotFound", api.push_set(str(uuid.uuid4()), hook, id="c3"))


# --- errors every method shares -----------------------------------------------------------------


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_invalid_params_and_unsupported_content(
    http: httpx.AsyncClient, binding: str, version: str
) -> None:
    api = _api(http, binding, version)
    await _refused(api, "InvalidParams", api.send(api.message(GOOD, skill="no-such-skill")))
    await _refused(api, "ContentTypeNotSupported", api.send(api.file_message()))
    await _refused(api, "InvalidParams", api.stream(api.message(GOOD, skill="no-such-skill")))


@pytest.mark.parametrize("binding", ["jsonrpc", "rest"])
async def test_a_version_the_agent_does_not_speak(http: httpx.AsyncClient, binding: str) -> None:
    api = Api(http, binding, "1.0", auth={**AUTH, "A2A-Version": "2.0"})
    await _refused(api, "VersionNotSupported", api.say(GOOD, skill="sentiment-cnn"))
    await _refused(api, "VersionNotSupported", api.get(str(uuid.uuid4())))
