"""A2A push notifications over HTTP/2 on the real Hypercorn process, with a webhook receiver
on loopback: configs set, read, listed and deleted on both bindings and both protocol
versions (raw wire forms and a2a-sdk's client); task updates POSTed with the config's token
and authentication, off the request path, retried with backoff, never redirected; webhook
URLs refused unless their host is allowed (and, for a host matched by a pattern, public);
push off by default; configs in a SQLite task store shared by two replicas and kept across a
restart; one caller never sees another's configs; no 5xx for malformed push requests. Plus
the policy and the sender in-process (DNS rebinding, timeouts, Retry-After)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.tasks import (
    DatabasePushNotificationConfigStore,
    InMemoryPushNotificationConfigStore,
    InMemoryTaskStore,
)
from a2a.types import (
    AgentCard,
    AuthenticationInfo,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    ListTaskPushNotificationConfigsRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import A2AError

from service.a2a.executor import GuardedAgentExecutor
from service.a2a.push import (
    API_KEY_HEADER,
    TOKEN_HEADER,
    PushPolicy,
    PushSender,
    Refused,
    auth_headers,
)
from service.a2a.sdk_compat import card_of, create_rest_v03_routes
from service.a2a.store import create_task_storage
from service.config import Settings
from tests.helpers import ServerProcess, h2_client, running_server, task_aged
from tests.ollama_double import OllamaDouble

ALICE, BOB = "tok-alice-push-41c2e7", "tok-bob-push-93d7a1"
GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."
CARD = "/.well-known/agent-card.json"
PATTERN_PORT = 9  # the server allows "*:9": any host on port 9 that resolves to public addresses
INVALID_PARAMS, TASK_NOT_FOUND, PUSH_NOT_SUPPORTED = -32602, -32001, -32003

pytestmark = pytest.mark.usefixtures("fresh_double")


# --- the webhook receiver ------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any


Answer = tuple[int, dict[str, str], float]  # status, headers, seconds before answering


class Webhook:
    """A webhook receiver on 127.0.0.1 (HTTP/1.1): records every request and answers 200,
    or what :meth:`script` says for a path."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.answered = 0  # calls answered so far
        self._scripts: dict[str, deque[Answer]] = {}
        self._always: dict[str, Answer] = {}
        self._lock = threading.Lock()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                with webhook._lock:
                    try:
                        body: Any = json.loads(raw)
                    except ValueError:
                        body = raw
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    webhook.hits.append(Hit(path, headers, body))
                    script = webhook._scripts.get(path)
                    if script:
                        status, extra, delay = script.popleft()
                    else:
                        status, extra, delay = webhook._always.get(path, (200, {}, 0.0))
                time.sleep(delay)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with webhook._lock:
                    webhook.answered += 1

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: Answer, always: Answer | None = None) -> None:
        with self._lock:
            self._scripts[path] = deque(answers)
            if always is not None:
                self._always[path] = always

    def reset(self) -> None:
        with self._lock:
            self.hits.clear()
            self.answered = 0
            self._scripts.clear()
            self._always.clear()

    def at(self, path: str) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.hits if hit.path == path]

    async def wait(self, path: str, count: int, within: float = 20.0) -> list[Hit]:
        """The hits at ``path`` once there are ``count`` (or ``within`` seconds passed)."""
        for _ in range(int(within / 0.02)):
            if len(self.at(path)) >= count:
                break
            await asyncio.sleep(0.02)
        return self.at(path)


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    with Webhook() as receiver:
        yield receiver


@pytest.fixture
def hook(webhook: Webhook) -> Webhook:
    webhook.reset()
    return webhook


@pytest.fixture(scope="module")
def server(
    double: OllamaDouble, webhook: Webhook, free_port: Callable[[], int]
) -> Iterator[ServerProcess]:
    port = free_port()
    with running_server(
        ollama_host=double.url,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        models="sentiment-cnn-int8",
        api_tokens=f"alice:{ALICE},bob:{BOB}",
        a2a_push_allowed_hosts=f"127.0.0.1:{webhook.port},*:{PATTERN_PORT}",
        a2a_push_timeout=2,
        a2a_push_retries=2,
        a2a_push_retry_backoff=0.05,
    ) as running:
        yield running


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as client:
        yield client


# --- talking to the agent ------------------------------------------------------------------


def auth(token: str = ALICE, version: str = "1.0") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    return {**headers, "A2A-Version": "1.0"} if version == "1.0" else headers


async def rpc(
    http: httpx.AsyncClient,
    method: str,
    params: Any,
    *,
    version: str = "1.0",
    token: str = ALICE,
) -> dict[str, Any]:
    path = "/a2a/jsonrpc" if version == "1.0" else "/"
    body = {"jsonrpc": "2.0", "id": uuid.uuid4().hex, "method": method, "params": params}
    response = await http.post(path, json=body, headers=auth(token, version))
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    if "error" in answer:
        assert answer["error"]["code"] != -32603, answer
    return answer


def config_1_0(url: str, **fields: Any) -> dict[str, Any]:
    """A 1.0 TaskPushNotificationConfig (JSON); ``scheme``/``credentials`` make its
    authentication."""
    config: dict[str, Any] = {"url": url}
    scheme, credentials = fields.pop("scheme", None), fields.pop("credentials", None)
    if scheme is not None or credentials is not None:
        config["authentication"] = {"scheme": scheme or "", "credentials": credentials or ""}
    return {**config, **fields}


def config_0_3(url: str, **fields: Any) -> dict[str, Any]:
    """A 0.3 PushNotificationConfig (JSON-RPC form)."""
    config: dict[str, Any] = {"url": url}
    scheme, credentials = fields.pop("scheme", None), fields.pop("credentials", None)
    if scheme is not None or credentials is not None:
        config["authentication"] = {"schemes": [scheme] if scheme else []}
        if credentials is not None:
            config["authentication"]["credentials"] = credentials
    return {**config, **fields}


async def send(
    http: httpx.AsyncClient,
    *,
    version: str = "1.0",
    token: str = ALICE,
    push: dict[str, Any] | None = None,
    text: str = GOOD,
) -> dict[str, Any]:
    """A task from the default skill (its push config in the message's configuration)."""
    message_id = uuid.uuid4().hex
    if version == "1.0":
        params: dict[str, Any] = {
            "message": {"role": "ROLE_USER", "messageId": message_id, "parts": [{"text": text}]}
        }
        if push is not None:
            params["configuration"] = {"taskPushNotificationConfig": push}
        answer = await rpc(http, "SendMessage", params, token=token)
        assert "result" in answer, answer
        task: dict[str, Any] = answer["result"]["task"]
        return task
    params = {
        "message": {
            "role": "user",
            "kind": "message",
            "messageId": message_id,
            "parts": [{"kind": "text", "text": text}],
        }
    }
    if push is not None:
        params["configuration"] = {"pushNotificationConfig": push}
    answer = await rpc(http, "message/send", params, version="0.3", token=token)
    assert "result" in answer, answer
    result: dict[str, Any] = answer["result"]
    return result


