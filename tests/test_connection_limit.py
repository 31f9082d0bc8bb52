"""Slow bodies and connection counts are bounded: a body that has not arrived within
BODY_TIMEOUT is answered 408 (HTTP/1.1 and HTTP/2), and a process holds at most
MAX_CONNECTIONS connections. Real Hypercorn process on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import hypercorn.asyncio.run as hypercorn_run
import pytest

from service.connection_limit import LimitedTCPServer, install
from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble


def test_hypercorn_still_creates_connections_through_the_patched_name() -> None:
    source = Path(hypercorn_run.__file__).read_text()
    assert "await TCPServer(app, loop, config, context, lifespan_state, reader, writer)" in source
    before = hypercorn_run.TCPServer
    try:
        install(5)
        assert hypercorn_run.TCPServer is LimitedTCPServer and LimitedTCPServer.limit == 5
    finally:
        hypercorn_run.TCPServer = before  # type: ignore[misc]
        LimitedTCPServer.limit = 0


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(
        ollama_host=double.url, models="sentiment-cnn-int8", body_timeout=1
    ) as running:
        yield running


def _recv_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):  # a close with unread data is a reset
        pass
    return b"".join(chunks)


def test_a_stalled_http1_body_is_answered_408(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 1000\r\n\r\n{"text": "half'
        )
        started = time.monotonic()
        answer = _recv_all(sock, 5)
        took = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(body)["type"] == "/problems/body-timeout"
    assert 0.8 < took < 3


def test_a_stalled_http2_body_is_answered_408_and_its_siblings_are_served(
    server: ServerProcess,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stalled = conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":path", "/v1/classify"),
            (":scheme", "http"),
            (":authority", "x"),
            ("content-type", "application/json"),
        ]
        conn.send_headers(stalled, headers)
        conn.send_data(stalled, b'{"text": "half')  # and nothing more
        healthy = conn.get_next_available_stream_id()
        conn.send_headers(
            healthy,
            [(":method", "GET"), (":path", "/healthz"), (":scheme", "http"), (":authority", "x")],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        statuses: dict[int, str] = {}
        sock.settimeout(5)
        deadline = time.monotonic() + 5
        while len(statuses) < 2 and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = dict(event.headers)[b":status"].decode()
            sock.sendall(conn.data_to_send())
    assert statuses == {healthy: "200", stalled: "408"}


async def test_connections_past_the_ceiling_are_closed_at_once(double: OllamaDouble) -> None:
    with running_server(
        ollama_host=double.url, models="sentiment-cnn-int8", max_connections=3
    ) as server:
        await _three_and_no_more(server)


async def _three_and_no_more(server: ServerProcess) -> None:
    clients = [h2_client(server) for _ in range(3)]
    try:
        for client in clients:  # three connections held open
            assert (await client.get("/healthz")).status_code == 200
        with socket.create_connection(("127.0.0.1", server.port)) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _recv_all(extra, 3) == b""  # closed without an answer
        await clients[0].aclose()  # a place frees up once the server sees the close
        for _ in range(50):
            await asyncio.sleep(0.1)
            with socket.create_connection(("127.0.0.1", server.port)) as again:
                again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if _recv_all(again, 3).startswith(b"HTTP/1.1 200"):
                    break
        else:
            raise AssertionError("no connection was accepted after one closed")
        async with h2_client(server) as http:
            metrics = (await http.get("/metrics")).text
    finally:
        for client in clients[1:]:
            await client.aclose()
    assert "http_connections_refused_total 1.0" in metrics
