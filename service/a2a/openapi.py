"""The A2A routes in the app's OpenAPI document (``/openapi.json``), as they really answer.

a2a-sdk's ``add_a2a_routes_to_fastapi`` lists its routes in the document, and this agent keeps
them there (a client or a fuzzer reads one document for the whole service), but what the SDK
writes is not what the routes do: the path parameters (``{id}``, ``{push_id}``) are not
declared, every operation claims only a ``200`` of ``application/json`` (the 1.0 HTTP+JSON
routes answer ``application/a2a+json``, the streams ``text/event-stream``, refusals 400/404
with the binding's error body, and the service's own layers 401 and 413 problem documents),
every operation requires ``A2A-Version: 1.0`` (the 0.3 routes refuse exactly that, and
JSON-RPC takes both versions), the 0.3 send routes are given the 1.0 message schema (0.3
takes ``content``), the JSON-RPC ``params`` are a ``oneOf`` that most valid params match
more than once, and the query parameters of ``GET /tasks`` and ``GET /tasks/{id}`` are
missing; and its request schemas close protobuf enums the SDK's parser leaves open (an
unknown value is taken for the enum's zero). :func:`document_a2a` rewrites those
operations after the SDK has written them.

Push notification configs: with push notifications off (A2A_PUSH_ALLOWED_HOSTS empty) their
routes are documented with the 400 they always answer; on, with what they answer then.
"""

from __future__ import annotations

import re
from typing import Any

from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, VERSION_HEADER
from fastapi import FastAPI

from service.a2a.card import CARD_PATH, JSONRPC_PATH, REST_PATH
from service.a2a.sdk_compat import MAX_JSON_DEPTH, V03_METHODS

JSON = "application/json"
A2A_JSON = "application/a2a+json"
SSE = "text/event-stream"
PROBLEM_JSON = "application/problem+json"
REST_V03_PATH = REST_PATH + "/v1"