class Refusal(Exception):
    """An error answer: the JSON-RPC code, or the HTTP status and the error's reason."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message


def _reason(error: dict[str, Any]) -> str:
    infos = [d for d in error.get("details", []) if d["@type"].endswith("google.rpc.ErrorInfo")]
    return str(infos[0]["reason"]) if infos else ""


class PushApi:
    """The four push config calls on one binding and protocol version, answered as plain
    dicts ``{"id", "url", "token", "scheme", "credentials"}`` (or :class:`Refusal`)."""

    def __init__(
        self, http: httpx.AsyncClient, binding: str, version: str, token: str = ALICE,
        prefix: str = "/a2a/rest",
    ) -> None:  # fmt: skip
        self.http, self.binding, self.version = http, binding, version
        self.token, self.prefix = token, prefix

    # -- plumbing
    async def _rpc(self, method: str, params: dict[str, Any]) -> Any:
        answer = await rpc(self.http, method, params, version=self.version, token=self.token)
        if "error" in answer:
            error = answer["error"]
            raise Refusal(error["code"], "", error["message"])
        return answer.get("result")

    async def _rest(self, method: str, path: str, body: Any = None) -> Any:
        headers = auth(self.token, self.version)
        response = await self.http.request(
            method,
            self.prefix + ("/v1" if self.version == "0.3" else "") + path,
            content=None if body is None else json.dumps(body).encode(),
            headers={**headers, "Content-Type": "application/json"},
        )
        assert response.http_version == "HTTP/2"
        assert response.status_code < 500, response.text
        if response.status_code != 200:
            error = response.json()["error"]
            assert error["code"] == response.status_code, error
            raise Refusal(response.status_code, _reason(error), error["message"])
        return response.json()

    @staticmethod
    def _plain(config: dict[str, Any]) -> dict[str, str]:
        if "pushNotificationConfig" in config:  # 0.3
            inner = config["pushNotificationConfig"]
            authentication = inner.get("authentication") or {}
            schemes = authentication.get("schemes") or [""]
            scheme = schemes[0]
        else:
            inner = config
            authentication = inner.get("authentication") or {}
            scheme = authentication.get("scheme", "")
        return {
            "id": inner.get("id", ""),
            "url": inner["url"],
            "token": inner.get("token", ""),
            "scheme": scheme,
            "credentials": authentication.get("credentials", ""),
        }

    # -- the calls
    async def set(self, task_id: str, config_id: str, url: str, **fields: Any) -> dict[str, str]:
        if self.version == "1.0":
            config = config_1_0(url, id=config_id, **fields)
            if self.binding == "jsonrpc":
                stored = await self._rpc(
                    "CreateTaskPushNotificationConfig", {"taskId": task_id, **config}
                )
            else:
                stored = await self._rest(
                    "POST", f"/tasks/{task_id}/pushNotificationConfigs", config
                )
        else:
            config = config_0_3(url, id=config_id, **fields)
            if self.binding == "jsonrpc":
                stored = await self._rpc(
                    "tasks/pushNotificationConfig/set",
                    {"taskId": task_id, "pushNotificationConfig": config},
                )
            else:
                body = {
                    "parent": f"tasks/{task_id}",
                    "configId": config_id,
                    "config": {
                        "name": f"tasks/{task_id}/pushNotificationConfigs/{config_id}",
                        "pushNotificationConfig": config,
                    },
                }
                stored = await self._rest("POST", f"/tasks/{task_id}/pushNotificationConfigs", body)
        return self._plain(stored)

    async def get(self, task_id: str, config_id: str) -> dict[str, str]:
        if self.binding == "rest":
            path = f"/tasks/{task_id}/pushNotificationConfigs/{config_id}"
            return self._plain(await self._rest("GET", path))
        if self.version == "1.0":
            params = {"taskId": task_id, "id": config_id}
            return self._plain(await self._rpc("GetTaskPushNotificationConfig", params))
        params = {"id": task_id, "pushNotificationConfigId": config_id}
        return self._plain(await self._rpc("tasks/pushNotificationConfig/get", params))

    async def list(self, task_id: str) -> list[dict[str, str]]:
        if self.binding == "rest":
            answer = await self._rest("GET", f"/tasks/{task_id}/pushNotificationConfigs")
            configs = answer.get("configs", [])
        elif self.version == "1.0":
            answer = await self._rpc("ListTaskPushNotificationConfigs", {"taskId": task_id})
            configs = answer.get("configs", [])
        else:
            configs = await self._rpc("tasks/pushNotificationConfig/list", {"id": task_id})
        return sorted((self._plain(config) for config in configs), key=lambda c: c["id"])

    async def delete(self, task_id: str, config_id: str) -> None:
        if self.binding == "rest":
            path = f"/tasks/{task_id}/pushNotificationConfigs/{config_id}"
            assert await self._rest("DELETE", path) == {}
        elif self.version == "1.0":
            params = {"taskId": task_id, "id": config_id}
            await self._rpc("DeleteTaskPushNotificationConfig", params)
        else:
            params = {"id": task_id, "pushNotificationConfigId": config_id}
            assert await self._rpc("tasks/pushNotificationConfig/delete", params) is None


APIS = [
    ("jsonrpc", "1.0", "/a2a/rest"),
    ("jsonrpc", "0.3", "/a2a/rest"),
    ("rest", "1.0", "/a2a/rest"),
    ("rest", "0.3", "/a2a/rest"),
    ("rest", "1.0", ""),  # the HTTP+JSON routes at the origin
    ("rest", "0.3", ""),
]
API_IDS = ["jsonrpc-1.0", "jsonrpc-0.3", "rest-1.0", "rest-0.3", "origin-1.0", "origin-0.3"]


def not_found(refusal: Refusal, binding: str) -> bool:
    if binding == "jsonrpc":
        return refusal.code == TASK_NOT_FOUND
    return refusal.code == 404 and refusal.reason == "TASK_NOT_FOUND"


def invalid_params(refusal: Refusal, binding: str) -> bool:
    if binding == "jsonrpc":
        return refusal.code == INVALID_PARAMS
    return refusal.code == 400 and refusal.reason == "INVALID_PARAMS"


def stream_kind(hit: Hit) -> str:
    [kind] = hit.body.keys()
    return str(kind)


def task_id_of(hit: Hit) -> str:
    kind = stream_kind(hit)
    inner = hit.body[kind]
    return str(inner["id"] if kind == "task" else inner["taskId"])


def last_state(hits: list[Hit]) -> str:
    last = hits[-1].body
    status = last.get("statusUpdate", last.get("task", {})).get("status", {})
    return str(status.get("state"))


async def metric(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    text = (await http.get("/metrics")).text
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{selector}}}" if selector else "")) + r" ([0-9.e+]+)"
    match = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# --- the card and the document -------------------------------------------------------------


async def test_the_card_offers_push_notifications_when_hosts_are_allowed(
    http: httpx.AsyncClient,
) -> None:
    for headers in ({"A2A-Version": "1.0"}, {}):  # the 1.0 view and the 0.3 one
        card = (await http.get(CARD, headers=headers)).json()
        assert card["capabilities"]["pushNotifications"] is True
    document = (await http.get("/openapi.json")).json()
    for path in (
        "/a2a/rest/tasks/{id}/pushNotificationConfigs",
        "/a2a/rest/v1/tasks/{id}/pushNotificationConfigs",
    ):
        create = document["paths"][path]["post"]
        assert {"200", "400", "404"} <= set(create["responses"])
        assert "always refused" not in create.get("description", "")
    # 0.3 has its delete route, documented as the 1.0 one.
    delete = document["paths"]["/a2a/rest/v1/tasks/{id}/pushNotificationConfigs/{push_id}"]
    assert "200" in delete["delete"]["responses"]


# --- set, get, list, delete ----------------------------------------------------------------


@pytest.mark.parametrize(("binding", "version", "prefix"), APIS, ids=API_IDS)
async def test_push_configs_are_set_read_listed_and_deleted(
    http: httpx.AsyncClient, hook: Webhook, binding: str, version: str, prefix: str
) -> None:
    api = PushApi(http, binding, version, prefix=prefix)
    task = await send(http)
    url = hook.url("/crud?source=test")
    stored = await api.set(task["id"], "first", url, token="tok-1", scheme="Bearer",
                           credentials="cred-1")  # fmt: skip
    expected = {"id": "first", "url": url, "token": "tok-1", "scheme": "Bearer",
                "credentials": "cred-1"}  # fmt: skip
    assert stored == expected
    assert await api.get(task["id"], "first") == expected
    second = await api.set(task["id"], "second", hook.url("/crud-2"))
    assert second["id"] == "second" and second["scheme"] == ""
    assert [c["id"] for c in await api.list(task["id"])] == ["first", "second"]
    # Setting an id again replaces that config.
    await api.set(task["id"], "second", hook.url("/crud-3"), scheme="ApiKey", credentials="k")
    configs = await api.list(task["id"])
    assert [c["url"] for c in configs] == [url, hook.url("/crud-3")]
    await api.delete(task["id"], "first")
    assert [c["id"] for c in await api.list(task["id"])] == ["second"]
    with pytest.raises(Refusal) as missing:
        await api.get(task["id"], "first")
    assert not_found(missing.value, binding)
    # Configs set on a finished task are kept, and nothing is sent to them.
    assert hook.hits == []


@pytest.mark.parametrize(
    ("binding", "version"),
    [("JSONRPC", "1.0"), ("HTTP+JSON", "1.0"), ("JSONRPC", "0.3"), ("HTTP+JSON", "0.3")],
)
async def test_the_sdk_client_manages_push_configs(
    server: ServerProcess, hook: Webhook, binding: str, version: str
) -> None:
    headers = {"Authorization": f"Bearer {ALICE}"}
    async with httpx.AsyncClient(http1=False, http2=True, headers=headers) as http:
        config = ClientConfig(
            streaming=False, httpx_client=http, supported_protocol_bindings=[binding]
        )
        factory = ClientFactory(config)
        resolved = await factory.create_from_url(server.base_url)
        card = AgentCard()
        card.CopyFrom(card_of(resolved))
        kept = [
            interface
            for interface in card.supported_interfaces
            if interface.protocol_binding == binding and interface.protocol_version == version
        ]
        assert len(kept) == 1
        del card.supported_interfaces[:]
        card.supported_interfaces.extend(kept)
        client = factory.create(card)
        message = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=GOOD)])
        [event] = [
            event async for event in client.send_message(SendMessageRequest(message=message))
        ]
        task_id = event.task.id
        push = TaskPushNotificationConfig(
            task_id=task_id,
            id="sdk",
            url=hook.url("/sdk"),
            token="sdk-token",
            authentication=AuthenticationInfo(scheme="Basic", credentials="user:pa55"),
        )
        stored = await client.create_task_push_notification_config(push)
        assert (stored.id, stored.url, stored.token) == ("sdk", hook.url("/sdk"), "sdk-token")
        assert stored.authentication.scheme == "Basic"
        assert stored.authentication.credentials == "user:pa55"
        got = await client.get_task_push_notification_config(
            GetTaskPushNotificationConfigRequest(task_id=task_id, id="sdk")
        )
        assert (got.id, got.url, got.authentication.credentials) == (
            "sdk", hook.url("/sdk"), "user:pa55",
        )  # fmt: skip
        # The SDK's 0.3 HTTP+JSON client can neither list nor delete (the raw calls of
        # test_push_configs_are_set_read_listed_and_deleted do both on that binding).
        if (binding, version) != ("HTTP+JSON", "0.3"):
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task_id)
            )
            assert [c.id for c in listed.configs] == ["sdk"]
            await client.delete_task_push_notification_config(
                DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="sdk")
            )
            with pytest.raises(A2AError):
                await client.get_task_push_notification_config(
                    GetTaskPushNotificationConfigRequest(task_id=task_id, id="sdk")
                )
        # A URL the agent does not call is refused through the SDK too.
        bad = TaskPushNotificationConfig(task_id=task_id, id="bad", url="http://10.9.8.7/hook")
        with pytest.raises(A2AError) as refused:
            await client.create_task_push_notification_config(bad)
        # (The SDK's 0.3 HTTP+JSON client reports only the status of a refusal.)
        says = "400" if (binding, version) == ("HTTP+JSON", "0.3") else "not a host"
        assert says in str(refused.value)
        with pytest.raises(A2AError):  # and nothing was stored
            await client.get_task_push_notification_config(
                GetTaskPushNotificationConfigRequest(task_id=task_id, id="bad")
            )
        await client.close()


# --- what the webhook gets -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_task_updates_reach_the_webhook_with_the_token_and_bearer_credentials(
    http: httpx.AsyncClient, hook: Webhook, server: ServerProcess, version: str
) -> None:
    path = f"/updates-{version}"
    make = config_1_0 if version == "1.0" else config_0_3
    push = make(
        hook.url(path), token="notify-tok-7f", scheme="Bearer", credentials="bearer-cred-2c"
    )
    task = await send(http, version=version, push=push)
    hits = await hook.wait(path, 4)
    # The task, then working, the artifact, completed: a 1.0 StreamResponse each, in order.
    assert [stream_kind(hit) for hit in hits] == ["task", "statusUpdate", "artifactUpdate",
                                                  "statusUpdate"]  # fmt: skip
    assert {task_id_of(hit) for hit in hits} == {task["id"]}
    assert last_state(hits) == "TASK_STATE_COMPLETED"
    assert hits[2].body["artifactUpdate"]["artifact"]["name"] == "sentiment-cnn-result"
    for hit in hits:
        assert hit.headers[TOKEN_HEADER.lower()] == "notify-tok-7f"
        assert hit.headers["authorization"] == "Bearer bearer-cred-2c"
        assert hit.headers["content-type"] == "application/json"
        assert hit.headers["host"] == f"127.0.0.1:{hook.port}"
    # Nothing secret is logged: not the token, not the credentials.
    await asyncio.sleep(0.2)
    text = "\n".join(server.lines)
    assert "notify-tok-7f" not in text and "bearer-cred-2c" not in text


@pytest.mark.parametrize(
    ("version", "scheme", "credentials", "header", "value"),
    [
        ("1.0", "Basic", "ann:s3cr3t", "authorization",
         "Basic " + base64.b64encode(b"ann:s3cr3t").decode()),
        ("0.3", "basic", base64.b64encode(b"bo:pw").decode(), "authorization",
         "Basic " + base64.b64encode(b"bo:pw").decode()),
        ("1.0", "ApiKey", "key-51d0", API_KEY_HEADER.lower(), "key-51d0"),
        ("0.3", "Bearer", "jwt.abc.def", "authorization", "Bearer jwt.abc.def"),
    ],
    ids=["basic-user-password", "basic-encoded", "api-key", "bearer-0.3"],
)  # fmt: skip
async def test_the_webhook_gets_the_authentication_the_config_names(
    http: httpx.AsyncClient,
    hook: Webhook,
    version: str,
    scheme: str,
    credentials: str,
    header: str,
    value: str,
) -> None:
    path = f"/auth-{scheme}-{version}"
    make = config_1_0 if version == "1.0" else config_0_3
    await send(http, version=version, push=make(hook.url(path), scheme=scheme,
                                                credentials=credentials))  # fmt: skip
    hits = await hook.wait(path, 4)
    assert len(hits) == 4
    for hit in hits:
        assert hit.headers[header] == value
        assert TOKEN_HEADER.lower() not in hit.headers  # no token set, none sent
        if header != "authorization":
            assert "authorization" not in hit.headers


async def test_sending_never_holds_up_the_request(http: httpx.AsyncClient, hook: Webhook) -> None:
    hook.script("/slow", (200, {}, 1.5))  # the first call takes 1.5 s to answer
    task = await send(http, push=config_1_0(hook.url("/slow")))
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    # The answer came while the webhook still held the first update's call.
    assert len(hook.at("/slow")) <= 1 and hook.answered == 0
    hits = await hook.wait("/slow", 4)
    # The later updates waited for the first: still in order.
    assert stream_kind(hits[0]) == "task" and last_state(hits) == "TASK_STATE_COMPLETED"


async def test_a_webhook_that_fails_twice_then_answers_gets_the_update(
    http: httpx.AsyncClient, hook: Webhook
) -> None:
    retries = await metric(http, "a2a_push_retries_total")
    sent = await metric(http, "a2a_push_notifications_total", outcome="sent")
    hook.script("/flaky", (503, {}, 0.0), (500, {}, 0.0))  # then 200
    task = await send(http, push=config_1_0(hook.url("/flaky"), token="t"))
    hits = await hook.wait("/flaky", 6)
    assert len(hits) == 6
    # The first update three times (two failures, then the success), then the other three.
    assert hits[0].body == hits[1].body == hits[2].body and stream_kind(hits[0]) == "task"
    assert [stream_kind(hit) for hit in hits[3:]] == ["statusUpdate", "artifactUpdate",
                                                      "statusUpdate"]  # fmt: skip
    assert task_id_of(hits[-1]) == task["id"] and last_state(hits) == "TASK_STATE_COMPLETED"
    await asyncio.sleep(0.2)
    assert await metric(http, "a2a_push_retries_total") == retries + 2
    assert await metric(http, "a2a_push_notifications_total", outcome="sent") == sent + 4


async def test_a_webhook_that_keeps_failing_is_given_up_after_the_retries(
    http: httpx.AsyncClient, hook: Webhook, server: ServerProcess
) -> None:
    failed = await metric(http, "a2a_push_notifications_total", outcome="failed")
    hook.script("/down", always=(500, {}, 0.0))
    await send(http, push=config_1_0(hook.url("/down?secret=q-88e1")))
    hits = await hook.wait("/down", 6)
    await asyncio.sleep(0.3)
    # A2A_PUSH_RETRIES=2: three attempts for the first update; once given up, the webhook
    # gets one call per update (no retries) until it answers again.
    assert len(hook.at("/down")) == 6
    assert [stream_kind(hit) for hit in hits] == ["task"] * 3 + ["statusUpdate",
                                                "artifactUpdate", "statusUpdate"]  # fmt: skip
    assert await metric(http, "a2a_push_notifications_total", outcome="failed") == failed + 4
    logged = server.wait_for_log(lambda e: e.get("message") == "push notification not delivered"
                                 and e.get("detail") == "500")  # fmt: skip
    assert [e["attempts"] for e in logged[-4:]] == [3, 1, 1, 1]
    assert logged[-1]["host"] == "127.0.0.1"
    assert "q-88e1" not in "\n".join(server.lines)  # the URL's query is not logged


async def test_a_webhook_that_refuses_is_not_retried(
    http: httpx.AsyncClient, hook: Webhook
) -> None:
    hook.script("/gone", always=(404, {}, 0.0))
    await send(http, push=config_1_0(hook.url("/gone")))
    await hook.wait("/gone", 4)
    await asyncio.sleep(0.3)
    assert len(hook.at("/gone")) == 4  # one call per update


async def test_a_redirect_is_not_followed(http: httpx.AsyncClient, hook: Webhook) -> None:
    redirected = await metric(http, "a2a_push_notifications_total", outcome="redirected")
    hook.script("/moved", always=(307, {"Location": hook.url("/elsewhere")}, 0.0))
    await send(http, push=config_1_0(hook.url("/moved")))
    await hook.wait("/moved", 4)
    await asyncio.sleep(0.3)
    assert len(hook.at("/moved")) == 4  # once per update, not retried
    assert hook.at("/elsewhere") == []  # and never followed
    assert await metric(http, "a2a_push_notifications_total", outcome="redirected") == (
        redirected + 4
    )


# --- refusals ------------------------------------------------------------------------------


def refused_urls(port: int) -> list[tuple[str, str]]:
    """(URL, what the refusal says) for webhook URLs this server never calls."""
    other = port + 1 if port < 65535 else port - 1
    not_listed = "not a host this agent sends"
    not_public = "not public"
    return [
        (f"http://127.0.0.1:{other}/hook", not_listed),  # loopback, another port
        (f"http://localhost:{port}/hook", not_listed),  # the same address, by a name not listed
        (f"http://[::1]:{port}/hook", not_listed),
        ("http://10.1.2.3/hook", not_listed),
        ("http://192.168.10.20:8080/hook", not_listed),
        ("http://169.254.169.254/latest/meta-data/", not_listed),
        ("http://example.com/hook", not_listed),
        # Matched by the pattern *:9, but not public:
        (f"http://127.0.0.1:{PATTERN_PORT}/hook", not_public),
        (f"http://localhost:{PATTERN_PORT}/hook", not_public),
        (f"http://10.0.0.8:{PATTERN_PORT}/hook", not_public),
        (f"http://172.16.5.4:{PATTERN_PORT}/hook", not_public),
        (f"http://169.254.169.254:{PATTERN_PORT}/hook", not_public),
        (f"http://[fe80::1]:{PATTERN_PORT}/hook", not_public),
        (f"http://[::ffff:127.0.0.1]:{PATTERN_PORT}/hook", not_public),
        # IPv6 addresses that carry a private IPv4 one: 6to4 (169.254.169.254, 127.0.0.1),
        # NAT64 (127.0.0.1).
        (f"http://[2002:a9fe:a9fe::1]:{PATTERN_PORT}/hook", not_public),
        (f"http://[2002:7f00:1::1]:{PATTERN_PORT}/hook", not_public),
        (f"http://[64:ff9b::7f00:1]:{PATTERN_PORT}/hook", not_public),
        (f"http://0.0.0.0:{PATTERN_PORT}/hook", not_public),
        (f"http://100.64.0.1:{PATTERN_PORT}/hook", not_public),
        (f"http://224.0.0.1:{PATTERN_PORT}/hook", not_public),
        # Not a URL this agent calls at all:
        (f"ftp://127.0.0.1:{port}/hook", "http or https"),
        (f"http://user:pw@127.0.0.1:{port}/hook", "credentials"),
        ("not a url", ""),
        (f"http://127.0.0.1:{port}/" + "x" * 2100, "longer than"),
    ]


@pytest.mark.parametrize(("binding", "version", "prefix"), APIS[:4], ids=API_IDS[:4])
async def test_webhook_urls_are_refused_unless_their_host_is_allowed(
    http: httpx.AsyncClient, hook: Webhook, binding: str, version: str, prefix: str
) -> None:
    api = PushApi(http, binding, version, prefix=prefix)
    task = await send(http)
    for url, says in refused_urls(hook.port):
        with pytest.raises(Refusal) as refused:
            await api.set(task["id"], "bad", url)
        assert invalid_params(refused.value, binding), (url, refused.value)
        assert says in refused.value.message, (url, refused.value.message)
    assert await api.list(task["id"]) == []
    assert hook.hits == []


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"scheme": "Digest", "credentials": "x"}, "is not one this agent sends"),
        ({"scheme": "Bearer"}, "credentials are required"),
        ({"scheme": "Bearer", "credentials": "a\r\nX-Injected: 1"}, "printable"),
        ({"scheme": "Basic", "credentials": "bm8tY29sb24="}, "user:password"),  # "no-colon"
        ({"token": "line\nbreak"}, "token must be printable"),
        ({"token": "t" * 5000}, "token must be printable"),
    ],
    ids=["digest", "no-credentials", "header-injection", "basic-without-user", "token-newline",
         "token-too-long"],
)  # fmt: skip
@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_configs_this_agent_cannot_send_are_refused(
    http: httpx.AsyncClient, hook: Webhook, version: str, fields: dict[str, Any], says: str
) -> None:
    api = PushApi(http, "jsonrpc", version)
    task = await send(http)
    with pytest.raises(Refusal) as refused:
        await api.set(task["id"], "c", hook.url("/never"), **fields)
    assert refused.value.code == INVALID_PARAMS and says in refused.value.message
    assert await api.list(task["id"]) == []


async def test_a_message_with_a_refused_push_config_starts_no_task(
    http: httpx.AsyncClient, hook: Webhook
) -> None:
    async def tasks() -> int:
        answer = await rpc(http, "ListTasks", {"pageSize": 100})
        return int(answer["result"]["totalSize"])

    before = await tasks()
    for version in ("1.0", "0.3"):
        message: dict[str, Any]
        if version == "1.0":
            message = {"role": "ROLE_USER", "messageId": "m", "parts": [{"text": GOOD}]}
            configuration = {"taskPushNotificationConfig": {"url": "http://10.0.0.1/x"}}
            method = "SendMessage"
        else:
            message = {"role": "user", "kind": "message", "messageId": "m",
                       "parts": [{"kind": "text", "text": GOOD}]}  # fmt: skip
            configuration = {"pushNotificationConfig": {"url": "http://10.0.0.1/x"}}
            method = "message/send"
        answer = await rpc(
            http, method, {"message": message, "configuration": configuration}, version=version
        )
        assert answer["error"]["code"] == INVALID_PARAMS, answer
    assert await tasks() == before


async def test_a_task_takes_a_bounded_number_of_configs(
    http: httpx.AsyncClient, hook: Webhook
) -> None:
    api = PushApi(http, "jsonrpc", "1.0")
    task = await send(http)
    for index in range(10):
        await api.set(task["id"], f"c{index}", hook.url(f"/many-{index}"))
    with pytest.raises(Refusal) as refused:
        await api.set(task["id"], "one-too-many", hook.url("/many"))
    assert refused.value.code == INVALID_PARAMS and "at most 10" in refused.value.message
    await api.set(task["id"], "c3", hook.url("/replaced"))  # replacing one is fine
    assert len(await api.list(task["id"])) == 10


# --- callers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("binding", "version", "prefix"), APIS[:4], ids=API_IDS[:4])
async def test_another_caller_cannot_read_or_change_a_config(
    http: httpx.AsyncClient, hook: Webhook, binding: str, version: str, prefix: str
) -> None:
    alice = PushApi(http, binding, version, ALICE, prefix)
    bob = PushApi(http, binding, version, BOB, prefix)
    task = await send(http, token=ALICE)
    await alice.set(task["id"], "mine", hook.url("/alice"), token="alice-secret")
    for call in (
        bob.get(task["id"], "mine"),
        bob.list(task["id"]),
        bob.delete(task["id"], "mine"),
        bob.set(task["id"], "mine", hook.url("/bob")),
    ):
        with pytest.raises(Refusal) as refused:
            await call
        assert not_found(refused.value, binding), refused.value
        assert "alice-secret" not in refused.value.message
    [kept] = await alice.list(task["id"])
    assert (kept["id"], kept["url"], kept["token"]) == ("mine", hook.url("/alice"), "alice-secret")
    # Bob's own task has none of Alice's configs.
    assert await bob.list((await send(http, token=BOB))["id"]) == []


# --- malformed push requests ---------------------------------------------------------------


async def test_malformed_push_requests_get_client_errors_never_a_5xx(
    http: httpx.AsyncClient,
) -> None:
    task_id = (await send(http))["id"]
    jsonrpc = [
        ("1.0", "CreateTaskPushNotificationConfig", {}),
        ("1.0", "CreateTaskPushNotificationConfig", {"taskId": task_id}),
        ("1.0", "CreateTaskPushNotificationConfig", {"taskId": task_id, "url": 5}),
        ("1.0", "CreateTaskPushNotificationConfig", {"taskId": task_id, "url": ["x"]}),
        ("1.0", "CreateTaskPushNotificationConfig",
         {"taskId": task_id, "url": "http://127.0.0.1/", "authentication": "Bearer x"}),
        ("1.0", "CreateTaskPushNotificationConfig",
         {"taskId": task_id, "url": "http://127.0.0.1/", "authentication": {"scheme": 1}}),
        ("1.0", "CreateTaskPushNotificationConfig", {"url": "http://127.0.0.1/"}),
        ("1.0", "CreateTaskPushNotificationConfig", {"taskId": task_id, "url": "http://[::1"}),
        ("1.0", "GetTaskPushNotificationConfig", {"taskId": task_id}),
        ("1.0", "GetTaskPushNotificationConfig", {"taskId": task_id, "id": 7}),
        ("1.0", "ListTaskPushNotificationConfigs", {"taskId": task_id, "pageSize": "x"}),
        ("1.0", "DeleteTaskPushNotificationConfig", {"taskId": task_id, "id": None}),
        ("1.0", "CreateTaskPushNotificationConfig", [1, 2]),
        ("0.3", "tasks/pushNotificationConfig/set", {"taskId": task_id}),
        ("0.3", "tasks/pushNotificationConfig/set", {"taskId": task_id,
                                                     "pushNotificationConfig": {}}),
        ("0.3", "tasks/pushNotificationConfig/set",
         {"taskId": task_id, "pushNotificationConfig": {"url": 1}}),
        ("0.3", "tasks/pushNotificationConfig/set",
         {"taskId": task_id, "pushNotificationConfig": {"url": "http://127.0.0.1:1/",
                                                        "authentication": {"schemes": []}}}),
        ("0.3", "tasks/pushNotificationConfig/set",
         {"taskId": task_id, "pushNotificationConfig": {"url": "http://127.0.0.1:1/",
                                                        "authentication": {"schemes": "Basic"}}}),
        ("0.3", "tasks/pushNotificationConfig/get", {"id": task_id}),
        ("0.3", "tasks/pushNotificationConfig/get", {"id": task_id,
                                                     "pushNotificationConfigId": "none"}),
        ("0.3", "tasks/pushNotificationConfig/list", {}),
        ("0.3", "tasks/pushNotificationConfig/delete", {"id": task_id}),
        ("0.3", "tasks/pushNotificationConfig/delete", "x"),
    ]  # fmt: skip
    for version, method, params in jsonrpc:
        answer = await rpc(http, method, params, version=version)  # asserts no -32603
        assert "error" in answer, (method, params, answer)
        assert answer["error"]["code"] in (-32600, -32602, -32001), (method, params, answer)
    base = f"/a2a/rest/tasks/{task_id}/pushNotificationConfigs"
    legacy = f"/a2a/rest/v1/tasks/{task_id}/pushNotificationConfigs"
    rest: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", base, auth(), {}),
        ("POST", base, auth(), {"url": 5}),
        ("POST", base, auth(), {"url": "http://127.0.0.1/", "authentication": []}),
        ("POST", base, auth(), {"url": "http://127.0.0.1/", "authentication": {"scheme": {}}}),
        ("POST", base, auth(), "just a string"),
        ("POST", base, auth(), {"url": "http://127.0.0.1/", "token": 12}),
        ("GET", base + "?pageSize=abc", auth(), None),
        ("GET", base + "/none", auth(), None),
        ("DELETE", base + "/none", auth(), None),
        ("POST", base, auth(version="0.3"), {"url": "http://127.0.0.1/"}),  # no 1.0 header
        ("POST", legacy, auth(version="0.3"), {}),
        ("POST", legacy, auth(version="0.3"), {"config": {}}),
        ("POST", legacy, auth(version="0.3"), {"config": {"pushNotificationConfig": {}}}),
        ("POST", legacy, auth(version="0.3"),
         {"config": {"pushNotificationConfig": {"url": 1}}}),
        ("POST", legacy, auth(version="0.3"),
         {"config": {"pushNotificationConfig": {"url": "http://127.0.0.1:1/",
                                                "authentication": {"schemes": 3}}}}),
        ("POST", legacy, auth(version="0.3"), [1]),
        ("GET", legacy + "/none", auth(version="0.3"), None),
        ("DELETE", legacy + "/none", auth(), None),  # a 1.0 header on a 0.3 route
        ("DELETE", legacy + "/x", auth(version="0.3"), None),
    ]  # fmt: skip
    for method, path, headers, body in rest:
        content = None if body is None else json.dumps(body).encode()
        response = await http.request(
            method, path, content=content, headers={**headers, "Content-Type": "application/json"}
        )
        assert response.http_version == "HTTP/2"
        assert response.status_code in (200, 400, 404), (method, path, body, response.text)
        if response.status_code != 200:
            assert response.json()["error"]["code"] == response.status_code
    # None of that stored a config.
    assert await PushApi(http, "jsonrpc", "1.0").list(task_id) == []


# --- push off ------------------------------------------------------------------------------


def test_push_notifications_are_off_by_default() -> None:
    settings = Settings(_env_file=None)
    assert settings.a2a_push_allowed_hosts == []
    with pytest.raises(ValueError, match="a host, not a URL"):
        Settings(_env_file=None, a2a_push_allowed_hosts="https://hooks.example.com/x")


async def test_with_no_allowed_host_push_is_refused_everywhere(
    double: OllamaDouble, hook: Webhook
) -> None:
    with running_server(ollama_host=double.url, models="sentiment-cnn-int8") as off:
        async with h2_client(off) as http:
            for headers in ({"A2A-Version": "1.0"}, {}):
                card = (await http.get(CARD, headers=headers)).json()
                assert card["capabilities"].get("pushNotifications", False) is False
            document = (await http.get("/openapi.json")).json()
            create = document["paths"]["/a2a/rest/tasks/{id}/pushNotificationConfigs"]["post"]
            assert "200" not in create["responses"] and "always refused" in create["description"]
            # A message carrying a push config runs as before, and nothing is sent.
            task = await send(http, push=config_1_0(hook.url("/off")))
            assert task["status"]["state"] == "TASK_STATE_COMPLETED"
            for binding, version in (("jsonrpc", "1.0"), ("jsonrpc", "0.3")):
                api = PushApi(http, binding, version)
                for call in (api.set(task["id"], "c", hook.url("/off")), api.list(task["id"]),
                             api.get(task["id"], "c"), api.delete(task["id"], "c")):  # fmt: skip
                    with pytest.raises(Refusal) as refused:
                        await call
                    assert refused.value.code == PUSH_NOT_SUPPORTED
            for binding, version in (("rest", "1.0"), ("rest", "0.3")):
                api = PushApi(http, binding, version)
                for call in (api.set(task["id"], "c", hook.url("/off")), api.list(task["id"]),
                             api.get(task["id"], "c"), api.delete(task["id"], "c")):  # fmt: skip
                    with pytest.raises(Refusal) as refused:
                        await call
                    assert refused.value.code == 400
                    assert refused.value.reason == "PUSH_NOTIFICATION_NOT_SUPPORTED"
            await asyncio.sleep(0.3)
            assert hook.hits == []


# --- the SQLite task store: replicas and restarts ------------------------------------------


async def _chat(http: httpx.AsyncClient, text: str, task_id: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "ROLE_USER",
        "messageId": uuid.uuid4().hex,
        "parts": [{"text": text}],
        "metadata": {"skill": "chat"},
    }
    if task_id:
        message["taskId"] = task_id
    answer = await rpc(http, "SendMessage", {"message": message})
    assert "result" in answer, answer
    task: dict[str, Any] = answer["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED", task
    return task


async def test_configs_live_in_the_sqlite_store_across_replicas_and_restarts(
    double: OllamaDouble, hook: Webhook, tmp_path: Path
) -> None:
    settings = {
        "ollama_host": double.url,
        "models": "sentiment-cnn-int8",
        "task_store_url": f"sqlite+aiosqlite:///{tmp_path / 'tasks.db'}",
        "api_tokens": f"alice:{ALICE}",
        "a2a_push_allowed_hosts": f"127.0.0.1:{hook.port}",
        "a2a_push_retry_backoff": 0.05,
    }
    with running_server(**settings) as first, running_server(**settings) as second:
        async with h2_client(first) as one, h2_client(second) as two:
            # A conversation waits for its next turn; its push config is set on one replica.
            task = await _chat(one, "Which films are worth watching twice?")
            await PushApi(one, "jsonrpc", "1.0").set(
                task["id"], "replica", hook.url("/replica"), token="replica-tok"
            )
            # The other replica sees it, and sends the updates of the turn it runs.
            [seen] = await PushApi(two, "rest", "1.0").list(task["id"])
            assert (seen["id"], seen["token"]) == ("replica", "replica-tok")
            await _chat(two, "And why that one?", task_id=task["id"])
            hits = await hook.wait("/replica", 2)
            assert hits and {hit.headers[TOKEN_HEADER.lower()] for hit in hits} == {"replica-tok"}
            await asyncio.sleep(0.3)
            hits = hook.at("/replica")
            assert {task_id_of(hit) for hit in hits} == {task["id"]}
            assert last_state(hits) == "TASK_STATE_INPUT_REQUIRED"
    hook.reset()
    with running_server(**settings) as restarted:
        async with h2_client(restarted) as http:
            # After a restart the config is still there, and still used.
            api = PushApi(http, "jsonrpc", "0.3")
            [kept] = await api.list(task["id"])
            assert (kept["id"], kept["url"], kept["token"]) == (
                "replica", hook.url("/replica"), "replica-tok",
            )  # fmt: skip
            await _chat(http, "One more question?", task_id=task["id"])
            hits = await hook.wait("/replica", 2)
            assert hits and last_state(await hook.wait("/replica", 99, within=0.5)).endswith(
                "INPUT_REQUIRED"
            )
            await api.delete(task["id"], "replica")
            assert await api.list(task["id"]) == []


# --- in process: the policy and the sender -------------------------------------------------


def _fake_dns(answers: dict[str, list[list[str]]]) -> Callable[[str, int], Any]:
    """A resolver that answers each host with its next list of addresses (the last one
    repeats): what a rebinding DNS server does."""

    async def resolve(host: str, port: int) -> list[str]:
        queue = answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return resolve


async def test_a_host_matched_by_a_pattern_is_checked_again_when_sending() -> None:
    resolver = _fake_dns({"hooks.example.com": [["93.184.216.34"], ["169.254.169.254"]]})
    policy = PushPolicy(["*.example.com"], timeout=1, resolver=resolver)
    await policy.check("https://hooks.example.com/h")  # public when the config is set
    with pytest.raises(Refused, match="not public"):  # rebound when sending
        await policy.destinations("https://hooks.example.com/h")
    # Any non-public answer among several refuses.
    mixed = PushPolicy(["*"], 1, _fake_dns({"a.example.org": [["93.184.216.34", "10.0.0.1"]]}))
    with pytest.raises(Refused, match="not public"):
        await mixed.check("http://a.example.org/")
    with pytest.raises(Refused, match="not a host"):
        await policy.check("https://example.com/h")  # *.example.com is not example.com


async def test_the_call_goes_to_the_address_that_was_checked() -> None:
    resolver = _fake_dns({"hooks.example.com": [["93.184.216.34", "2606:2800:220:1::1"]]})
    policy = PushPolicy(["*.example.com:8443"], timeout=1, resolver=resolver)
    first, second = await policy.destinations("https://Hooks.Example.com:8443/a/b?c=d")
    assert str(first.url) == "https://93.184.216.34:8443/a/b?c=d"
    assert str(second.url) == "https://[2606:2800:220:1::1]:8443/a/b?c=d"
    assert first.host_header == "hooks.example.com:8443" and first.sni == "hooks.example.com"
    with pytest.raises(Refused, match="not a host"):
        await policy.check("https://hooks.example.com/other-port")
    # A host named exactly may resolve to anything (the operator named it).
    named = PushPolicy(["hooks.internal"], 1, _fake_dns({"hooks.internal": [["10.0.0.5"]]}))
    [destination] = await named.destinations("http://hooks.internal/x")
    assert str(destination.url) == "http://10.0.0.5/x"
    assert destination.host_header == "hooks.internal"
    assert destination.sni is None


def test_auth_headers_follow_the_scheme() -> None:
    def headers(**fields: Any) -> dict[str, str]:
        authentication = fields.pop("authentication", None)
        config = TaskPushNotificationConfig(url="http://h/", **fields)
        if authentication is not None:
            config.authentication.CopyFrom(AuthenticationInfo(**authentication))
        return auth_headers(config)

    assert headers() == {}
    assert headers(token="t") == {TOKEN_HEADER: "t"}
    assert headers(authentication={"scheme": "bearer", "credentials": "c"}) == {
        "Authorization": "Bearer c"
    }
    assert headers(authentication={"scheme": "BASIC", "credentials": "ü:p"}) == {
        "Authorization": "Basic " + base64.b64encode("ü:p".encode()).decode()
    }
    assert headers(token="t", authentication={"scheme": "apikey", "credentials": "k"}) == {
        TOKEN_HEADER: "t",
        API_KEY_HEADER: "k",
    }
    assert headers(authentication={}) == {}  # an empty authentication sends nothing
    for bad in ({"scheme": "Negotiate", "credentials": "x"}, {"credentials": "x"},
                {"scheme": "ApiKey", "credentials": "ü"}):  # fmt: skip
        with pytest.raises(Refused):
            headers(authentication=bad)


def _update(task_id: str, state: TaskState = TaskState.TASK_STATE_COMPLETED) -> Any:
    return TaskStatusUpdateEvent(task_id=task_id, context_id="c", status=TaskStatus(state=state))


async def _sender_with(
    webhook: Webhook, url: str, *, call_timeout: float = 0.5, retries: int = 1, **options: Any
) -> tuple[PushSender, str]:
    store = InMemoryPushNotificationConfigStore()
    policy = PushPolicy([f"127.0.0.1:{webhook.port}"], timeout=call_timeout)
    task_id = uuid.uuid4().hex
    await store.set_info(task_id, TaskPushNotificationConfig(url=url), ServerCallContext())
    return PushSender(store, policy, retries=retries, backoff=0.01, **options), task_id


async def test_a_call_is_cut_off_after_the_timeout_and_tried_again(hook: Webhook) -> None:
    hook.script("/stall", (200, {}, 1.5))  # the first call stalls past the 0.5 s timeout
    sender, task_id = await _sender_with(hook, hook.url("/stall"))
    started = time.monotonic()
    await sender.send_notification(task_id, _update(task_id))
    assert time.monotonic() - started < 0.1  # queued, not sent, on the caller's time
    hits = await hook.wait("/stall", 2, within=5)
    assert len(hits) == 2 and hits[0].body == hits[1].body
    await sender.aclose(grace=2)
    assert sender.pending == 0


async def test_retry_after_is_honoured_within_bounds(hook: Webhook) -> None:
    hook.script("/busy", (429, {"Retry-After": "1"}, 0.0))
    sender, task_id = await _sender_with(hook, hook.url("/busy"), call_timeout=2)
    sender.notify(task_id, _update(task_id))
    [first] = await hook.wait("/busy", 1, within=5)
    started = time.monotonic()
    hits = await hook.wait("/busy", 2, within=5)
    assert len(hits) == 2 and time.monotonic() - started >= 0.9
    await sender.aclose(grace=2)


async def test_a_webhook_that_was_given_up_gets_one_call_per_update_until_it_answers(
    hook: Webhook,
) -> None:
    hook.script("/down", always=(503, {}, 0.0))
    sender, task_id = await _sender_with(hook, hook.url("/down"), retries=2)

    async def calls_for_one_update() -> int:
        before = len(hook.at("/down"))
        sender.notify(task_id, _update(task_id))
        for _ in range(250):  # until the update was given up or sent
            await asyncio.sleep(0.02)
            if not sender.pending and task_id not in sender._workers:
                break
        return len(hook.at("/down")) - before

    assert await calls_for_one_update() == 3  # the first call and two retries
    assert await calls_for_one_update() == 1  # failing: no retries
    assert await calls_for_one_update() == 1
    hook.script("/down", always=(200, {}, 0.0))
    assert await calls_for_one_update() == 1  # sent: the webhook is back
    hook.script("/down", always=(503, {}, 0.0))
    assert await calls_for_one_update() == 3  # so a failure is retried again
    await sender.aclose(grace=1)


async def test_one_task_cannot_queue_more_than_its_share_of_updates(hook: Webhook) -> None:
    hook.script("/slow", always=(200, {}, 0.5))
    sender, task_id = await _sender_with(hook, hook.url("/slow"), max_pending_per_task=3)
    _, other = await _sender_with(hook, hook.url("/slow"))
    for _ in range(6):
        sender.notify(task_id, _update(task_id))
    assert sender.pending == 3  # the rest were dropped
    sender.notify(other, _update(other))  # another task still gets its update queued
    assert sender.pending == 4
    await sender.aclose(grace=0.1)


async def test_updates_of_a_task_arrive_in_order_and_shutdown_drops_the_rest(
    hook: Webhook,
) -> None:
    sender, task_id = await _sender_with(hook, hook.url("/order"))
    states = [TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING,
              TaskState.TASK_STATE_COMPLETED]  # fmt: skip
    for state in states:
        sender.notify(task_id, _update(task_id, state))
    hits = await hook.wait("/order", 3, within=5)
    assert [hit.body["statusUpdate"]["status"]["state"] for hit in hits] == [
        TaskState.Name(state) for state in states
    ]
    # A webhook that never answers in time: closing gives it the grace, then gives up.
    hook.script("/order", always=(200, {}, 3.0))
    sender.notify(task_id, _update(task_id))
    sender.notify(task_id, _update(task_id))
    await hook.wait("/order", 4, within=5)
    started = time.monotonic()
    await sender.aclose(grace=0.2)
    assert time.monotonic() - started < 1.0 and sender.pending == 0
    sender.notify(task_id, _update(task_id))  # after closing: dropped, not queued
    assert sender.pending == 0


async def test_a_task_ended_by_the_store_is_notified(hook: Webhook) -> None:
    sender, task_id = await _sender_with(hook, hook.url("/ended"))
    task = Task(id=task_id, context_id="c", status=TaskStatus(state=TaskState.TASK_STATE_FAILED))
    sender.notify_end(task)
    [hit] = await hook.wait("/ended", 1, within=5)
    assert hit.body["statusUpdate"]["taskId"] == task_id
    assert hit.body["statusUpdate"]["status"]["state"] == "TASK_STATE_FAILED"
    await sender.aclose(grace=1)


# --- configs go with their tasks -------------------------------------------------------------


def _finished(task_id: str, age: float = 0.0) -> Task:
    return task_aged(task_id, TaskState.TASK_STATE_COMPLETED, age)


async def test_the_memory_store_forgets_a_task_s_configs_with_it() -> None:
    storage = create_task_storage(None, max_tasks=3)
    configs = InMemoryPushNotificationConfigStore()
    storage.attach_push_configs(configs)
    context = ServerCallContext()
    for index in range(4):  # the fourth pushes the store over 3: down to 2, oldest first
        await configs.set_info(
            f"t{index}", TaskPushNotificationConfig(url=f"http://h/{index}"), context
        )
        await storage.store.save(_finished(f"t{index}"), context)
    assert await storage.store.get("t0", context) is None
    assert await configs.get_info("t0", context) == []
    assert await configs.get_info("t1", context) == []
    assert [c.url for c in await configs.get_info("t3", context)] == ["http://h/3"]


async def test_the_sql_sweep_deletes_the_configs_of_expired_tasks(tmp_path: Path) -> None:
    storage = create_task_storage(
        f"sqlite+aiosqlite:///{tmp_path / 'sweep.db'}", retention=30, stale_after=3600
    )
    assert storage.engine is not None
    configs = DatabasePushNotificationConfigStore(storage.engine)
    storage.attach_push_configs(configs)
    await storage.start()  # creates both tables
    try:
        context = ServerCallContext()
        await storage.store.save(_finished("old", age=60), context)
        await configs.set_info("old", TaskPushNotificationConfig(url="http://h/old"), context)
        await storage.store.save(_finished("new"), context)
        await configs.set_info("new", TaskPushNotificationConfig(url="http://h/new"), context)
        swept = await storage.sweep()
        assert swept.expired == 1
        assert await configs.get_info_for_dispatch("old") == []
        assert [c.url for c in await configs.get_info_for_dispatch("new")] == ["http://h/new"]
    finally:
        await storage.close()


def test_the_sdk_0_3_adapter_still_has_no_delete_route_for_push_configs() -> None:
    # sdk_compat item 13 adds it; when the SDK has its own, ours should go.
    handler = DefaultRequestHandler(
        agent_executor=GuardedAgentExecutor(None),  # never runs: the routes only
        task_store=InMemoryTaskStore(),
        agent_card=AgentCard(name="x"),
    )
    paths = {(route.path, sorted(route.methods or ())[0]) for route in
             create_rest_v03_routes(handler, path_prefix="") if hasattr(route, "path")}  # fmt: skip
    assert ("/v1/tasks/{id}/pushNotificationConfigs/{push_id}", "GET") in paths
    assert ("/v1/tasks/{id}/pushNotificationConfigs/{push_id}", "DELETE") not in paths
