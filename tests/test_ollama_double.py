"""The Ollama double itself: a client that gives up mid-answer is quiet, other errors stay loud."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.ollama_double import OllamaDouble

CHAT = {
    "model": "llama-guard3:1b",
    "messages": [{"role": "user", "content": "hello"}],
    "stream": False,
}


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_client_that_gives_up_mid_answer_prints_nothing(
    ollama_double: OllamaDouble, capfd: pytest.CaptureFixture[str]
) -> None:
    ollama_double.set_latency(0.3)  # the client is gone before the answer is written
    body = json.dumps(CHAT).encode()
    head = f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", ollama_double.port)) as sock:
        sock.sendall(head.encode() + body)
        wait_until(lambda: ollama_double.chat_requests)
        # Linger 0: close with a reset, as a client abandoning a request may.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    wait_until(lambda: ollama_double.client_disconnects == 1)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
    # The double still answers the next client.
    ollama_double.set_latency(0.0)
    answer = httpx.post(f"{ollama_double.url}/api/chat", json=CHAT, timeout=5)
    assert answer.json()["message"]["content"] == "safe"


def test_other_errors_still_print_their_traceback(
    ollama_double: OllamaDouble, capfd: pytest.CaptureFixture[str]
) -> None:
    def broken(_messages: list[dict[str, Any]]) -> str:
        raise ValueError("the judge broke")

    ollama_double.set_rules(broken)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{ollama_double.url}/api/chat", json=CHAT, timeout=5)
    seen = ""

    def printed() -> bool:
        nonlocal seen
        seen += capfd.readouterr().err
        return "ValueError: the judge broke" in seen

    wait_until(printed)
    assert "Traceback" in seen
    assert ollama_double.client_disconnects == 0
