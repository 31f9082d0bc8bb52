"""HTTP/2: a request the service answers before reading its body never harms the connection.

When the service answers early (405 for ``PUT /v1/classify``, 404, 413), the client's DATA
frames keep arriving for a stream Hypercorn has already finished. Unpatched Hypercorn 0.17
and 0.18 raise ``KeyError`` on them (``H2Protocol._handle_events``), cancel every other
request on the connection and leave the connection's task hung for good, so SIGTERM never
finishes. ``service/h2_patch.py`` fixes that; ``service/server.py`` installs it at import.

The service runs under Hypercorn in a subprocess (tests/helpers.py). The client is h2 over
a plain socket, so the test decides every frame; the late DATA frames are written past the
client's own h2 state machine, as a client's frames already in flight are, whatever it has
heard meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import httpx
import pytest
from hyperframe.frame import DataFrame

from service import h2_patch
from tests.helpers import REPO, ServerProcess, h2_client, running_server, server_env
from tests.ollama_double import OllamaDouble

MAX_BODY = 16 * 1024
GRACE = 3.0  # GRACEFUL_TIMEOUT of the shutdown test
# Slow enough that the siblings are still in flight when the early answer goes out.
SCREEN_LATENCY = 0.4
TIMEOUT = 10.0  # every wait is bounded: without the patch the tests fail, never hang
GOOD = "A warm, funny and beautifully acted film that I would happily see again."

pytestmark = pytest.mark.usefixtures("fresh_double")


# --- a raw HTTP/2 client ------------------------------------------------------------------------


@dataclass
class Exchange:
    """One stream as the client saw it."""

    status: int | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False  # END_STREAM received: the response is complete
    reset: int | None = None  # error code of a RST_STREAM received
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Any:
        return json.loads(self.body)


class H2Client:
    """h2 over an asyncio socket, prior knowledge (h2c). A reader task handles every frame
    the server sends; requests, bodies and stray frames are written when the test says."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.exchanges: dict[int, Exchange] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.error: Exception | None = None
        self.eof = asyncio.Event()
        self._changed = asyncio.Event()  # any frame arrived (window updates, pings, ...)
        self._pings: dict[bytes, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int, *, receive_window: int = 2**24) -> H2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: receive_window})
        if receive_window > 65535:
            client.conn.increment_flow_control_window(receive_window - 65535)
        client.flush()
        client._task = asyncio.create_task(client._read())
        return client

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        while True:
            try:
                data = await self.reader.read(65536)
            except OSError:
                data = b""
            if not data:
                self.eof.set()
                for exchange in self.exchanges.values():
                    exchange.done.set()
                self._changed.set()
                return
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self.error = exc  # the server broke the protocol: a failure, stop here
                self.writer.close()
                continue  # the next read sees the end of the connection
            for event in events:
                self._on(event)
            self.flush()
            self._changed.set()

    def _on(self, event: h2.events.Event) -> None:
        exchange = self.exchanges.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and exchange is not None:
            exchange.status = int(dict(event.headers)[":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if exchange is not None:
                exchange.body.extend(event.data)
        elif isinstance(event, h2.events.StreamEnded) and exchange is not None:
            exchange.ended = True
            exchange.done.set()
        elif isinstance(event, h2.events.StreamReset) and exchange is not None:
            exchange.reset = event.error_code
            exchange.done.set()
        elif isinstance(event, h2.events.PingAckReceived):
            self._pings.get(event.ping_data, asyncio.Event()).set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    # --- requests -------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        end: bool = True,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> int:
        """Send a request's HEADERS; ``end=False`` leaves the body to come."""
        stream_id = self.conn.get_next_available_stream_id()
        self.exchanges[stream_id] = Exchange()
        fields = [(":method", method), (":path", path), (":scheme", "http")]
        fields += [(":authority", "127.0.0.1"), *headers]
        self.conn.send_headers(stream_id, fields, end_stream=end)
        self.flush()
        return stream_id

    def get(self, path: str) -> int:
        return self.request("GET", path)

    async def classify(self, text: str = GOOD) -> int:
        body = json.dumps({"text": text}).encode()
        stream_id = self.request("POST", "/v1/classify", end=False, headers=_json_headers(body))
        await self.upload(stream_id, body, end=True)
        return stream_id

    async def upload(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send ``data`` on a stream the ordinary way, waiting for flow-control credit."""
        while data:
            window = min(self.conn.local_flow_control_window(stream_id), len(data))
            chunk = min(window, self.conn.max_outbound_frame_size)
            if chunk <= 0:
                await self._wait_for_frames()
                continue
            self.conn.send_data(stream_id, data[:chunk])
            data = data[chunk:]
            self.flush()
        if end:
            self.conn.end_stream(stream_id)
            self.flush()
        await self.writer.drain()

    async def send_late(self, stream_id: int, total: int, *, frame: int = 16384) -> None:
        """``total`` bytes of DATA on ``stream_id``, whatever the client has heard, within the
        connection's flow-control window: a server that does not credit them back stalls
        this loop, and the test fails."""
        sent = 0
        while sent < total:
            size = min(frame, total - sent)
            if self.conn.outbound_flow_control_window < size:
                await self._wait_for_frames()
                continue
            self.conn.outbound_flow_control_window -= size
            self.writer.write(DataFrame(stream_id, data=b"x" * size).serialize())
            sent += size
            await self.writer.drain()

    async def _wait_for_frames(self) -> None:
        self._changed.clear()
        if self.eof.is_set():
            raise ConnectionError("the server closed the connection")
        await asyncio.wait_for(self._changed.wait(), TIMEOUT)

    async def answer(self, stream_id: int) -> Exchange:
        """The stream once its response is complete or reset (or as it is after TIMEOUT)."""
        exchange = self.exchanges[stream_id]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(exchange.done.wait(), TIMEOUT)
        return exchange

    async def reset_of(self, stream_id: int) -> int | None:
        """The RST_STREAM code the server sent for ``stream_id`` (None: none came)."""
        deadline = time.monotonic() + TIMEOUT
        exchange = self.exchanges[stream_id]
        while exchange.reset is None and time.monotonic() < deadline and not self.eof.is_set():
            with contextlib.suppress(TimeoutError):
                await self._wait_for_frames()
        return exchange.reset

    async def ping(self) -> bool:
        """A PING round trip: the connection is alive and its frames are being read."""
        payload = time.monotonic_ns().to_bytes(8, "big")
        acked = self._pings[payload] = asyncio.Event()
        self.conn.ping(payload)
        self.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(acked.wait(), TIMEOUT)
        return acked.is_set()


def _json_headers(body: bytes) -> tuple[tuple[str, str], ...]:
    return (("content-type", "application/json"), ("content-length", str(len(body))))


@contextlib.asynccontextmanager
async def connected(server: ServerProcess, **options: Any) -> AsyncIterator[H2Client]:
    client = await H2Client.connect(server.port, **options)
    try:
        yield client
    finally:
        await client.close()


# --- the service ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(
        ollama_host=double.url, models="sentiment-cnn-int8", max_body_bytes=MAX_BODY
    ) as running:
        yield running


@dataclass(frozen=True)
class EarlyAnswer:
    """A request the service answers before it has read the body (``first`` bytes of it)."""

    method: str
    path: str
    status: int
    first: int = 64  # body bytes sent before the answer
    declared: int | None = None  # Content-Length announced, if any
    headers: tuple[tuple[str, str], ...] = ()


EARLY_ANSWERS = {
    "405-put-classify": EarlyAnswer("PUT", "/v1/classify", 405),
    "404-unknown-route": EarlyAnswer("POST", "/no/such/route", 404),
    "413-declared-length": EarlyAnswer("POST", "/v1/classify", 413, declared=10 * MAX_BODY),
    # No Content-Length: the limit is found while the body streams in.
    "413-streamed-past-limit": EarlyAnswer("POST", "/v1/classify", 413, first=MAX_BODY + 4096),
}


async def open_early(client: H2Client, case: EarlyAnswer) -> int:
    """Start ``case``'s request and send its first bytes; the stream stays open."""
    headers = (("content-type", "application/json"), *case.headers)
    if case.declared is not None:
        headers += (("content-length", str(case.declared)),)
    stream_id = client.request(case.method, case.path, end=False, headers=headers)
    await client.upload(stream_id, b'{"text": "' + b"y" * (case.first - 10))
    return stream_id


def assert_healthy(exchange: Exchange, kind: str) -> None:
    assert exchange.ended and exchange.reset is None, (exchange.status, exchange.reset)
    assert exchange.status == 200, bytes(exchange.body)
    if kind == "healthz":
        assert exchange.json() == {"status": "ok"}
    else:
        assert exchange.json()["results"][0]["label"] in {"positive", "negative"}


# --- siblings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", EARLY_ANSWERS.values(), ids=EARLY_ANSWERS.keys())
async def test_late_body_of_an_early_answer_spares_the_siblings(
    server: ServerProcess, double: OllamaDouble, case: EarlyAnswer
) -> None:
    double.set_latency(SCREEN_LATENCY)
    async with connected(server) as client:
        siblings = {await client.classify(): "classify" for _ in range(10)}
        siblings |= {client.get("/healthz"): "healthz" for _ in range(10)}
        early = await open_early(client, case)

        answer = await client.answer(early)
        assert answer.status == case.status and answer.ended, (answer.status, answer.ended)
        still_running = [s for s, kind in siblings.items() if not client.exchanges[s].ended]
        assert still_running, "the siblings should still have been in flight"
        # The body goes on after the answer: 48 KiB of DATA for a stream already answered.
        await client.send_late(early, 3 * 16384)

        for stream_id, kind in siblings.items():
            assert_healthy(await client.answer(stream_id), kind)
        # The rest of an ordinary body is taken (credited, dropped), not refused: clients that
        # mishandle RST_STREAM(NO_ERROR) (curl 7.88, httpx) still see the answer.
        assert client.exchanges[early].reset is None

        # The connection stays usable: new requests, and a PING round trip.
        after = {client.get("/healthz"): "healthz", await client.classify(): "classify"}
        for stream_id, kind in after.items():
            assert_healthy(await client.answer(stream_id), kind)
        assert await client.ping()
        assert client.goaway is None and not client.eof.is_set()


async def test_an_a2a_rest_refusal_waits_for_the_body_and_spares_the_siblings(
    server: ServerProcess, double: OllamaDouble
) -> None:
    # The A2A HTTP+JSON routes read the whole body before they answer (they check it is
    # UTF-8 JSON first), so an unknown task's 404 comes after the body, never early.
    double.set_latency(SCREEN_LATENCY)
    async with connected(server) as client:
        siblings = {await client.classify(): "classify" for _ in range(5)}
        case = EarlyAnswer(
            "POST", "/a2a/rest/tasks/nope:cancel", 404, headers=(("a2a-version", "1.0"),)
        )
        stream_id = await open_early(client, case)
        await asyncio.sleep(0.3)
        assert client.exchanges[stream_id].status is None  # still reading the body
        await client.upload(stream_id, b'"}', end=True)
        answer = await client.answer(stream_id)
        assert answer.status == 404 and answer.ended and answer.reset is None
        for sibling, kind in siblings.items():
            assert_healthy(await client.answer(sibling), kind)


async def test_body_queued_before_the_answer_does_not_deadlock_the_connection(
    server: ServerProcess, double: OllamaDouble
) -> None:
    # 40 small DATA frames land before the app has even looked at the request: Hypercorn
    # queues them for an app that answers 405 without reading them (its queue holds 10).
    double.set_latency(SCREEN_LATENCY)
    async with connected(server) as client:
        siblings = {await client.classify(): "classify" for _ in range(5)}
        early = client.request("PUT", "/v1/classify", end=False)
        for _ in range(40):
            client.conn.send_data(early, b"z" * 512)
        client.flush()
        answer = await client.answer(early)
        assert answer.status == 405 and answer.ended
        siblings |= {client.get("/healthz"): "healthz" for _ in range(5)}
        for stream_id, kind in siblings.items():
            assert_healthy(await client.answer(stream_id), kind)
        assert await client.ping()


async def test_late_data_is_credited_to_the_connection_window(server: ServerProcess) -> None:
    # Late DATA counts against the connection's flow-control window (64 KiB, which Hypercorn
    # never enlarges). Four early answers with 48 KiB each would exhaust it three times over;
    # uncredited, every later upload on the connection would stall.
    async with connected(server) as client:
        for _ in range(4):
            early = await open_early(client, EARLY_ANSWERS["405-put-classify"])
            assert (await client.answer(early)).status == 405
            await client.send_late(early, 3 * 16384)
        # 8 uploads of 8 KiB: the whole window again.
        text = "A long, slow and wonderful film. " * 240
        uploads = [await client.classify(text[:8000]) for _ in range(8)]
        for stream_id in uploads:
            assert_healthy(await client.answer(stream_id), "classify")


async def test_an_endless_upload_after_the_answer_is_reset(server: ServerProcess) -> None:
    # Past LATE_BODY_LIMIT the server stops taking the body of a stream it has answered:
    # RST_STREAM(NO_ERROR), which RFC 9113 section 8.1 allows after a complete response.
    async with connected(server) as client:
        sibling = client.get("/healthz")
        early = await open_early(client, EARLY_ANSWERS["413-streamed-past-limit"])
        assert (await client.answer(early)).status == 413
        await client.send_late(early, h2_patch.LATE_BODY_LIMIT + 64 * 1024)
        assert await client.reset_of(early) == h2.errors.ErrorCodes.NO_ERROR
        assert_healthy(await client.answer(sibling), "healthz")
        assert_healthy(await client.answer(await client.classify()), "classify")
        assert await client.ping()


async def test_httpx_requests_in_flight_survive_an_early_answer(
    server: ServerProcess, double: OllamaDouble
) -> None:
    # The report's setup: one httpx client (one HTTP/2 connection), 20 requests in flight,
    # and a PUT whose body is still streaming when the 405 comes back.
    double.set_latency(SCREEN_LATENCY)
    limits = httpx.Limits(max_connections=1)

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(12):
            await asyncio.sleep(0.05)
            yield b"w" * 4096

    async with h2_client(server, timeout=TIMEOUT, limits=limits) as client:

        async def sibling(i: int) -> httpx.Response:
            rid = {"x-request-id": f"early-httpx-{i}"}
            if i % 2:
                return await client.get("/healthz", headers=rid)
            return await client.post("/v1/classify", json={"text": GOOD}, headers=rid)

        siblings = [asyncio.create_task(sibling(i)) for i in range(20)]
        await asyncio.sleep(0.1)  # all twenty are open on the connection
        put = client.put(
            "/v1/classify",
            content=slow_body(),
            headers={"content-type": "application/json", "x-request-id": "early-httpx-put"},
        )
        early, *answers = await asyncio.gather(put, *siblings, return_exceptions=True)
        after = client.get("/healthz", headers={"x-request-id": "early-httpx-after"})
        answers += await asyncio.gather(after, return_exceptions=True)

    failed = [a for a in answers if not isinstance(a, httpx.Response) or a.status_code != 200]
    assert not failed, failed
    # httpcore reads the response only once it has sent the whole body; the server takes the
    # rest of the body, so the early answer arrives too.
    assert isinstance(early, httpx.Response) and early.status_code == 405, early
    lines = server.wait_for_log(
        lambda e: (
            e.get("message") == "request"
            and str(e.get("request_id", "")).startswith("early-httpx-")
        ),
        count=22,
    )
    assert {line["request_id"]: line["status"] for line in lines}["early-httpx-put"] == 405
    assert len({line["client"] for line in lines}) == 1  # all on one connection


# --- shutdown ---------------------------------------------------------------------------------

# Starts the service with an injected bug: the HTTP/2 protocol raises on a request for /boom,
# the way an unknown defect would (the patch must not depend on knowing it).
FAULTY_SERVER = """
import runpy
from hypercorn.protocol.h2 import H2Protocol
create_stream = H2Protocol._create_stream
async def _create_stream(self, request):
    if (b":path", b"/boom") in request.headers:
        raise RuntimeError("an injected bug in the HTTP/2 protocol")
    await create_stream(self, request)
H2Protocol._create_stream = _create_stream
runpy.run_module("service.server", run_name="__main__", alter_sys=True)
"""


def start_faulty_server(script: Path, **settings: Any) -> ServerProcess:
    script.write_text(FAULTY_SERVER)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=REPO,
        env=server_env(**settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return ServerProcess(proc)


async def test_sigterm_exits_within_the_graceful_timeout_whatever_the_connections_do(
    ollama_double: OllamaDouble, tmp_path: Path
) -> None:
    server = start_faulty_server(
        tmp_path / "faulty_server.py",
        ollama_host=ollama_double.url,
        models="sentiment-cnn-int8",
        max_body_bytes=MAX_BODY,
        graceful_timeout=GRACE,
    )
    clients: list[H2Client] = []
    plain: list[socket.socket] = []
    try:
        server.wait_ready()

        async def client(**options: Any) -> H2Client:
            clients.append(await H2Client.connect(server.port, **options))
            return clients[-1]

        # 1. Answered early, then the body went on (the report's broken connection).
        abused = await client()
        early = await open_early(abused, EARLY_ANSWERS["405-put-classify"])
        assert (await abused.answer(early)).status == 405
        await abused.send_late(early, 3 * 16384)
        # 2. Idle after a request.
        idle = await client()
        assert (await idle.answer(idle.get("/healthz"))).status == 200
        # 3. A request stuck in the pipeline past the graceful timeout (the guard is slow).
        ollama_double.set_latency(2 * GRACE)
        busy = await client()
        await busy.classify()
        # 4. An upload that stopped half-way.
        stalled = await client()
        half = stalled.request("POST", "/v1/classify", end=False, headers=_json_headers(b"x" * 900))
        await stalled.upload(half, b'{"text": "half')
        # 5. A client that reads nothing: the response waits on a flow-control window of 0.
        deaf = await client(receive_window=0)
        deaf.get("/openapi.json")
        # 6. A connection whose protocol handler failed with requests in flight.
        crashed = await client()
        for _ in range(5):
            await crashed.classify()
        await asyncio.sleep(0.2)
        crashed.get("/boom")
        # 7. A TCP connection that never sent a byte, and HTTP/1.1 stuck in a request body.
        plain.append(socket.create_connection(("127.0.0.1", server.port)))
        http1 = socket.create_connection(("127.0.0.1", server.port))
        http1.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n{")
        plain.append(http1)

        # Whatever failed inside, the crashed connection is closed, not left in CLOSE-WAIT.
        await asyncio.wait_for(crashed.eof.wait(), TIMEOUT)
        assert await abused.ping() and await idle.ping()
        await asyncio.sleep(0.5)  # everything in flight

        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(_wait, server.proc, GRACE + 10)
        elapsed = time.monotonic() - started
        assert code == 0, f"exit code {code} after {elapsed:.1f} s"
        assert elapsed < GRACE + 2.0, f"SIGTERM took {elapsed:.1f} s (GRACEFUL_TIMEOUT={GRACE})"
        assert "stopped cleanly" in [entry.get("message") for entry in server.logs()]
    finally:
        for h2c in clients:
            await h2c.close()
        for sock in plain:
            sock.close()
        server.stop(signal.SIGKILL)


def _wait(proc: subprocess.Popen[str], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


# --- the patch itself -------------------------------------------------------------------------


def test_the_service_installs_the_patch() -> None:
    # service/server.py is what `python -m service serve` runs; it must install the patch.
    probe = "import service.server, service.h2_patch as p; raise SystemExit(not p.is_installed())"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=server_env(), capture_output=True, check=False
    )
    assert result.returncode == 0, (
        "importing service.server failed, or did not install service.h2_patch: add "
        "`from service import h2_patch; h2_patch.install()` to service/server.py\n"
        + result.stderr.decode()[-2000:]
    )


def test_hypercorn_internals_are_what_the_patch_expects() -> None:
    # Fails when an upgrade changes what the patch touches: re-check the patch then (and drop
    # it if the upstream fix is released).
    assert h2_patch.problems() == []


def test_install_is_idempotent() -> None:
    h2_patch.install()
    patched = {name: h2_patch._method(name) for name in h2_patch.EXPECTED_METHODS}
    h2_patch.install()
    assert h2_patch.is_installed()
    assert {name: h2_patch._method(name) for name in h2_patch.EXPECTED_METHODS} == patched
    for name in h2_patch._patches():  # wrapped exactly once
        wrapper = h2_patch._method(name)
        assert getattr(wrapper, h2_patch._MARK, False), name
        assert not getattr(wrapper.__wrapped__, h2_patch._MARK, False), name


def test_install_refuses_internals_it_does_not_know(monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercorn.protocol.h2 import H2Protocol

    async def changed(self: Any, stream_id: int, reason: str) -> None:
        return None

    monkeypatch.setattr(H2Protocol, "_close_stream", changed)
    monkeypatch.setattr(h2_patch, "_installed_version", lambda: "0.19.0")
    before = {name: h2_patch._method(name) for name in h2_patch.EXPECTED_METHODS}
    with pytest.raises(h2_patch.HypercornPatchError) as refused:
        h2_patch.install()
    message = str(refused.value)
    assert "hypercorn 0.19.0 is installed; the patch was written for >=0.17,<0.19" in message
    assert "H2Protocol._close_stream('stream_id', 'reason') no longer takes" in message
    assert {name: h2_patch._method(name) for name in h2_patch.EXPECTED_METHODS} == before
    assert not h2_patch.is_installed()


async def test_no_idle_timer_is_started_on_a_connection_shutting_down() -> None:
    from hypercorn.asyncio.worker_context import AsyncioSingleTask

    h2_patch.install()

    class Refusing:  # an asyncio.TaskGroup after abort, as TCPServer's task group is then
        def create_task(self, coroutine: Any) -> None:
            raise RuntimeError("TaskGroup <TaskGroup cancelling> is shutting down")

    class Group:
        _task_group = Refusing()

    timers: list[Any] = []

    async def idle_timeout() -> None:
        return None

    def action() -> Any:
        timers.append(idle_timeout())
        return timers[-1]

    await AsyncioSingleTask().restart(Group(), action)  # no RuntimeError
    assert len(timers) == 1 and timers[0].cr_frame is None  # closed: no "never awaited"


async def test_request_bodies_reach_the_app_through_an_asyncio_queue() -> None:
    # _drop_unread_body empties the queue behind HTTPStream.app_put: it must be asyncio's.
    from hypercorn.asyncio.task_group import TaskGroup
    from hypercorn.config import Config

    async def app(*_args: Any) -> None:
        return None

    config = Config()
    async with TaskGroup(asyncio.get_running_loop()) as group:
        put = await group.spawn_app(app, config, {"type": "http"}, _discard)
    queue = getattr(put, "__self__", None)
    assert isinstance(queue, asyncio.Queue) and queue.maxsize == config.max_app_queue_size


async def _discard(_message: Any) -> None:
    return None


def test_h2_states_the_patch_relies_on() -> None:
    # The server ends its side first: h2 says HALF_CLOSED_LOCAL, the patch resets with
    # NO_ERROR, and h2 then credits the connection window for DATA that still arrives.
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    fields = [(":method", "PUT"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
    client.send_headers(1, fields)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "405")], end_stream=True)
    assert server.streams[1].state_machine.state == h2.stream.StreamState.HALF_CLOSED_LOCAL
    server.reset_stream(1, h2.errors.ErrorCodes.NO_ERROR)
    server.data_to_send()  # the client has not read the reset yet: its DATA is in flight
    for _ in range(3):
        client.send_data(1, b"d" * 14000)
    events = server.receive_data(client.data_to_send())
    assert not any(isinstance(e, h2.events.DataReceived) for e in events)
    answered = client.receive_data(server.data_to_send())
    credited = [e for e in answered if isinstance(e, h2.events.WindowUpdated) and not e.stream_id]
    assert credited, answered
    resets = [e.error_code for e in answered if isinstance(e, h2.events.StreamReset)]
    assert resets == [h2.errors.ErrorCodes.STREAM_CLOSED], answered
