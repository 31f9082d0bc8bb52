"""/openapi.json describes what the service answers: the A2A operations with their path
parameters, version header, statuses and content types (read from the app, no server), and
a short, bounded schemathesis run over the whole document against the real service finds
nothing (``make test-fuzz`` is the longer run; both need the ``fuzz`` extra for the run)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.config import Settings

A2A_PREFIXES = ("/a2a/", "/.well-known/")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    app = create_app(Settings(_env_file=None, ollama_host="http://127.0.0.1:9"))
    return app.openapi()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_path_parameter_is_declared(document: dict[str, Any]) -> None:
    for path, method, operation in _operations(document):
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert set(re.findall(r"{([^}]+)}", path)) == declared, f"{method.upper()} {path}"


def test_every_a2a_operation_documents_its_refusals(document: dict[str, Any]) -> None:
    for path, method, operation in _operations(document):
        if not (path.startswith(A2A_PREFIXES) or path == "/"):
            continue
        responses = operation["responses"]
        if path != "/.well-known/agent-card.json":
            assert "401" in responses, f"{method.upper()} {path}"
            problem = responses["401"]["content"]
            assert list(problem) == ["application/problem+json"]
        if method == "post":
            assert "413" in responses, f"{method.upper()} {path}"
        if path.startswith("/a2a/rest/"):
            assert "400" in responses
            assert list(responses["400"]["content"]) == ["application/json"]
            schema = responses["400"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/A2AError"}


def _content(document: dict[str, Any], method: str, path: str, status: str = "200") -> list[str]:
    return list(document["paths"][path][method]["responses"][status]["content"])


def _version_header(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    [header] = [
        p for p in document["paths"][path][method]["parameters"] if p["name"] == "A2A-Version"
    ]
    return header


def test_each_binding_and_version_says_what_it_answers(document: dict[str, Any]) -> None:
    # HTTP+JSON 1.0: application/a2a+json, the header required.
    assert _content(document, "get", "/a2a/rest/tasks/{id}") == ["application/a2a+json"]
    assert _content(document, "get", "/a2a/rest/tasks/{id}", "404") == ["application/json"]
    header = _version_header(document, "get", "/a2a/rest/tasks/{id}")
    assert header["required"] is True and header["schema"]["enum"] == ["1.0"]
    # HTTP+JSON 0.3: application/json, no header (or 0.3), the 0.3 message shape.
    assert _content(document, "get", "/a2a/rest/v1/tasks/{id}") == ["application/json"]
    header = _version_header(document, "get", "/a2a/rest/v1/tasks/{id}")
    assert header["required"] is False and header["schema"]["enum"] == ["0.3"]
    body = document["paths"]["/a2a/rest/v1/message:send"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/A2AV03SendMessageRequest"}
    # Streams.
    for path in ("/a2a/rest/message:stream", "/a2a/rest/v1/tasks/{id}:subscribe"):
        method = "post" if path.endswith("stream") else "get"
        assert _content(document, method, path) == ["text/event-stream"]
    # JSON-RPC: both versions, errors in a 200, streams too.
    for path in ("/", "/a2a/jsonrpc"):
        assert _content(document, "post", path) == ["application/json", "text/event-stream"]
        header = _version_header(document, "post", path)
        assert header["required"] is False and header["schema"]["enum"] == ["1.0", "0.3"]
    envelope = document["components"]["schemas"]["A2ARequest"]["properties"]
    assert {"SendMessage", "message/send", "tasks/get"} <= set(envelope["method"]["enum"])
    assert "anyOf" in envelope["params"]
    # Push notifications are off: refused, never a 200.
    push = document["paths"]["/a2a/rest/tasks/{id}/pushNotificationConfigs"]["post"]
    assert "200" not in push["responses"] and "400" in push["responses"]
    # The REST operations routes.
    assert _content(document, "get", "/metrics") == ["text/plain"]
    assert "404" in document["paths"]["/problems/{slug}"]["get"]["responses"]


def test_a_short_fuzz_of_the_whole_openapi_finds_nothing(tmp_path: Path) -> None:
    from tests import fuzz  # schemathesis: the fuzz extra, which make install installs

    # Bounded: few examples, a fixed seed (reproducible), a hard time limit.
    code = fuzz.main(
        ["--max-examples", "8", "--seed", "20261201", "--time-limit", "120",
         "--report-dir", str(tmp_path)]
    )  # fmt: skip
    assert code == 0, "the fuzz found failures: see the summary printed above"
