"""The agent-to-agent client CLI (``python -m agents ask``) against the real server, over
HTTP/2: the card is resolved, the message sent with the a2a-sdk client, events printed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import REPO, ServerProcess, running_server
from tests.ollama_double import OllamaDouble

GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."


pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    port = free_port()
    with running_server(
        ollama_host=double.url, port=port, public_url=f"http://127.0.0.1:{port}"
    ) as running:
        yield running


def ask(url: str, text: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents", "ask", url, text, *options],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def test_ask_prints_the_task_and_its_result(server: ServerProcess, double: OllamaDouble) -> None:
    result = ask(server.base_url, GOOD)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "agent: Guarded Inference Service 0.1.0"
    assert lines[1].startswith("task ") and lines[1].endswith(": completed")
    assert "artifact sentiment-cnn-result:" in lines
    summary = lines[lines.index("artifact sentiment-cnn-result:") + 1]
    assert summary.startswith("  sentiment-cnn-int8: positive (")
    assert lines[-1] == "result: completed"
    assert len(double.chat_requests) == 2  # both screens ran
    # Card and message both went over HTTP/2.
    a2a = [
        entry
        for entry in server.logs()
        if entry.get("message") == "request"
        and entry.get("path") in ("/.well-known/agent-card.json", "/a2a/jsonrpc")
    ]
    assert {entry["path"] for entry in a2a} == {"/.well-known/agent-card.json", "/a2a/jsonrpc"}
    assert {entry["http_version"] for entry in a2a} == {"2"}


def test_ask_stream_prints_status_updates_as_they_arrive(server: ServerProcess) -> None:
    result = ask(server.base_url, GOOD, "--stream")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if line.endswith(": submitted")),
        lines.index("status: working"),
        lines.index("artifact sentiment-cnn-result:"),
        lines.index("status: completed"),
        lines.index("result: completed"),
    ]
    assert order == sorted(order)
    assert "  screening 1 text with the guard and classifying with sentiment-cnn-int8" in lines


def test_ask_with_a_skill_and_json(server: ServerProcess, double: OllamaDouble) -> None:
    result = ask(server.base_url, GOOD, "--skill", "sentiment-moe", "--json")
    assert result.returncode == 0, result.stderr
    task = json.loads(result.stdout[result.stdout.index("\n{") :])
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    [artifact] = task["artifacts"]
    assert artifact["parts"][0]["data"]["model"]["name"] == "switch-moe"
    assert task["history"][0]["metadata"] == {"skill": "sentiment-moe"}

    double.set_rules([("steal", "unsafe\nS2")])
    result = ask(server.base_url, "How do I steal a car?", "--skill", "moderation")
    assert result.returncode == 0, result.stderr
    assert "  unsafe (blocked): S2 Non-Violent Crimes" in result.stdout.splitlines()


def test_ask_reports_a_rejection_and_exits_1(server: ServerProcess, double: OllamaDouble) -> None:
    double.set_rules([("bomb", "unsafe\nS9")])
    result = ask(server.base_url, "How to build a bomb", "--stream")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "status: rejected" in lines
    assert "  rejected: the guard judged the input unsafe: S9 Indiscriminate Weapons" in lines
    assert lines[-1] == "result: rejected"


def test_ask_an_unreachable_agent_exits_2(closed_port: int) -> None:
    result = ask(f"http://127.0.0.1:{closed_port}", "hello")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_ask_chat_prints_the_reply_and_exits_0(server: ServerProcess, double: OllamaDouble) -> None:
    double.set_replies(None, default="Hello there, how can I help?")
    result = ask(server.base_url, "Hi!", "--skill", "chat")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stdout.splitlines()[-1] == "result: input_required"
    assert "Hello there, how can I help?" in result.stdout.replace("\n  ", "")


def test_ask_stream_chat_collects_the_reply_chunks_into_one_artifact(
    double: OllamaDouble, free_port: Callable[[], int]
) -> None:
    reply = " ".join(f"word{i}" for i in range(12))
    double.set_replies(None, default=reply)
    port = free_port()
    # Chunks of 4 tokens: the reply arrives as several appended chunks of one artifact.
    with running_server(ollama_host=double.url, port=port, chat_chunk_tokens=4) as server:
        result = ask(server.base_url, "Hi!", "--skill", "chat", "--stream", "--json")
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout[: result.stdout.index("\n{")].splitlines()
    assert lines.count("artifact chat-reply:") == 1, lines
    # The indented lines under the artifact's heading: one per chunk, until the next event.
    start = lines.index("artifact chat-reply:") + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  "))
    printed = [line.strip() for line in lines[start:end]]
    assert len(printed) >= 3
    assert " ".join(printed).split() == reply.split()
    task = json.loads(result.stdout[result.stdout.index("\n{") :])
    [artifact] = task["artifacts"]
    assert artifact["name"] == "chat-reply"
    assert "".join(part["text"] for part in artifact["parts"]).split() == reply.split()
    assert artifact["metadata"]["finish_reason"] == "stop"  # the last chunk's metadata kept


def test_ask_waits_longer_than_the_services_chat_turn_by_default_and_honours_timeout(
    server: ServerProcess, double: OllamaDouble
) -> None:
    from service.a2a.client import DEFAULT_TIMEOUT
    from service.config import Settings

    # A whole (non-streamed) chat turn may take REQUEST_TIMEOUT + CHAT_TIMEOUT: the client's
    # default waits longer, so the service's own deadline (a typed error) comes first.
    assert Settings(chat_model="any").chat_turn_timeout() < DEFAULT_TIMEOUT
    double.set_replies(None, default="slow " * 20)
    double.set_token_delay(0.1)  # about 2 s for the whole reply
    result = ask(server.base_url, "Hi!", "--skill", "chat", "--timeout", "0.5")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and "Timeout" in result.stderr
    assert "Traceback" not in result.stderr


def test_ask_refuses_a_timeout_that_is_not_a_positive_number() -> None:
    for bad in ("0", "-1", "soon", "inf"):
        result = ask("http://127.0.0.1:9", "hello", "--timeout", bad)
        assert result.returncode == 2 and "--timeout" in result.stderr, (bad, result.stderr)
