"""``python -m agents ask`` sends the bearer token only to the origin it was given for.

Two local servers: the real service (API_TOKENS set) whose card (PUBLIC_URL) names another
local port, where a small recording proxy listens (Hypercorn, HTTP/2 like the service; it
records each request's headers and forwards it to the service). The recorder must never see
the token unless ``--send-token-to`` or ``--trust-card-urls`` allows it.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config

from service.a2a.client import OriginBearerAuth, origin_of
from tests.helpers import REPO, ServerProcess, running_server
from tests.ollama_double import OllamaDouble

GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."
TOKEN = "s3cret-token-for-the-origin-only"
HOP_BY_HOP = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}

pytestmark = pytest.mark.usefixtures("fresh_double")


class RecordingProxy:
    """An ASGI app under Hypercorn in a thread: records every request, forwards it to
    ``upstream`` over HTTP/2 and relays the answer."""

    def __init__(self, port: int, upstream: str) -> None:
        self.port = port
        self.upstream = upstream
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.seen)

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        with self._lock:
            self.seen.append(
                {"path": scope["path"], "headers": headers, "http_version": scope["http_version"]}
            )
        target = self.upstream + scope["path"]
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        forwarded = [(k, v) for k, v in headers if k not in HOP_BY_HOP]
        async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as client:
            answer = await client.request(scope["method"], target, headers=forwarded, content=body)
        relayed = [
            (k.encode(), v.encode())
            for k, v in answer.headers.items()
            if k.lower() not in HOP_BY_HOP | {"content-encoding"}
        ]
        await send({"type": "http.response.start", "status": answer.status_code,
                    "headers": relayed})  # fmt: skip
        await send({"type": "http.response.body", "body": answer.content})

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            config = Config()
            config.bind = [f"127.0.0.1:{self.port}"]
            config.accesslog = None
            await serve(self.app, config, shutdown_trigger=self._stop.wait)

        asyncio.run(main())

    def start(self) -> RecordingProxy:
        self._thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError("the recording proxy did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


def authorizations(proxy: RecordingProxy) -> list[str]:
    return [v for r in proxy.requests() for k, v in r["headers"] if k == "authorization"]


@pytest.fixture(scope="module")
def proxy_port(free_port: Callable[[], int]) -> int:
    return free_port()


@pytest.fixture(scope="module")
def server(double: OllamaDouble, proxy_port: int) -> Iterator[ServerProcess]:
    """The service with tokens on, its card naming the recording proxy's port."""
    with running_server(
        ollama_host=double.url,
        models="sentiment-cnn-int8",
        api_tokens=TOKEN,
        public_url=f"http://127.0.0.1:{proxy_port}",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def proxy(server: ServerProcess, proxy_port: int) -> Iterator[RecordingProxy]:
    running = RecordingProxy(proxy_port, server.base_url).start()
    yield running
    running.stop()


@pytest.fixture
def recorder(proxy: RecordingProxy) -> RecordingProxy:
    proxy.clear()
    return proxy


@pytest.fixture(scope="module")
def own_server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    """The normal case: tokens on, the card naming the service's own URL."""
    port = free_port()
    with running_server(
        ollama_host=double.url,
        models="sentiment-cnn-int8",
        api_tokens=TOKEN,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
    ) as running:
        yield running


def ask(url: str, text: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents", "ask", url, text, *options],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )  # fmt: skip


# --- over two real servers ------------------------------------------------------------------------


def test_the_token_never_reaches_an_origin_only_the_card_names(
    server: ServerProcess, recorder: RecordingProxy
) -> None:
    result = ask(server.base_url, GOOD, "--token", TOKEN)
    seen = recorder.requests()
    assert seen, "the client never went to the URL the card names"
    assert {r["path"] for r in seen} == {"/a2a/jsonrpc"}
    assert {r["http_version"] for r in seen} == {"2"}
    assert authorizations(recorder) == []
    assert not any(TOKEN in v for r in seen for _, v in r["headers"])
    # The service, reached through the proxy without the token, refuses: exit 2, and the
    # command says why.
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"note: not sending the token to {recorder.url}" in result.stderr
    assert "--send-token-to" in result.stderr
    # The card itself was fetched from the origin the token is for.
    card = [e for e in server.logs() if e.get("path") == "/.well-known/agent-card.json"]
    assert card


def test_send_token_to_allows_the_named_origin(
    server: ServerProcess, recorder: RecordingProxy
) -> None:
    result = ask(server.base_url, GOOD, "--token", TOKEN, "--send-token-to", recorder.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "result: completed"
    assert authorizations(recorder) and set(authorizations(recorder)) == {f"Bearer {TOKEN}"}
    assert "note:" not in result.stderr


def test_send_token_to_another_origin_does_not_allow_this_one(
    server: ServerProcess, recorder: RecordingProxy
) -> None:
    # Same host, another port: another origin.
    other = f"http://127.0.0.1:{recorder.port + 1 if recorder.port < 65535 else 1}"
    result = ask(server.base_url, GOOD, "--token", TOKEN, "--send-token-to", other)
    assert result.returncode == 2
    assert recorder.requests() and authorizations(recorder) == []


def test_trust_card_urls_sends_it_everywhere(
    server: ServerProcess, recorder: RecordingProxy
) -> None:
    result = ask(server.base_url, GOOD, "--stream", "--token", TOKEN, "--trust-card-urls")
    assert result.returncode == 0, result.stderr
    assert set(authorizations(recorder)) == {f"Bearer {TOKEN}"}


def test_asking_the_url_the_card_names_sends_the_token(
    server: ServerProcess, recorder: RecordingProxy
) -> None:
    # Given the proxy's URL, the card (fetched through it) names the same origin.
    result = ask(recorder.url, GOOD, "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    assert {r["path"] for r in recorder.requests()} == {
        "/.well-known/agent-card.json",
        "/a2a/jsonrpc",
    }
    assert set(authorizations(recorder)) == {f"Bearer {TOKEN}"}


def test_the_normal_case_still_works(own_server: ServerProcess) -> None:
    result = ask(own_server.base_url, GOOD, "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "agent: Guarded Inference Service 0.1.0"
    assert lines[-1] == "result: completed"
    assert "note:" not in result.stderr
    # A trailing slash or a path on the URL does not change its origin.
    assert ask(own_server.base_url + "/", GOOD, "--token", TOKEN).returncode == 0
    # Without the token the service refuses.
    assert ask(own_server.base_url, GOOD).returncode == 2


def test_send_token_to_must_be_an_http_origin() -> None:
    result = ask("http://127.0.0.1:9", GOOD, "--send-token-to", "ftp://example.com")
    assert result.returncode == 2
    assert "--send-token-to" in result.stderr and "not an http:// or https://" in result.stderr


# --- the pieces -----------------------------------------------------------------------------------


def test_origin_of() -> None:
    assert origin_of("http://127.0.0.1:8080/a2a/jsonrpc?x=1") == ("http", "127.0.0.1", 8080)
    assert origin_of("http://Example.COM") == origin_of("http://example.com:80/")
    assert origin_of("https://example.com/") == ("https", "example.com", 443)
    assert origin_of("https://example.com") != origin_of("http://example.com:443")
    assert origin_of("http://[::1]:8080/") == ("http", "::1", 8080)
    for bad in ("ftp://example.com", "example.com", "/relative", "http://"):
        with pytest.raises(ValueError):
            origin_of(bad)


async def test_the_auth_adds_the_header_per_request_by_origin() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        return httpx.Response(200)

    notes: list[str] = []
    auth = OriginBearerAuth(TOKEN, {origin_of("https://agent.example")}, withheld=notes.append)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        await client.get("https://agent.example/card")
        await client.get("https://AGENT.example:443/a2a")
        await client.get("https://evil.example/a2a")
        await client.get("https://evil.example/again")
        await client.get("http://agent.example/a2a")  # another scheme: another origin
    assert [header for _, header in seen] == [f"Bearer {TOKEN}"] * 2 + [None] * 3
    assert notes == [
        "note: not sending the token to https://evil.example (named by the agent's card, not "
        "the URL the token is for); allow it with --send-token-to https://evil.example or "
        "--trust-card-urls",
        "note: not sending the token to http://agent.example (named by the agent's card, not "
        "the URL the token is for); allow it with --send-token-to http://agent.example or "
        "--trust-card-urls",
    ]
    trusting = OriginBearerAuth(TOKEN, set(), trust_any=True)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=trusting) as client:
        await client.get("https://evil.example/a2a")
    assert seen[-1][1] == f"Bearer {TOKEN}"
