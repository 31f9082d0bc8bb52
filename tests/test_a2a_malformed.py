"""Malformed input on every A2A route, over HTTP/2 on the real Hypercorn process, on both
protocol versions and both bindings: each gets the protocol's own client error (JSON-RPC
-32700 / -32600 / -32601 / -32602 / -32009 / -32001 in an HTTP 200; HTTP+JSON 400 or 404
with ``{"error": {"code", "status", "message", "details"}}``), never -32603 or a 5xx, and
leaves no task behind. Also ``POST /v1/classify`` with odd bodies (422 problems)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from service.a2a.sdk_compat import V03_METHODS
from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

V1 = {"A2A-Version": "1.0"}
VERSION_HEADERS = {"1.0": V1, "0.3": {}}
JSON_CT = {"Content-Type": "application/json"}
JSONRPC_PATHS = ["/", "/a2a/jsonrpc"]
GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(ollama_host=double.url, max_batch=8) as running:
        yield running


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as client:
        yield client


# --- reading answers -----------------------------------------------------------------------


def _payloads(response: httpx.Response) -> list[Any]:
    """The JSON body, or the JSON of each server-sent event."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in response.text.splitlines() if line[:5] == "data:"]
    return [response.json()]


def rpc_error(response: httpx.Response) -> dict[str, Any]:
    """The one JSON-RPC error of an answer (a JSON body or an event stream), in an HTTP 200."""
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200, response.text
    errors = [payload["error"] for payload in _payloads(response) if "error" in payload]
    assert len(errors) == 1, response.text
    [error] = errors
    assert isinstance(error["code"], int) and error["message"], error
    assert error["code"] != -32603, error
    return error