_REF = "#/components/schemas/"
# One server-sent event; its data is a JSON text (a JSON-RPC response, or an HTTP+JSON
# stream response; an "error" event carries the error).
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "examples": ["message", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
_PATH_PARAMETER = re.compile(r"{([^}]+)}")

COMPONENTS: dict[str, Any] = {
    "A2AError": {
        "type": "object",
        "description": "An HTTP+JSON refusal (google.rpc.Status as JSON).",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "status", "message"],
                "properties": {
                    "code": {"type": "integer", "description": "the HTTP status"},
                    "status": {"type": "string", "example": "INVALID_ARGUMENT"},
                    "message": {"type": "string"},
                    "details": {
                        "type": "array",
                        "description": "google.rpc.ErrorInfo (reason), google.rpc.BadRequest",
                        "items": {"type": "object"},
                    },
                },
            }
        },
    },
    "A2AJsonRpcResponse": {
        "type": "object",
        "description": "A JSON-RPC 2.0 response: a result, or an error (always in an HTTP 200).",
        "required": ["jsonrpc"],
        "properties": {
            "jsonrpc": {"type": "string", "enum": ["2.0"]},
            "id": {"type": ["string", "integer", "null"]},
            "result": {},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "integer", "example": -32602},
                    "message": {"type": "string"},
                    "data": {},
                },
            },
        },
    },
    "A2AV03SendMessageRequest": {
        "type": "object",
        "description": (
            "Protocol 0.3 HTTP+JSON: the protobuf JSON of the 0.3 a2a.proto SendMessageRequest "
            "(the message's parts are 'content'; 'request' is the proto name of 'message')."
        ),
        "properties": {
            "message": {"$ref": _REF + "A2AV03Message"},
            "request": {"$ref": _REF + "A2AV03Message"},
            "configuration": {
                "type": "object",
                "properties": {
                    "acceptedOutputModes": {"type": "array", "items": {"type": "string"}},
                    "historyLength": {"type": "integer", "format": "int32"},
                    "blocking": {"type": "boolean"},
                },
            },
            "metadata": {"type": "object"},
        },
    },
    "A2AV03Message": {
        "type": "object",
        "properties": {
            "messageId": {"type": "string"},
            "contextId": {"type": "string"},
            "taskId": {"type": "string"},
            "role": {"type": "string", "enum": ["ROLE_UNSPECIFIED", "ROLE_USER", "ROLE_AGENT"]},
            "content": {"type": "array", "items": {"$ref": _REF + "A2AV03Part"}},
            "metadata": {"type": "object"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "A2AV03Part": {
        "oneOf": [
            {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
            {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {"type": "object", "properties": {"data": {"type": "object"}}}
                },
            },
            {"type": "object", "required": ["file"], "properties": {"file": {"type": "object"}}},
        ]
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _rest_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("A2AError")}}}


def _problem(description: str, problem: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": problem}}}


def _header(*versions: str, required: bool, description: str) -> dict[str, Any]:
    return {
        "in": "header",
        "name": VERSION_HEADER,
        "required": required,
        "description": description,
        "schema": {"type": "string", "enum": list(versions)},
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"in": "query", "name": name, "required": False, "schema": schema,
            "description": description}  # fmt: skip


HISTORY_LENGTH = _query(
    "historyLength",
    {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
    "at most this many messages of the task's history",
)
LIST_TASKS_QUERY = [
    _query("contextId", {"type": "string"}, "only the tasks of this context"),
    _query(
        "status",
        {"type": "string"},
        "only tasks in this state (TASK_STATE_SUBMITTED, ..._WORKING, ..._COMPLETED, ...); "
        "any other value filters nothing",
    ),
    _query("pageSize", {"type": "integer", "minimum": 1, "maximum": 100}, "tasks per page"),
    _query("pageToken", {"type": "string"}, "the nextPageToken of the previous page (400 if not)"),
    HISTORY_LENGTH,
    _query(
        "statusTimestampAfter",
        {"type": "string", "format": "date-time"},
        "only tasks whose status changed after this time (RFC 3339, with an offset)",
    ),
    _query(
        "includeArtifacts",
        {"type": "string", "examples": ["true", "false"]},
        "'true' (any case) includes each task's artifacts; any other value does not",
    ),
]

# HTTP+JSON operations below REST_PATH (1.0) and REST_V03_PATH (0.3): what a success
# carries (None: this agent never succeeds: the push config routes with push notifications
# off), the statuses of the binding's refusals, and the query parameters.
_Op = tuple[str | None, str, tuple[int, ...], list[dict[str, Any]]]
REST_OPERATIONS: dict[tuple[str, str], _Op] = {
    ("post", "/message:send"): ("json", "the task (or a message)", (400, 404), []),
    ("post", "/message:stream"): ("sse", "the task, then its updates", (400, 404), []),
    ("get", "/tasks"): ("json", "a page of tasks (protocol 1.0 only)", (400,), LIST_TASKS_QUERY),
    ("get", "/tasks/{id}"): ("json", "the task", (400, 404), [HISTORY_LENGTH]),
    ("post", "/tasks/{id}:cancel"): ("json", "the canceled task", (400, 404), []),
    ("get", "/tasks/{id}:subscribe"): ("sse", "the task, then its updates", (400, 404), []),
    ("post", "/tasks/{id}:subscribe"): ("sse", "the task, then its updates", (400, 404), []),
    ("get", "/extendedAgentCard"): ("json", "the extended card (API_TOKENS set)", (400,), []),
    ("get", "/card"): ("json", "the extended card (API_TOKENS set)", (400,), []),
    ("post", "/tasks/{id}/pushNotificationConfigs"): (None, "", (400,), []),
    ("get", "/tasks/{id}/pushNotificationConfigs"): (None, "", (400,), []),
    ("get", "/tasks/{id}/pushNotificationConfigs/{push_id}"): (None, "", (400,), []),
    ("delete", "/tasks/{id}/pushNotificationConfigs/{push_id}"): (None, "", (400,), []),
}
# The push config routes with push notifications on (A2A_PUSH_ALLOWED_HOSTS set).
_PUSH = "/tasks/{id}/pushNotificationConfigs"
PUSH_OPERATIONS: dict[tuple[str, str], _Op] = {
    ("post", _PUSH): ("json", "the stored push config (400: its URL, host, token or "
                      "authentication refused)", (400, 404), []),
    ("get", _PUSH): ("json", "the caller's push configs of the task", (400, 404), []),
    ("get", _PUSH + "/{push_id}"): ("json", "the push config", (400, 404), []),
    ("delete", _PUSH + "/{push_id}"): ("json", "nothing ({}): the config is deleted",
                                       (400, 404), []),
}  # fmt: skip

REFUSALS = {
    400: "refused: invalid arguments (INVALID_ARGUMENT) or a failed precondition "
    "(FAILED_PRECONDITION: wrong A2A-Version, task not cancelable or already ended, push "
    "notifications off, no extended card)",
    404: "no such task (TASK_NOT_FOUND)",
}
BODY_TOO_LARGE = "the body is larger than MAX_BODY_BYTES"
UNAUTHORIZED = "API_TOKENS is set and the bearer token is missing or wrong"


def document_a2a(app: FastAPI, *, push: bool = False) -> None:
    """Make ``app.openapi()`` describe the A2A operations as they answer (call it after
    the SDK has added its routes); ``push``: push notifications are on."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            schema = build()
            describe_a2a(schema, push=push)
            app.openapi_schema = schema
        return app.openapi_schema

    # FastAPI's documented way to extend the schema.
    app.openapi = openapi  # type: ignore[method-assign]


def describe_a2a(schema: dict[str, Any], *, push: bool = False) -> None:
    """Rewrite the A2A operations of an OpenAPI document in place (``push``: push
    notifications are on)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, component in COMPONENTS.items():
        components.setdefault(name, component)
    problem = _ref("Problem") if "Problem" in components else {"type": "object"}
    _describe_jsonrpc_request(components)
    for name in _reachable(components, A2A_REQUEST_SCHEMAS):
        _open_enums(components[name])
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if path in (JSONRPC_PATH, "/") and method == "post":
                _jsonrpc(operation, problem)
            elif path == CARD_PATH:
                operation["responses"] = {
                    "200": {
                        "description": "the public agent card (1.0, with the 0.3 fields)",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                }
            elif path.startswith(REST_V03_PATH + "/"):
                _rest(operation, method, path, path[len(REST_V03_PATH) :], "0.3", problem, push)
            elif path.startswith(REST_PATH + "/"):
                _rest(operation, method, path, path[len(REST_PATH) :], "1.0", problem, push)


# The request bodies of the A2A operations, and every schema they reference.
A2A_REQUEST_SCHEMAS = ("A2ARequest", "SendMessageRequest", "TaskPushNotificationConfig",
                       "A2AV03SendMessageRequest")  # fmt: skip
_PROTO_ENUM_VALUE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _reachable(components: dict[str, Any], roots: tuple[str, ...]) -> list[str]:
    seen: list[str] = []
    pending = [name for name in roots if name in components]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.append(name)
        text = repr(components[name])
        pending += [ref for ref in re.findall(r"#/components/schemas/([^'\"]+)", text)
                    if ref in components]  # fmt: skip
    return seen


def _open_enums(node: Any) -> None:
    """A protobuf enum in a request: the SDK parses with ``ignore_unknown_fields``, which
    takes an unknown value for the enum's zero (``..._UNSPECIFIED``), so any string is
    accepted; the known values stay listed."""
    if isinstance(node, list):
        for item in node:
            _open_enums(item)
        return
    if not isinstance(node, dict):
        return
    values = node.get("enum")
    if (
        node.get("type") == "string"
        and isinstance(values, list)
        and values
        and all(isinstance(v, str) and _PROTO_ENUM_VALUE.match(v) for v in values)
    ):
        del node["enum"]
        node["examples"] = values
        node["description"] = (
            f"one of {', '.join(values)}; an unknown value is taken for {values[0]}"
        )
    for value in node.values():
        _open_enums(value)


def _describe_jsonrpc_request(components: dict[str, Any]) -> None:
    envelope = components.get("A2ARequest")
    if not isinstance(envelope, dict):
        return
    properties = envelope.get("properties", {})
    method = properties.get("method", {})
    if isinstance(method.get("enum"), list):
        method["enum"] += [name for name in V03_METHODS if name not in method["enum"]]
    params = properties.get("params", {})
    if isinstance(params.get("oneOf"), list):
        # Params valid for one method are usually valid for several (every field is
        # optional), which a oneOf forbids; 0.3 methods take the 0.3 JSON-RPC params.
        properties["params"] = {
            "anyOf": [*params["oneOf"], {"type": "object"}],
            "description": "the params of the method: a 1.0 request message (protobuf "
            "JSON), or the 0.3 params for a 0.3 method",
        }


def _jsonrpc(operation: dict[str, Any], problem: dict[str, Any]) -> None:
    operation["parameters"] = [
        _header(
            PROTOCOL_VERSION_1_0,
            PROTOCOL_VERSION_0_3,
            required=False,
            description="1.0 for the 1.0 method names (SendMessage, ...); without it, or "
            "0.3, the 0.3 names (message/send, ...). A name of the other version: -32601 "
            "(under 1.0) or -32009 (without the header)",
        )
    ]
    operation["description"] = (
        operation.get("description", "").replace("`oneOf`", "`anyOf`")
        + "\nJSON-RPC errors ride in an HTTP 200: -32700 for a body that is not UTF-8 JSON "
        f"(or nests deeper than {MAX_JSON_DEPTH} levels), -32600, -32601, -32602, and the A2A "
        "codes (-32001 task not found, ...). Streaming methods answer server-sent events, "
        "each a JSON-RPC response.\n"
    )
    operation["responses"] = {
        "200": {
            "description": "a JSON-RPC response (a result or an error), or an event stream",
            "content": {
                JSON: {"schema": _ref("A2AJsonRpcResponse")},
                SSE: {"schema": SSE_EVENT},
            },
        },
        "401": _problem(UNAUTHORIZED, problem),
        "413": _problem(BODY_TOO_LARGE, problem),
    }


def _rest(
    operation: dict[str, Any],
    method: str,
    path: str,
    suffix: str,
    version: str,
    problem: dict[str, Any],
    push: bool = False,
) -> None:
    known = (push and PUSH_OPERATIONS.get((method, suffix))) or REST_OPERATIONS.get(
        (method, suffix)
    )
    if known is None:
        return
    carries, description, refusals, query = known
    if version == "1.0":
        header = _header(
            PROTOCOL_VERSION_1_0,
            required=True,
            description="protocol 1.0 (without it: 400, version not supported)",
        )
    else:
        header = _header(
            PROTOCOL_VERSION_0_3,
            required=False,
            description="absent or 0.3 (anything else: 400, version not supported)",
        )
    path_parameters = [
        {"in": "path", "name": name, "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAMETER.findall(path)
    ]
    operation["parameters"] = [header, *path_parameters, *query]
    operation["summary"] = f"{method.upper()} {suffix} (A2A {version} HTTP+JSON)"
    responses: dict[str, Any] = {}
    if carries == "sse":
        responses["200"] = {
            "description": description + " (server-sent events, each a JSON object)",
            "content": {SSE: {"schema": SSE_EVENT}},
        }
    elif carries == "json":
        media = A2A_JSON if version == "1.0" else JSON
        responses["200"] = {
            "description": description + " (protobuf JSON)",
            "content": {media: {"schema": {"type": "object"}}},
        }
    else:
        operation["description"] = (
            "Push notifications are off (the card says so): always refused with 400 "
            "(PUSH_NOTIFICATION_NOT_SUPPORTED)."
        )
    for status in refusals:
        responses[str(status)] = _rest_error(REFUSALS[status])
    responses["401"] = _problem(UNAUTHORIZED, problem)
    if method == "post":
        responses["413"] = _problem(BODY_TOO_LARGE, problem)
    operation["responses"] = responses
    if version == "0.3" and suffix in ("/message:send", "/message:stream"):
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": _ref("A2AV03SendMessageRequest")}},
        }
    elif version == "0.3" and "requestBody" in operation:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": {"type": "object"}}},
        }
