"""The server process: graceful shutdown, several workers, TLS with ALPN h2, and start-up
failure."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import curl, h2_client, running_server, start_server
from tests.ollama_double import OllamaDouble

FAST = {"models": "sentiment-cnn-int8"}  # one small model: quick start-up


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    with OllamaDouble() as running:
        yield running


def _refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


async def _eventually(condition: Callable[[], bool], seconds: float) -> bool:
    for _ in range(int(seconds / 0.02) + 1):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def test_sigterm_finishes_in_flight_requests_and_exits_zero(double: OllamaDouble) -> None:
    server = start_server(ollama_host=double.url, graceful_timeout=20, **FAST)
    try:
        server.wait_ready()
        double.set_latency(0.8)  # input screen + output screen: the request takes ~1.6 s
        async with h2_client(server) as client:
            slow = asyncio.create_task(
                client.post("/v1/classify", json={"text": "A slow, thoughtful film."})
            )
            assert await _eventually(lambda: bool(double.chat_requests), 10)  # in the pipeline
            server.proc.send_signal(signal.SIGTERM)
            # New connections are refused while the in-flight request is still running.
            assert await _eventually(lambda: _refuses_connections(server.port), 1.0)
            assert not slow.done()
            response = await slow
        assert response.status_code == 200, response.text
        assert response.http_version == "HTTP/2"
        assert response.json()["results"][0]["screens"]["output"]["safe"] is True
        assert await asyncio.to_thread(server.proc.wait, 30) == 0
        messages = [entry.get("message") for entry in server.logs()]
        assert any(str(m).startswith("shutting down") for m in messages)
        assert "stopped cleanly" in messages
    finally:
        server.stop(signal.SIGKILL)


async def test_two_workers_each_take_connections_and_stop_cleanly(double: OllamaDouble) -> None:
    server = start_server(ollama_host=double.url, workers=2, **FAST)
    try:
        server.wait_ready()
        # Both workers must be listening before connections are spread across them.
        server.wait_for_log(lambda e: str(e.get("message", "")).startswith("Running on"), count=2)
        for i in range(24):  # a new connection each time: the kernel spreads them
            async with h2_client(server) as client:
                response = await client.get("/healthz", headers={"x-request-id": f"w-{i}"})
                assert response.status_code == 200
        lines = server.wait_for_log(
            lambda e: e.get("message") == "request" and str(e.get("request_id")).startswith("w-"),
            count=24,
        )
        assert {line["worker"] for line in lines} == {0, 1}
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.stop(signal.SIGKILL)


def _classify_count(exposition: str) -> float:
    """http_requests_total for POST /v1/classify answered 200, from a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "http_requests_total"
        and sample.labels.get("route") == "/v1/classify"
        and sample.labels.get("status") == "200"
    )


async def test_two_workers_serve_one_set_of_metrics(double: OllamaDouble) -> None:
    # Each scrape lands on one worker; with per-worker metrics two scrapes would disagree
    # and neither would count every request.
    server = start_server(ollama_host=double.url, workers=2, **FAST)
    try:
        server.wait_ready()
        server.wait_for_log(lambda e: str(e.get("message", "")).startswith("Running on"), count=2)
        sent = 16
        for i in range(sent):  # a new connection each time: the kernel spreads them
            async with h2_client(server) as client:
                response = await client.post(
                    "/v1/classify", json={"texts": [f"A fine film, number {i}."]},
                    headers={"x-request-id": f"m-{i}"},
                )  # fmt: skip
                assert response.status_code == 200, response.text
        lines = server.wait_for_log(
            lambda e: e.get("message") == "request" and str(e.get("request_id")).startswith("m-"),
            count=sent,
        )
        assert {line["worker"] for line in lines} == {0, 1}  # both workers answered some
        # Scrapes on new connections until each worker has answered some (the kernel picks the
        # worker per connection: 8 in a row land on one about once in 128 runs).
        scrapes, scraped_by = [], set()
        for i in range(64):
            async with h2_client(server) as client:
                scrape = await client.get("/metrics", headers={"x-request-id": f"s-{i}"})
                assert scrape.status_code == 200
                scrapes.append(scrape.text)
            [line] = server.wait_for_log(
                lambda e, i=i: e.get("message") == "request" and e.get("request_id") == f"s-{i}",
                count=1,
            )
            scraped_by.add(line["worker"])
            if scraped_by == {0, 1} and len(scrapes) >= 8:
                break
        assert scraped_by == {0, 1}  # both workers scraped
        assert {_classify_count(text) for text in scrapes} == {float(sent)}
        # Live gauges are the sum over the workers: a scrape sees itself in flight, once.
        assert all("http_requests_in_flight 1.0" in text for text in scrapes)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_negotiates_h2_with_alpn(
    double: OllamaDouble, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    with running_server(
        ollama_host=double.url, certfile=str(cert), keyfile=str(key), **FAST
    ) as server:
        assert server.base_url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(
            http2=True, verify=context, base_url=server.base_url, timeout=30
        ) as client:  # offers h2 and http/1.1 by ALPN; the server picks h2
            response = await client.post("/v1/classify", json={"text": "A bright film."})
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200
        result = curl("--http2", "--cacert", str(cert), "-i", f"{server.base_url}/healthz")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("HTTP/2 200")


def test_start_up_fails_cleanly_for_a_default_model_that_is_not_loaded(
    double: OllamaDouble,
) -> None:
    server = start_server(ollama_host=double.url, default_model="sentiment-cnn-int4", **FAST)
    assert server.proc.wait(60) == 1
    server.stop()
    errors = [e["message"] for e in server.logs() if e.get("level") == "ERROR"]
    assert any("DEFAULT_MODEL 'sentiment-cnn-int4' is not among" in m for m in errors)
    assert not any("Traceback" in line for line in server.lines)


async def test_two_workers_share_their_a2a_tasks(double: OllamaDouble) -> None:
    # The documented example (`serve --workers 2`) with no TASK_STORE_URL: a task made on one
    # worker is found, and canceled, from every connection, whichever worker takes it.
    server = start_server(ollama_host=double.url, workers=2, **FAST)
    try:
        server.wait_ready()
        server.wait_for_log(lambda e: str(e.get("message", "")).startswith("Running on"), count=2)
        headers = {"A2A-Version": "1.0"}
        ids = []
        for i in range(6):
            async with h2_client(server) as client:
                body = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "SendMessage",
                    "params": {
                        "message": {
                            "role": "ROLE_USER",
                            "messageId": f"m-{i}",
                            "parts": [{"text": "A fine film."}],
                        }
                    },
                }
                answer = (await client.post("/", json=body, headers=headers)).json()
                ids.append(answer["result"]["task"]["id"])
        found = 0
        for attempt in range(24):  # new connections: the kernel spreads them over both
            async with h2_client(server) as client:
                task_id = ids[attempt % len(ids)]
                body = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": task_id}}
                answer = (await client.post("/", json=body, headers=headers)).json()
                assert answer.get("result", {}).get("id") == task_id, answer
                found += 1
        assert found == 24
        lines = server.logs()
        assert {line.get("worker") for line in lines if line.get("message") == "request"} == {0, 1}
        assert any("share their A2A tasks" in str(line.get("message")) for line in lines)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.stop(signal.SIGKILL)