def rest_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The HTTP+JSON error body of a refusal with ``status``."""
    assert response.http_version == "HTTP/2"
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == status and error["status"] and error["message"], error
    return error


def reason(error: dict[str, Any]) -> str:
    [info] = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    return str(info["reason"])


async def task_count(http: httpx.AsyncClient) -> int:
    response = await http.post(
        "/a2a/jsonrpc",
        json={"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}},
        headers=V1,
    )
    return int(response.json()["result"]["totalSize"])


def envelope(method: str, params: Any, request_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def message_1_0(*parts: Any, **fields: Any) -> dict[str, Any]:
    return {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "parts": list(parts), **fields}


def message_0_3(*parts: Any, **fields: Any) -> dict[str, Any]:
    typed = [{"kind": "text" if "text" in p else "data", **p} for p in parts]
    return {"role": "user", "kind": "message", "messageId": uuid.uuid4().hex, "parts": typed,
            **fields}  # fmt: skip


def rest_message_0_3(*parts: Any) -> dict[str, Any]:
    content = [{"text": p["text"]} if "text" in p else {"data": {"data": p["data"]}} for p in parts]
    return {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "content": content}


# --- bodies that are not JSON the agent reads ------------------------------------------------

NOT_JSON = {
    "not-utf8": b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"x": "\xff\xfe"}}',
    "not-utf8-key": b'{"jsonrpc\xc3": "2.0"}',
    "too-deep-array": b"[" * 5000 + b"]" * 5000,
    "too-deep-object": b'{"a": ' * 100 + b"1" + b"}" * 100,
    "nan": b'{"jsonrpc": "2.0", "id": NaN, "method": "GetTask", "params": {"id": "x"}}',
    "infinity": b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": -Infinity}}',
    "out-of-range": b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"x": 1e400}}',
    "beyond-a-double": b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"x": '
    + b"9" * 400
    + b"}}",
    "huge-integer": b'{"jsonrpc": "2.0", "id": ' + b"9" * 5000 + b', "method": "GetTask"}',
    "not-json": b"{not json",
    "empty": b"",
}  # fmt: skip


@pytest.mark.parametrize("path", JSONRPC_PATHS)
@pytest.mark.parametrize("version", ["1.0", "0.3"])
@pytest.mark.parametrize("body", list(NOT_JSON.values()), ids=list(NOT_JSON))
async def test_jsonrpc_body_that_is_not_json_is_a_parse_error(
    http: httpx.AsyncClient, path: str, version: str, body: bytes
) -> None:
    response = await http.post(path, content=body, headers={**JSON_CT, **VERSION_HEADERS[version]})
    error = rpc_error(response)
    assert error["code"] == -32700
    assert response.json()["id"] is None


@pytest.mark.parametrize("path", JSONRPC_PATHS)
@pytest.mark.parametrize("version", ["1.0", "0.3"])
@pytest.mark.parametrize(
    "body",
    ["[]", "[1]", "1", '"x"', "null", "true", "{}",
     '{"jsonrpc": "2.0", "id": null, "method": {}, "params": {}}',
     '{"jsonrpc": "2.0", "id": 1, "method": ["message/send"], "params": {}}'],
)  # fmt: skip
async def test_jsonrpc_json_that_is_not_a_request_object_is_an_invalid_request(
    http: httpx.AsyncClient, path: str, version: str, body: str
) -> None:
    response = await http.post(path, content=body, headers={**JSON_CT, **VERSION_HEADERS[version]})
    assert rpc_error(response)["code"] == -32600


REST_BODY_ROUTES = [
    ("/a2a/rest/message:send", V1),
    ("/a2a/rest/message:stream", V1),
    ("/a2a/rest/tasks/no-such-task/pushNotificationConfigs", V1),
    ("/a2a/rest/v1/message:send", {}),
    ("/a2a/rest/v1/message:stream", {}),
    ("/a2a/rest/v1/tasks/no-such-task/pushNotificationConfigs", {}),
]
REST_ROUTE_IDS = [
    f"{'0.3' if '/v1/' in path else '1.0'}-{path.rsplit('/', 1)[-1]}"
    for path, _ in REST_BODY_ROUTES
]


@pytest.mark.parametrize(("path", "headers"), REST_BODY_ROUTES, ids=REST_ROUTE_IDS)
@pytest.mark.parametrize(
    "body",
    [*NOT_JSON.values(), b"[]", b"1", b'"x"', b"null"],
    ids=[*NOT_JSON, "array", "number", "string", "null"],
)
async def test_rest_body_that_is_not_a_json_object_is_a_400(
    http: httpx.AsyncClient, double: OllamaDouble, path: str, headers: dict, body: bytes
) -> None:
    response = await http.post(path, content=body, headers={**JSON_CT, **headers})
    error = rest_error(response, 400)
    assert error["status"] == "INVALID_ARGUMENT"
    # Not JSON: the request is malformed; JSON but not a request message: its params are.
    if body in NOT_JSON.values():
        assert reason(error) == "INVALID_REQUEST"
    else:
        assert reason(error) in ("INVALID_REQUEST", "INVALID_PARAMS")
    assert double.chat_requests == []


async def test_not_utf8_names_the_byte_and_nesting_names_the_limit(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/a2a/jsonrpc", content=NOT_JSON["not-utf8"], headers=JSON_CT)
    assert "not valid UTF-8" in rpc_error(response)["message"]
    response = await http.post(
        "/a2a/rest/message:send", content=NOT_JSON["too-deep-array"], headers={**JSON_CT, **V1}
    )
    assert "nests deeper than 64 levels" in rest_error(response, 400)["message"]


# --- "skill" of every JSON type, wherever it may be given ------------------------------------

NOT_STRINGS = {"number": 1, "fraction": 1.5, "boolean": True, "list": ["sentiment-cnn"],
               "empty-list": [], "object": {"id": "sentiment-cnn"}}  # fmt: skip


def _with_skill(where: str, skill: Any) -> dict[str, Any]:
    if where == "data":
        return {"message": message_1_0({"data": {"skill": skill, "texts": [GOOD]}})}
    if where == "message.metadata":
        return {"message": message_1_0({"text": GOOD}, metadata={"skill": skill})}
    return {"message": message_1_0({"text": GOOD}), "metadata": {"skill": skill}}


@pytest.mark.parametrize("where", ["data", "message.metadata", "metadata"])
@pytest.mark.parametrize("skill", list(NOT_STRINGS.values()), ids=list(NOT_STRINGS))
async def test_a_skill_that_is_not_a_string_is_invalid_params(
    http: httpx.AsyncClient, double: OllamaDouble, where: str, skill: Any
) -> None:
    before = await task_count(http)
    response = await http.post(
        "/a2a/jsonrpc", json=envelope("SendMessage", _with_skill(where, skill)), headers=V1
    )
    error = rpc_error(response)
    assert error["code"] == -32602
    assert "must be a string" in error["message"]
    [bad] = [d for d in error["data"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert bad["fieldViolations"][0]["field"] == ("skill" if where == "data" else f"{where}.skill")
    assert await task_count(http) == before
    assert double.chat_requests == []


@pytest.mark.parametrize("skill", [[], 1, {}], ids=["list", "number", "object"])
@pytest.mark.parametrize("binding", ["jsonrpc-1.0", "jsonrpc-0.3", "rest-1.0", "rest-0.3"])
async def test_a_skill_that_is_not_a_string_is_refused_on_every_binding(
    http: httpx.AsyncClient, binding: str, skill: Any
) -> None:
    before = await task_count(http)
    part = {"data": {"skill": skill, "texts": [GOOD]}}
    if binding == "jsonrpc-1.0":
        response = await http.post(
            "/", json=envelope("SendMessage", {"message": message_1_0(part)}), headers=V1
        )
        assert rpc_error(response)["code"] == -32602
    elif binding == "jsonrpc-0.3":
        response = await http.post(
            "/", json=envelope("message/send", {"message": message_0_3(part)})
        )
        assert rpc_error(response)["code"] == -32602
    elif binding == "rest-1.0":
        response = await http.post(
            "/a2a/rest/message:send", json={"message": message_1_0(part)}, headers=V1
        )
        assert reason(rest_error(response, 400)) == "INVALID_PARAMS"
    else:
        response = await http.post(
            "/a2a/rest/v1/message:send", json={"message": rest_message_0_3(part)}
        )
        assert reason(rest_error(response, 400)) == "INVALID_PARAMS"
    assert await task_count(http) == before


async def test_a_null_skill_means_the_default_and_a_string_must_name_a_skill(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/a2a/jsonrpc", json=envelope("SendMessage", _with_skill("data", None)), headers=V1
    )
    task = response.json()["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    assert task["artifacts"][0]["name"] == "sentiment-cnn-result"
    response = await http.post(
        "/a2a/jsonrpc", json=envelope("SendMessage", _with_skill("data", "")), headers=V1
    )
    assert "unknown skill ''" in rpc_error(response)["message"]


# --- method names of the other protocol version ----------------------------------------------

# The product's table (tests/test_a2a_sdk_compat.py checks it against the SDK's own names).
V03_TO_V10 = V03_METHODS


@pytest.mark.parametrize("path", JSONRPC_PATHS)
@pytest.mark.parametrize("method", list(V03_TO_V10))
async def test_a_0_3_method_under_version_1_0_is_method_not_found(
    http: httpx.AsyncClient, path: str, method: str
) -> None:
    params = {"id": "x", "message": message_0_3({"text": GOOD})}
    response = await http.post(path, json=envelope(method, params, "r1"), headers=V1)
    error = rpc_error(response)
    assert error["code"] == -32601
    assert repr(V03_TO_V10[method]) in error["message"]
    assert response.json()["id"] == "r1"


@pytest.mark.parametrize("version", ["2.0", "0", "abc", "1.0.5"])
async def test_a_0_3_method_under_another_version(http: httpx.AsyncClient, version: str) -> None:
    response = await http.post(
        "/", json=envelope("tasks/get", {"id": "x"}), headers={"A2A-Version": version}
    )
    # 1.x is 1.0 semantics (no such method); 0.x is 0.3; anything else is not spoken here.
    expected = {"2.0": -32009, "0": -32001, "abc": -32009, "1.0.5": -32601}[version]
    assert rpc_error(response)["code"] == expected


async def test_a_1_0_method_without_the_header_is_version_not_supported(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/", json=envelope("GetTask", {"id": "x"}))
    assert rpc_error(response)["code"] == -32009  # the SDK's answer, as docs/a2a.md says


# --- integers the 0.3 adapter converts to int32 -----------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"id": "x", "historyLength": 2**31},
        {"id": "x", "historyLength": -(2**31) - 1},
    ],
)
async def test_0_3_int32_parameters_out_of_range_are_invalid_params(
    http: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await http.post("/", json=envelope("tasks/get", params))
    assert rpc_error(response)["code"] == -32602


async def test_0_3_send_with_history_length_out_of_range_leaves_no_task(
    http: httpx.AsyncClient,
) -> None:
    before = await task_count(http)
    params = {"message": message_0_3({"text": GOOD}), "configuration": {"historyLength": 2**40}}
    response = await http.post("/", json=envelope("message/send", params))
    assert rpc_error(response)["code"] == -32602
    assert await task_count(http) == before


@pytest.mark.parametrize("value", ["x", "1.5", "-1", "2147483648", "99999999999999999999"])
@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_rest_history_length_that_is_not_a_uint32_is_a_400(
    http: httpx.AsyncClient, version: str, value: str
) -> None:
    path = "/a2a/rest/tasks/x" if version == "1.0" else "/a2a/rest/v1/tasks/x"
    response = await http.get(
        path, params={"historyLength": value}, headers=VERSION_HEADERS[version]
    )
    assert rest_error(response, 400)["status"] == "INVALID_ARGUMENT"
    response = await http.get(path, params={"historyLength": "3"}, headers=VERSION_HEADERS[version])
    assert rest_error(response, 404)["status"] == "NOT_FOUND"


# --- unknown task ids on every route -----------------------------------------------------------

UNKNOWN = "no-such-task"
JSONRPC_TASK_CALLS = [
    ("1.0", "GetTask", {"id": UNKNOWN}, -32001),
    ("1.0", "CancelTask", {"id": UNKNOWN}, -32001),
    ("1.0", "SubscribeToTask", {"id": UNKNOWN}, -32001),
    ("1.0", "SendMessage", {"message": message_1_0({"text": GOOD}, taskId=UNKNOWN)}, -32001),
    ("1.0", "CreateTaskPushNotificationConfig", {"taskId": UNKNOWN, "url": "http://x"}, -32003),
    ("1.0", "GetTaskPushNotificationConfig", {"taskId": UNKNOWN, "id": "p"}, -32003),
    ("1.0", "ListTaskPushNotificationConfigs", {"taskId": UNKNOWN}, -32003),
    ("1.0", "DeleteTaskPushNotificationConfig", {"taskId": UNKNOWN, "id": "p"}, -32003),
    ("0.3", "tasks/get", {"id": UNKNOWN}, -32001),
    ("0.3", "tasks/cancel", {"id": UNKNOWN}, -32001),
    ("0.3", "tasks/resubscribe", {"id": UNKNOWN}, -32001),
    ("0.3", "message/send", {"message": message_0_3({"text": GOOD}, taskId=UNKNOWN)}, -32001),
    ("0.3", "tasks/pushNotificationConfig/set",
     {"taskId": UNKNOWN, "pushNotificationConfig": {"url": "http://x"}}, -32003),
    ("0.3", "tasks/pushNotificationConfig/get",
     {"id": UNKNOWN, "pushNotificationConfigId": "p"}, -32003),
    ("0.3", "tasks/pushNotificationConfig/list", {"id": UNKNOWN}, -32003),
    ("0.3", "tasks/pushNotificationConfig/delete",
     {"id": UNKNOWN, "pushNotificationConfigId": "p"}, -32003),
]  # fmt: skip


@pytest.mark.parametrize(
    ("version", "method", "params", "code"),
    JSONRPC_TASK_CALLS,
    ids=[call[1] for call in JSONRPC_TASK_CALLS],
)
async def test_jsonrpc_unknown_task_on_every_method(
    http: httpx.AsyncClient, version: str, method: str, params: dict[str, Any], code: int
) -> None:
    response = await http.post(
        "/a2a/jsonrpc", json=envelope(method, params), headers=VERSION_HEADERS[version]
    )
    assert rpc_error(response)["code"] == code


REST_TASK_CALLS = [
    ("GET", "/a2a/rest/tasks/{}", V1, None, 404),
    ("POST", "/a2a/rest/tasks/{}:cancel", V1, None, 404),
    ("GET", "/a2a/rest/tasks/{}:subscribe", V1, None, 404),
    ("POST", "/a2a/rest/tasks/{}:subscribe", V1, None, 404),
    ("POST", "/a2a/rest/message:send", V1, {"message": message_1_0({"text": GOOD}, taskId=UNKNOWN)},
     404),
    ("GET", "/a2a/rest/tasks/{}/pushNotificationConfigs", V1, None, 400),
    ("POST", "/a2a/rest/tasks/{}/pushNotificationConfigs", V1, {"url": "http://x"}, 400),
    ("GET", "/a2a/rest/tasks/{}/pushNotificationConfigs/p", V1, None, 400),
    ("DELETE", "/a2a/rest/tasks/{}/pushNotificationConfigs/p", V1, None, 400),
    ("GET", "/a2a/rest/v1/tasks/{}", {}, None, 404),
    ("POST", "/a2a/rest/v1/tasks/{}:cancel", {}, None, 404),
    ("GET", "/a2a/rest/v1/tasks/{}:subscribe", {}, None, 404),
    ("POST", "/a2a/rest/v1/tasks/{}:subscribe", {}, None, 404),
    ("GET", "/a2a/rest/v1/tasks/{}/pushNotificationConfigs", {}, None, 400),
    ("POST", "/a2a/rest/v1/tasks/{}/pushNotificationConfigs", {},
     {"parent": f"tasks/{UNKNOWN}", "configId": "p",
      "config": {"pushNotificationConfig": {"url": "http://x"}}}, 400),
    ("GET", "/a2a/rest/v1/tasks/{}/pushNotificationConfigs/p", {}, None, 400),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"),
    REST_TASK_CALLS,
    ids=[f"{call[0]} {call[1]}" for call in REST_TASK_CALLS],
)
async def test_rest_unknown_task_on_every_route(
    http: httpx.AsyncClient, method: str, path: str, headers: dict, body: Any, status: int
) -> None:
    content = json.dumps(body).encode() if body is not None else b""  # always a full body
    response = await http.request(
        method, path.format(UNKNOWN), content=content, headers={**JSON_CT, **headers}
    )
    error = rest_error(response, status)
    expected = "TASK_NOT_FOUND" if status == 404 else "PUSH_NOTIFICATION_NOT_SUPPORTED"
    assert reason(error) == expected


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/a2a/rest/tasks/x:subscribe", "GET, POST"),
        ("/a2a/rest/tasks/x/pushNotificationConfigs/p", "DELETE, GET"),
        # POST only, though GET /tasks/{id} would take "x:cancel" for an id.
        ("/a2a/rest/tasks/x:cancel", "POST"),
        ("/a2a/rest/v1/tasks/x/pushNotificationConfigs", "GET, POST"),
    ],
)
async def test_the_allow_header_names_every_method_of_the_path(
    server: ServerProcess, path: str, allow: str
) -> None:
    # Its own connection: Hypercorn (unpatched) drops an HTTP/2 connection when a request is
    # answered before its end of stream arrives, which a 405 is (service/h2_patch.py).
    async with h2_client(server) as client:
        response = await client.request("PUT", path, headers=V1)
    assert response.status_code == 405 and response.headers["allow"] == allow


# --- parts of every kind -----------------------------------------------------------------------

PARTS_1_0 = {
    "raw": ({"raw": "aGk=", "mediaType": "text/plain"}, -32005),
    "url": ({"url": "http://127.0.0.1/x.png", "mediaType": "image/png"}, -32005),
    "empty-part": ({}, -32005),
    "metadata-only": ({"metadata": {"a": 1}}, -32005),
    "blank-text": ({"text": " "}, -32602),
    "text-not-a-string": ({"text": 1}, -32602),
    "data-number": ({"data": 1}, -32602),
    "data-list": ({"data": [1]}, -32602),
    "data-null": ({"data": None}, -32602),
    "data-empty": ({"data": {}}, -32602),
    "data-unknown-key": ({"data": {"textz": ["a"]}}, -32602),
    "data-texts-null": ({"data": {"texts": None}}, -32602),
    "data-messages-not-a-list": ({"data": {"skill": "moderation", "messages": "x"}}, -32602),
}


@pytest.mark.parametrize(
    ("part", "code"), list(PARTS_1_0.values()), ids=list(PARTS_1_0)
)  # fmt: skip
async def test_parts_of_every_kind_over_jsonrpc_1_0(
    http: httpx.AsyncClient, part: dict[str, Any], code: int
) -> None:
    before = await task_count(http)
    response = await http.post(
        "/a2a/jsonrpc", json=envelope("SendMessage", {"message": message_1_0(part)}), headers=V1
    )
    assert rpc_error(response)["code"] == code
    assert await task_count(http) == before


PARTS_0_3_REST = {
    "string": "a",
    "number": 1,
    "empty-part": {},
    "text-null": {"text": None},
    "file-null": {"file": None},
    "data-null": {"data": None},
    "file": {"file": {"fileWithUri": "http://127.0.0.1/x.png"}},
    "data-not-an-object": {"data": {"data": 1}},
    "kind": {"kind": "text", "text": GOOD},
}


@pytest.mark.parametrize("path", ["/a2a/rest/v1/message:send", "/a2a/rest/v1/message:stream"])
@pytest.mark.parametrize("part", list(PARTS_0_3_REST.values()), ids=list(PARTS_0_3_REST))
async def test_parts_of_every_kind_over_rest_0_3(
    http: httpx.AsyncClient, path: str, part: Any
) -> None:
    before = await task_count(http)
    message = {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "content": [part]}
    response = await http.post(path, json={"message": message})
    assert rest_error(response, 400)["status"] == "INVALID_ARGUMENT"
    assert await task_count(http) == before


# --- the REST API's own routes ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/moderate"])
@pytest.mark.parametrize(
    "body",
    [*NOT_JSON.values(), b"[]", b"null", b"1e999", b'{"text": 1}', b'{"text": null}',
     b'{"texts": {}}', b'{"text": "a", "model": 1}', b'{"text": "\\ud800"}'],
    ids=[*NOT_JSON, "array", "null", "1e999", "text-number", "text-null", "texts-object",
         "model-number", "lone-surrogate"],
)  # fmt: skip
async def test_rest_odd_bodies_are_422_problems(
    http: httpx.AsyncClient, double: OllamaDouble, path: str, body: bytes
) -> None:
    response = await http.post(path, content=body, headers=JSON_CT)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/validation-error"
    assert double.chat_requests == []


async def test_a_refusal_repeats_at_most_a_bounded_part_of_what_it_refuses(
    http: httpx.AsyncClient,
) -> None:
    long_name = "s" * 5_000
    response = await http.post(
        "/a2a/jsonrpc", json=envelope("SendMessage", _with_skill("metadata", long_name)), headers=V1
    )
    error = rpc_error(response)
    assert (
        error["message"].startswith("unknown skill 'sssss")
        and "(5000 characters)" in error["message"]
    )
    assert len(response.content) < 1_000, response.text
    keys = {f"key-{i}-" + "k" * 500: 1 for i in range(12)}
    message = message_1_0({"data": {"texts": [GOOD], **keys}})
    response = await http.post(
        "/a2a/jsonrpc", json=envelope("SendMessage", {"message": message}), headers=V1
    )
    error = rpc_error(response)
    assert "unknown keys ['key-0-kkk" in error["message"] and "and 2 more" in error["message"]
    assert len(response.content) < 1_500
    message = message_1_0({"data": {"texts": [GOOD], "model": "m" * 5_000}})
    response = await http.post(
        "/a2a/jsonrpc", json=envelope("SendMessage", {"message": message}), headers=V1
    )
    error = rpc_error(response)
    assert "no model named 'mmm" in error["message"] and len(response.content) < 1_000


async def test_a_drift_report_request_too_long_to_screen_with_its_report_is_invalid_params(
    http: httpx.AsyncClient, double: OllamaDouble
) -> None:
    # Each text is within MAX_TEXT_CHARS, but the request and the report together would not
    # fit the guard's context: refused now, not a task failed later as a guard outage.
    long_texts = ["word " * 1_800, "more " * 1_800]  # 9,000 characters each
    message = message_1_0({"data": {"skill": "drift-report", "texts": long_texts}})
    response = await http.post(
        "/a2a/jsonrpc", json=envelope("SendMessage", {"message": message}), headers=V1
    )
    error = rpc_error(response)
    assert error["code"] == -32602 and "GUARD_NUM_CTX" in error["message"], error
    assert double.requests == []  # nothing was screened, no task was made
    # A short request is answered (screened with its report) as before.
    message = message_1_0({"data": {"skill": "drift-report", "texts": ["how is drift?"]}})
    response = await http.post(
        "/a2a/jsonrpc", json=envelope("SendMessage", {"message": message}), headers=V1
    )
    assert response.status_code == 200 and "error" not in response.json(), response.text[:300]
