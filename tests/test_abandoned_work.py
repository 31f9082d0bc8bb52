"""Abandoned work stops, and the guard's queue is bounded and shared fairly: a client that resets
its streams cancels their pipeline calls and the guard calls nobody else waits for; past the
queue a screen is refused at once with 503 + Retry-After; one caller cannot take more than its
share. Real Hypercorn process over HTTP/2 (raw h2 frames, to reset streams), guard on the
Ollama double with a fixed latency."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest

from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

ALICE, BOB = "tok-alice-61d0", "tok-bob-93ac"


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _reset_after(server: ServerProcess, texts: list[str], seconds: float) -> None:
    """Send one POST /v1/classify per text on one HTTP/2 connection, then reset every stream
    after ``seconds``, as a client that gives up does."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    streams = []
    for text in texts:
        stream_id = conn.get_next_available_stream_id()
        body = json.dumps({"text": text}).encode()
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":path", "/v1/classify"),
                (":scheme", "http"),
                (":authority", f"127.0.0.1:{server.port}"),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            ],
        )
        conn.send_data(stream_id, body, end_stream=True)
        streams.append(stream_id)
    sock.sendall(conn.data_to_send())
    time.sleep(seconds)
    for stream_id in streams:
        conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
    sock.sendall(conn.data_to_send())
    time.sleep(0.2)
    sock.close()


@pytest.fixture
def slow_guard(ollama_double: OllamaDouble) -> OllamaDouble:
    ollama_double.set_latency(0.5)
    return ollama_double


@pytest.fixture
def server(slow_guard: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(
        ollama_host=slow_guard.url,
        models="sentiment-cnn-int8",
        guard_concurrency=2,
        guard_queue=256,
        guard_cache_size=0,
    ) as running:
        yield running


async def test_reset_streams_stop_their_guard_calls(
    server: ServerProcess, slow_guard: OllamaDouble
) -> None:
    texts = [f"Review number {i}: a fine film." for i in range(20)]
    await asyncio.to_thread(_reset_after, server, texts, 0.3)
    await asyncio.sleep(2.5)  # what was still queued would be running now, had it not stopped
    made = len(slow_guard.chat_requests)
    # Without cancellation every text makes two screens: 40 guard calls over 10 s, about 12
    # of them by now.
    assert made <= 6, f"{made} guard calls for 20 abandoned requests"
    async with h2_client(server) as http:
        metrics = (await http.get("/metrics")).text
        assert _metric(metrics, "http_requests_abandoned_total") >= 18
        assert _metric(metrics, "guard_calls_abandoned_total") >= 1
        # A new caller is served at once, not behind the abandoned work.
        started = time.monotonic()
        answer = await http.post("/v1/classify", json={"text": "A new, lovely film."})
        elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert elapsed < 2.5  # two screens of 0.5 s each, plus the model


async def test_a_full_guard_queue_refuses_at_once(slow_guard: OllamaDouble) -> None:
    with running_server(
        ollama_host=slow_guard.url,
        models="sentiment-cnn-int8",
        guard_concurrency=1,
        guard_queue=1,
        guard_cache_size=0,
        guard_retry_after=7,
    ) as server:
        # A connection each: over one shared connection httpx's HTTP/2 reader can hold a
        # stream's answer back until another stream's data arrives (one task waits in a
        # socket read holding the read lock), which would time the client, not the service.
        async def classify(i: int) -> tuple[httpx.Response, float]:
            async with h2_client(server) as http:
                await http.get("/healthz")  # connected before the clock starts
                started = time.monotonic()
                response = await http.post("/v1/classify", json={"text": f"Film {i} was fine."})
                return response, time.monotonic() - started

        answers = await asyncio.gather(*(classify(i) for i in range(6)))
    served = [response for response, _ in answers if response.status_code == 200]
    refused = [(response, took) for response, took in answers if response.status_code == 503]
    assert len(served) >= 1 and len(refused) >= 3
    for response, _ in refused:
        problem = response.json()
        assert problem["type"] == "/problems/guard-unavailable"
        assert problem["kind"] == "overloaded" and response.headers["retry-after"] == "7"
    # Refused at once, not after waiting for a slot (a request whose input screen got a place
    # may still be refused later, at its output screen).
    assert sum(1 for _, took in refused if took < 0.4) >= 3


async def test_one_caller_cannot_take_every_guard_slot(slow_guard: OllamaDouble) -> None:
    with running_server(
        ollama_host=slow_guard.url,
        models="sentiment-cnn-int8",
        api_tokens=f"alice:{ALICE},bob:{BOB}",
        guard_concurrency=2,
        guard_queue=2,  # 4 places, 2 per caller at a share of 0.5
        guard_caller_share=0.5,
        guard_cache_size=0,
    ) as server:
        async with h2_client(server) as http:

            async def classify(token: str, i: int) -> httpx.Response:
                return await http.post(
                    "/v1/classify",
                    json={"text": f"Film {token[:7]} {i} was fine."},
                    headers={"Authorization": f"Bearer {token}"},
                )

            alice = [asyncio.create_task(classify(ALICE, i)) for i in range(5)]
            await asyncio.sleep(0.1)  # alice's screens are in
            bob = await classify(BOB, 0)
            alices = await asyncio.gather(*alice)
    assert bob.status_code == 200, bob.text
    assert [r.status_code for r in alices].count(503) >= 3
    assert all(r.json()["kind"] == "overloaded" for r in alices if r.status_code == 503)
