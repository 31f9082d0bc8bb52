"""The guard's lean HTTP/1.1 transport against a scripted raw-socket server on loopback: what
it sends, how it reads each way an answer can be delimited, when it keeps a connection, and
that every fault surfaces as the httpx exception httpcore raises for it. (The guard's own
behaviour over it, through the real ollama client and the Ollama test double, is in
test_guard_client.py, test_abandoned_work.py and the pipeline tests.)"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import ollama
import pytest

from service.config import Settings
from service.guard import transport
from service.guard.llama_guard import LlamaGuard, proxied
from service.guard.transport import ScreenTransport

RESET = b"<reset>"  # the server resets the connection (RST) instead of answering
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


@dataclass
class Script:
    """What the server answers to each request, in order: bytes to write, and whether to
    close the connection afterwards (``None`` bytes: close without answering; a float: wait
    that long first)."""

    answers: deque[tuple[bytes | None, bool] | float] = field(default_factory=deque)
    requests: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # conn, head, body
    connections: int = 0
    eofs: int = 0  # connections the client closed

    def answer(self, data: bytes | None, close: bool = False) -> None:
        self.answers.append((data, close))


async def _serve(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    script.connections += 1
    number = script.connections
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                script.eofs += 1
                return
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            script.requests.append((number, head, body))
            step = script.answers.popleft() if script.answers else (OK, False)
            if isinstance(step, float):  # wait, but notice a client that goes away
                try:
                    if await asyncio.wait_for(reader.read(1), timeout=step) == b"":
                        script.eofs += 1
                        return
                except TimeoutError:
                    pass
                step = script.answers.popleft() if script.answers else (OK, False)
            data, close = step
            if data == RESET:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if data is not None:
                writer.write(data)
                await writer.drain()
            if data is None or close:
                return
    finally:
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Script, str]]:
    script = Script()
    srv = await asyncio.start_server(lambda r, w: _serve(script, r, w), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield script, f"http://127.0.0.1:{port}"
        srv.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=ScreenTransport(), timeout=5) as http:
        yield http


async def test_a_post_is_sent_whole_and_the_connection_is_kept_for_the_next(server, client):
    script, url = server
    first = await client.post(f"{url}/api/chat?x=1", json={"model": "m"})
    second = await client.post(f"{url}/api/chat", content=b"abc")
    assert first.status_code == second.status_code == 200 and first.json() == {"ok": True}
    assert first.headers["content-type"] == "application/json"
    assert script.connections == 1  # one kept-alive connection carried both
    (_, head, body), (_, head2, body2) = script.requests
    assert head.startswith(b"POST /api/chat?x=1 HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in head.lower()
    assert json.loads(body) == {"model": "m"} and body2 == b"abc"
    assert b"content-length: 3\r\n" in head2.lower()


async def test_a_chunked_answer_is_decoded(server, client):
    script, url = server
    chunks = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    script.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    response = await client.post(f"{url}/a", content=b"")
    assert response.content == b"hello world"
    await client.post(f"{url}/b", content=b"")
    assert script.connections == 1


async def test_connection_close_or_http_1_0_is_not_reused(server, client):
    script, url = server
    script.answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")
    script.answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nho")
    assert (await client.post(f"{url}/a", content=b"")).text == "hi"
    assert (await client.post(f"{url}/a", content=b"")).text == "ho"
    await client.post(f"{url}/a", content=b"")
    assert script.connections == 3


async def test_an_answer_delimited_by_the_close_is_read_to_the_end(server, client):
    script, url = server
    script.answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True)
    assert (await client.post(f"{url}/a", content=b"")).text == "until the end"
    await client.post(f"{url}/a", content=b"")
    assert script.connections == 2


async def test_an_error_status_is_an_answer_not_a_transport_error(server, client):
    script, url = server
    script.answer(b'HTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\n{"error":1}')
    response = await client.post(f"{url}/a", content=b"")
    assert response.status_code == 404 and response.reason_phrase == "Not Found"
    await client.post(f"{url}/a", content=b"")
    assert script.connections == 1


@pytest.mark.parametrize(
    "answer, close, message",
    [
        (None, True, "without sending a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\ntoo short", True, "complete message body"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", False, "not an HTTP/1.x answer"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", False, "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", False, "bad Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 11\r\n\r\nhi",
            False,
            "bad Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
            False,
            "framing",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", False, "framing"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False, "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", False, "bad chunk size"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", False, "unexpected 101"),
    ],
)
async def test_a_broken_answer_is_a_remote_protocol_error(server, client, answer, close, message):
    script, url = server
    script.answer(answer, close=close)  # most leave the connection open: it must not be kept
    with pytest.raises(httpx.RemoteProtocolError, match=message):
        await client.post(f"{url}/a", content=b"")
    assert (await client.post(f"{url}/a", content=b"")).status_code == 200  # a new connection
    assert script.connections == 2


async def test_bytes_past_the_answer_are_never_read_as_the_next_answer(server, client):
    script, url = server
    stale = b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"stale":1}'
    script.answer(OK + stale)  # one answer, then one nobody asked for on the same connection
    fresh = b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"fresh":1}'
    script.answer(fresh)
    assert (await client.post(f"{url}/a", content=b"")).json() == {"ok": True}
    await asyncio.sleep(0.05)  # the extra bytes reach the client's buffer while it is idle
    assert (await client.post(f"{url}/a", content=b"")).json() == {"fresh": 1}
    assert script.connections == 2


async def test_an_interim_100_continue_is_skipped_for_the_final_answer(server, client):
    script, url = server
    script.answer(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
    response = await client.post(f"{url}/a", content=b"x")
    assert response.status_code == 200 and response.json() == {"ok": True}
    await client.post(f"{url}/a", content=b"")
    assert script.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n"
        + b"x" * 64
        + b"\r\n40\r\n"
        + b"y" * 64
        + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 150,
    ],
    ids=["content-length", "chunked", "until-close"],
)
async def test_an_answer_over_the_size_bound_is_refused(server, client, monkeypatch, answer):
    script, url = server
    monkeypatch.setattr(transport, "MAX_BODY_BYTES", 100)
    script.answer(answer, close=True)
    with pytest.raises(httpx.RemoteProtocolError, match="over 100 bytes"):
        await client.post(f"{url}/a", content=b"")


async def test_a_reset_is_a_read_error(server, client):
    script, url = server
    script.answer(RESET)
    with pytest.raises(httpx.ReadError):
        await client.post(f"{url}/a", content=b"")


async def test_a_get_sends_no_body_and_no_length(server, client):
    script, url = server
    await client.get(f"{url}/api/tags")
    ((_, head, body),) = script.requests
    assert head.startswith(b"GET /api/tags HTTP/1.1\r\n") and body == b""
    assert b"content-length" not in head.lower()


async def test_at_most_max_idle_connections_are_kept(server):
    script, url = server
    script.answers.extend([0.05, 0.05])
    async with httpx.AsyncClient(transport=ScreenTransport(max_idle=1)) as http:
        await asyncio.gather(*(http.post(f"{url}/a", content=b"") for _ in range(2)))
        assert script.connections == 2
        await asyncio.sleep(0.05)
        assert script.eofs == 1  # the second one was closed, not kept
        await http.post(f"{url}/a", content=b"")
        assert script.connections == 2  # the kept one served it


async def test_closing_the_transport_closes_its_idle_connections(server):
    script, url = server
    screens = ScreenTransport()
    async with httpx.AsyncClient(transport=screens) as http:
        await http.post(f"{url}/a", content=b"")
    await asyncio.sleep(0.05)
    assert script.eofs == 1


def test_screens_keep_httpx_transport_when_a_proxy_applies(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert not proxied("http://ollama:11434")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    assert proxied("http://ollama:11434") and proxied("ollama:11434")
    assert not proxied("https://ollama:11434")  # no HTTPS_PROXY
    monkeypatch.setenv("NO_PROXY", "ollama,localhost")
    assert not proxied("http://ollama:11434") and proxied("http://other:11434")
    direct = LlamaGuard(Settings(ollama_host="http://ollama:11434"))
    through_proxy = LlamaGuard(Settings(ollama_host="http://other:11434"))
    assert direct._screens is not direct._client  # its own client, on the lean transport
    assert through_proxy._screens is through_proxy._client  # httpx's, which uses the proxy


async def test_a_refused_connection_is_a_connect_error_and_ollama_says_so():
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with httpx.AsyncClient(transport=ScreenTransport()) as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"http://127.0.0.1:{port}/api/chat", content=b"")
    guard_client = ollama.AsyncClient(host=f"http://127.0.0.1:{port}", transport=ScreenTransport())
    with pytest.raises(ConnectionError):  # what ollama makes of httpx.ConnectError
        await guard_client.chat(model="m", messages=[{"role": "user", "content": "hi"}])
    await guard_client.close()  # type: ignore[no-untyped-call]


async def test_no_answer_within_the_read_timeout_is_a_read_timeout(server):
    script, url = server
    script.answers.append(2.0)
    async with httpx.AsyncClient(transport=ScreenTransport(), timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"{url}/a", content=b"")
    await asyncio.sleep(0.1)
    assert script.eofs == 1  # the timed-out connection was closed, not kept


async def test_a_cancelled_call_closes_its_connection(server, client):
    script, url = server
    script.answers.append(5.0)
    call = asyncio.ensure_future(client.post(f"{url}/a", content=b""))
    for _ in range(500):  # until the server holds the request
        if script.requests:
            break
        await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(100):
        if script.eofs:
            break
        await asyncio.sleep(0.01)
    assert script.eofs == 1  # the server sees the client go, as Ollama would
    assert (await client.post(f"{url}/a", content=b"")).status_code == 200
    assert script.connections == 2


async def test_an_idle_connection_the_server_closed_is_not_reused(server, client):
    script, url = server
    script.answer(OK, close=True)  # answers (delimited, keep-alive), then hangs up
    await client.post(f"{url}/a", content=b"")
    await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
    assert (await client.post(f"{url}/a", content=b"")).status_code == 200
    assert script.connections == 2


async def test_an_idle_connection_past_its_expiry_is_not_reused(server):
    script, url = server
    async with httpx.AsyncClient(transport=ScreenTransport(keepalive_expiry=0.05)) as http:
        await http.post(f"{url}/a", content=b"")
        await asyncio.sleep(0.1)
        await http.post(f"{url}/a", content=b"")
    assert script.connections == 2


async def test_concurrent_calls_use_connections_of_their_own(server, client):
    script, url = server
    script.answers.extend([0.1, 0.1])
    await asyncio.gather(*(client.post(f"{url}/a", content=b"") for _ in range(3)))
    assert script.connections == 3
    await asyncio.gather(*(client.post(f"{url}/a", content=b"") for _ in range(3)))
    assert script.connections == 3  # all three were kept and reused


async def test_other_schemes_go_to_the_fallback_transport():
    seen: list[httpx.URL] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(204)

    transport = ScreenTransport(fallback=httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=transport) as http:
        response = await http.get("https://ollama.example/api/tags")
    assert response.status_code == 204 and str(seen[0]) == "https://ollama.example/api/tags"
