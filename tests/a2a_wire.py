"""One A2A client for every protocol version (1.0, 0.3) over every binding (JSON-RPC,
HTTP+JSON), speaking the wire formats by hand over an HTTP/2 httpx client, so tests see
exactly what the agent sends; and the schemas those answers must parse as (a2a-sdk's types:
the 1.0 protobuf messages, the 0.3 pydantic models for JSON-RPC, the 0.3 protobuf messages
for HTTP+JSON)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from a2a import types as v10
from a2a.compat.v0_3 import a2a_v0_3_pb2 as v03_pb
from a2a.compat.v0_3 import types as v03
from google.protobuf.json_format import ParseDict
from pydantic import TypeAdapter

V1 = {"A2A-Version": "1.0"}
APIS = [("jsonrpc", "1.0"), ("jsonrpc", "0.3"), ("rest", "1.0"), ("rest", "0.3")]
API_IDS = [f"{binding}-{version}" for binding, version in APIS]


class ApiError(Exception):
    """An error answer: the JSON-RPC code or the HTTP status, the gRPC-style status (HTTP+JSON
    only), the message, the A2A reason (from the ErrorInfo detail, where the answer has one)
    and the error object as sent."""

    def __init__(
        self,
        code: int,
        status: str | None,
        message: str,
        reason: str | None = None,
        raw: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code} {status or ''} {reason or ''}: {message}")
        self.code, self.status, self.message, self.reason = code, status, message, reason
        self.raw = raw or {}


def _reason(details: Any) -> str | None:
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            reason = detail.get("reason")
            return reason if isinstance(reason, str) else None
    return None


@dataclass
class Event:
    kind: str  # "task" | "status" | "artifact" | "message"
    raw: dict[str, Any]
    at: float = field(default_factory=time.monotonic)

    @property
    def state(self) -> str:
        return state_of(self.raw["status"]["state"])

    @property
    def text(self) -> str:
        if self.kind == "artifact":
            return "".join(texts_of(self.raw["artifact"]))
        return "".join(texts_of(self.raw["status"].get("message", {})))


def state_of(value: str) -> str:
    """'input-required' for TASK_STATE_INPUT_REQUIRED (1.0) and input-required (0.3);
    'canceled' also for the 0.3 protobuf's TASK_STATE_CANCELLED."""
    state = value.removeprefix("TASK_STATE_").lower().replace("_", "-")
    return "canceled" if state == "cancelled" else state


def texts_of(holder: dict[str, Any]) -> list[str]:
    """The texts of a message or artifact in any of the wire forms (1.0 "parts" of
    {"text"}; 0.3 JSON-RPC "parts" of {"kind": "text", "text"}; 0.3 HTTP+JSON "content")."""
    parts = holder.get("parts", holder.get("content", []))
    return [part["text"] for part in parts if "text" in part]


def _role(message: dict[str, Any]) -> str:
    return message["role"].removeprefix("ROLE_").lower()


def history(task: dict[str, Any]) -> list[tuple[str, str]]:
    return [(_role(m), "".join(texts_of(m))) for m in task.get("history", [])]


def reply_artifacts(task: dict[str, Any]) -> dict[str, str]:
    return {a["artifactId"]: "".join(texts_of(a)) for a in task.get("artifacts", [])}


def status_text(task: dict[str, Any]) -> str:
    return "".join(texts_of(task["status"].get("message", {})))


def status_data(task: dict[str, Any]) -> dict[str, Any]:
    message = task["status"]["message"]
    parts = message.get("parts", message.get("content", []))
    [data] = [p["data"] for p in parts if "data" in p]
    return data.get("data", data) if set(data) == {"data"} else data  # 0.3 HTTP+JSON nesting


def task_id_of(events: list[Event]) -> str:
    first = events[0].raw
    return first["id"] if events[0].kind == "task" else first["taskId"]


@dataclass
class Api:
    """One protocol version over one binding."""

    http: httpx.AsyncClient
    binding: str  # "jsonrpc" | "rest"
    version: str  # "1.0" | "0.3"
    auth: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {**(V1 if self.version == "1.0" else {}), **self.auth}

    @property
    def name(self) -> str:
        return f"{self.binding}-{self.version}"

    def message(
        self, text: str, *, task_id: str | None = None, skill: str | None = "chat", **extra: Any
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"messageId": uuid.uuid4().hex, **extra}
        if self.binding == "jsonrpc" and self.version == "0.3":
            message |= {
                "role": "user",
                "kind": "message",
                "parts": [{"kind": "text", "text": text}],
            }
        elif self.binding == "rest" and self.version == "0.3":
            message |= {"role": "ROLE_USER", "content": [{"text": text}]}
        else:
            message |= {"role": "ROLE_USER", "parts": [{"text": text}]}
        if task_id:
            message["taskId"] = task_id
        if skill:
            message["metadata"] = {"skill": skill}
        return message

    def file_message(self) -> dict[str, Any]:
        """A message whose one part is a file (which this agent does not read)."""
        message = self.message("x", skill=None)
        url = "https://example.com/review.txt"
        if self.binding == "jsonrpc" and self.version == "0.3":
            message["parts"] = [{"kind": "file", "file": {"uri": url, "mimeType": "text/plain"}}]
        elif self.version == "0.3":
            message["content"] = [{"file": {"fileWithUri": url, "mimeType": "text/plain"}}]
        else:
            message["parts"] = [{"url": url, "mediaType": "text/plain"}]
        return message

    async def rpc(self, method: str, params: dict[str, Any]) -> Any:
        request_id = uuid.uuid4().hex
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        response = await self.http.post("/a2a/jsonrpc", json=body, headers=self.headers)
        assert response.http_version == "HTTP/2" and response.status_code == 200, response.text
        answer = response.json()
        assert answer["jsonrpc"] == "2.0" and answer["id"] == request_id, answer
        if "error" in answer:
            assert "result" not in answer, answer
            error = answer["error"]
            data = error.get("data")
            raise ApiError(error["code"], None, error["message"], _reason(data), error)
        return answer["result"]

    async def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        prefix = "/a2a/rest/v1" if self.version == "0.3" else "/a2a/rest"
        response = await self.http.request(method, prefix + path, headers=self.headers, **kwargs)
        assert response.http_version == "HTTP/2"
        answer = response.json() if response.content else {}
        if response.status_code != 200:
            assert response.headers["content-type"].startswith("application/"), response.headers
            error = answer["error"]
            assert error["code"] == response.status_code
            raise ApiError(
                response.status_code, error["status"], error["message"],
                _reason(error.get("details")), error,
            )  # fmt: skip
        return answer

    def _task(self, result: dict[str, Any]) -> dict[str, Any]:
        if self.binding == "jsonrpc" and self.version == "0.3":
            assert result["kind"] == "task", result
            return result
        return result["task"]

    async def send(
        self, message: dict[str, Any], configuration: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"message": message}
        if configuration:
            params["configuration"] = configuration
        if self.binding == "jsonrpc":
            method = "SendMessage" if self.version == "1.0" else "message/send"
            return self._task(await self.rpc(method, params))
        return self._task(await self.rest("POST", "/message:send", json=params))

    async def say(self, text: str, task_id: str | None = None, **extra: Any) -> dict[str, Any]:
        return await self.send(self.message(text, task_id=task_id, **extra))

    async def get(self, task_id: str, history_length: int | None = None) -> dict[str, Any]:
        if self.binding == "jsonrpc":
            params: dict[str, Any] = {"id": task_id}
            if history_length is not None:
                params["historyLength"] = history_length
            return await self.rpc("GetTask" if self.version == "1.0" else "tasks/get", params)
        query = {} if history_length is None else {"historyLength": history_length}
        return await self.rest("GET", f"/tasks/{task_id}", params=query)

    async def list_tasks(self, **query: Any) -> dict[str, Any]:
        """ListTasks (1.0 only; 0.3 has no such method)."""
        if self.binding == "jsonrpc":
            return await self.rpc("ListTasks" if self.version == "1.0" else "tasks/list", query)
        return await self.rest("GET", "/tasks", params=query)

    async def cancel(self, task_id: str) -> dict[str, Any]:
        if self.binding == "jsonrpc":
            method = "CancelTask" if self.version == "1.0" else "tasks/cancel"
            return await self.rpc(method, {"id": task_id})
        return await self.rest("POST", f"/tasks/{task_id}:cancel", json={})

    async def extended_card(self) -> dict[str, Any]:
        if self.binding == "jsonrpc":
            method = (
                "GetExtendedAgentCard" if self.version == "1.0"
                else "agent/getAuthenticatedExtendedCard"
            )  # fmt: skip
            return await self.rpc(method, {})
        return await self.rest("GET", "/extendedAgentCard" if self.version == "1.0" else "/card")

    # Push notification configs, by the names of each version.
    async def push_set(self, task_id: str, url: str, **config: Any) -> dict[str, Any]:
        if self.version == "1.0":
            body: dict[str, Any] = {"taskId": task_id, "url": url, **config}
        elif self.binding == "jsonrpc":
            body = {"taskId": task_id, "pushNotificationConfig": {"url": url, **config}}
        else:
            config_id = config.get("id", "")
            body = {"parent": f"tasks/{task_id}", "configId": config_id, "config": {
                "name": f"tasks/{task_id}/pushNotificationConfigs/{config_id}",
                "pushNotificationConfig": {"url": url, **config}}}  # fmt: skip
        if self.binding == "jsonrpc":
            method = (
                "CreateTaskPushNotificationConfig" if self.version == "1.0"
                else "tasks/pushNotificationConfig/set"
            )  # fmt: skip
            return await self.rpc(method, body)
        return await self.rest("POST", f"/tasks/{task_id}/pushNotificationConfigs", json=body)

    async def push_get(self, task_id: str, config_id: str) -> dict[str, Any]:
        if self.binding == "jsonrpc":
            if self.version == "1.0":
                return await self.rpc(
                    "GetTaskPushNotificationConfig", {"taskId": task_id, "id": config_id}
                )
            return await self.rpc(
                "tasks/pushNotificationConfig/get",
                {"id": task_id, "pushNotificationConfigId": config_id},
            )
        return await self.rest("GET", f"/tasks/{task_id}/pushNotificationConfigs/{config_id}")

    async def push_list(self, task_id: str) -> Any:
        if self.binding == "jsonrpc":
            if self.version == "1.0":
                return await self.rpc("ListTaskPushNotificationConfigs", {"taskId": task_id})
            return await self.rpc("tasks/pushNotificationConfig/list", {"id": task_id})
        return await self.rest("GET", f"/tasks/{task_id}/pushNotificationConfigs")

    async def push_delete(self, task_id: str, config_id: str) -> Any:
        if self.binding == "jsonrpc":
            if self.version == "1.0":
                return await self.rpc(
                    "DeleteTaskPushNotificationConfig", {"taskId": task_id, "id": config_id}
                )
            return await self.rpc(
                "tasks/pushNotificationConfig/delete",
                {"id": task_id, "pushNotificationConfigId": config_id},
            )
        return await self.rest("DELETE", f"/tasks/{task_id}/pushNotificationConfigs/{config_id}")

    async def stream(self, message: dict[str, Any]) -> list[Event]:
        if self.binding == "jsonrpc":
            method = "SendStreamingMessage" if self.version == "1.0" else "message/stream"
            return await self._sse("/a2a/jsonrpc", method, {"message": message})
        return await self._sse("/message:stream", None, {"message": message})

    async def subscribe(self, task_id: str) -> list[Event]:
        if self.binding == "jsonrpc":
            method = "SubscribeToTask" if self.version == "1.0" else "tasks/resubscribe"
            return await self._sse("/a2a/jsonrpc", method, {"id": task_id})
        return await self._sse(f"/tasks/{task_id}:subscribe", None, {})

    async def _sse(self, path: str, method: str | None, params: dict[str, Any]) -> list[Event]:
        if method is not None:
            body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        else:
            path = ("/a2a/rest/v1" if self.version == "0.3" else "/a2a/rest") + path
            body = params
        events: list[Event] = []
        async with self.http.stream("POST", path, json=body, headers=self.headers) as response:
            assert response.http_version == "HTTP/2"
            if not response.headers["content-type"].startswith("text/event-stream"):
                answer = json.loads(await response.aread())
                error = answer["error"]
                details = error.get("details", error.get("data"))
                raise ApiError(
                    error["code"], error.get("status"), error["message"], _reason(details), error
                )
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    events.append(self._event(json.loads(line[5:])))
        return events

    def _event(self, payload: dict[str, Any]) -> Event:
        if "error" in payload:
            error = payload["error"]
            details = error.get("details", error.get("data"))
            raise ApiError(
                error["code"], error.get("status"), error["message"], _reason(details), error
            )
        result = payload["result"] if self.binding == "jsonrpc" else payload
        if self.binding == "jsonrpc" and self.version == "0.3":
            kinds = {"task": "task", "status-update": "status", "artifact-update": "artifact",
                     "message": "message"}  # fmt: skip
            return Event(kinds[result["kind"]], result)
        [(key, value)] = result.items()
        kinds = {"task": "task", "statusUpdate": "status", "artifactUpdate": "artifact",
                 "message": "message"}  # fmt: skip
        return Event(kinds[key], value)


# --- the schemas -------------------------------------------------------------------------


def _pydantic(model: Any, raw: Any, *, strict: bool = True) -> Any:
    value = TypeAdapter(model).validate_python(raw)
    if strict:  # the models ignore unknown fields: find them by what a dump keeps
        kept = TypeAdapter(model).dump_python(value, mode="json", by_alias=True)
        unknown = _unknown_keys(raw, kept, "")
        assert not unknown, f"fields {unknown} are not in the schema"
    return value


def _unknown_keys(raw: Any, kept: Any, path: str) -> list[str]:
    if isinstance(raw, dict) and isinstance(kept, dict):
        found = [f"{path}.{key}" for key in raw if key not in kept]
        for key in raw.keys() & kept.keys():
            found += _unknown_keys(raw[key], kept[key], f"{path}.{key}")
        return found
    if isinstance(raw, list) and isinstance(kept, list):
        return [
            k
            for i, (a, b) in enumerate(zip(raw, kept, strict=True))
            for k in _unknown_keys(a, b, f"{path}[{i}]")
        ]
    return []


# What each answer must parse as, per wire: (1.0 protobuf, 0.3 JSON-RPC pydantic, 0.3 HTTP+JSON
# protobuf). A JSON-RPC 1.0 result and an HTTP+JSON 1.0 body share the 1.0 protobuf JSON.
SCHEMAS: dict[str, tuple[Any, Any, Any]] = {
    "task": (v10.Task, v03.Task, v03_pb.Task),
    "send": (v10.SendMessageResponse, v03.Task | v03.Message, v03_pb.SendMessageResponse),
    "event": (v10.StreamResponse,
              v03.Task | v03.Message | v03.TaskStatusUpdateEvent | v03.TaskArtifactUpdateEvent,
              v03_pb.StreamResponse),
    "list": (v10.ListTasksResponse, None, None),
    "card": (v10.AgentCard, v03.AgentCard, v03_pb.AgentCard),
    "push": (v10.TaskPushNotificationConfig, v03.TaskPushNotificationConfig,
             v03_pb.TaskPushNotificationConfig),
    "push-list": (v10.ListTaskPushNotificationConfigsResponse,
                  list[v03.TaskPushNotificationConfig],
                  v03_pb.ListTaskPushNotificationConfigResponse),
}  # fmt: skip


def conforms(api: Api, kind: str, raw: Any, *, strict: bool = True) -> Any:
    """``raw`` parsed as the schema of ``kind`` on ``api``'s wire (AssertionError or the
    parser's error when it does not parse; with ``strict``, also when it holds a field the
    schema lacks)."""
    v1, v03_rpc, v03_rest = SCHEMAS[kind]
    if api.version == "1.0":
        return ParseDict(raw, v1(), ignore_unknown_fields=not strict)
    if api.binding == "jsonrpc":
        return _pydantic(v03_rpc, raw, strict=strict)
    return ParseDict(raw, v03_rest(), ignore_unknown_fields=not strict)


def event_payload(api: Api, event: Event) -> dict[str, Any]:
    """An event as it came on the wire (1.0 and 0.3 HTTP+JSON wrap it in its kind's key)."""
    if api.binding == "jsonrpc" and api.version == "0.3":
        return event.raw
    key = {"task": "task", "status": "statusUpdate", "artifact": "artifactUpdate",
           "message": "message"}[event.kind]  # fmt: skip
    if api.binding == "rest" and api.version == "0.3":
        key = {"statusUpdate": "statusUpdate", "artifactUpdate": "artifactUpdate"}.get(key, key)
    return {key: event.raw}
