"""Scale-out: two service processes (replicas) on their own loopback ports sharing one A2A
task store, driven over the A2A JSON-RPC protocol (1.0) on HTTP/2.

The store is PostgreSQL when TEST_DATABASE_URL is set (for example
``postgresql+asyncpg://postgres@127.0.0.1:55432/gis``), and a SQLite file otherwise. Each
test works in its own A2A context id, so tasks left in a shared database by earlier runs
never count.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import ServerProcess, h2_client, running_server, start_server, task_aged
from tests.ollama_double import OllamaDouble

A2A_HEADERS = {"A2A-Version": "1.0"}
COMPLETED = "TASK_STATE_COMPLETED"
UNFINISHED = {"TASK_STATE_SUBMITTED", "TASK_STATE_WORKING"}
TASK_NOT_FOUND = -32001
REPLICA = {"models": "sentiment-cnn-int8", "guard_timeout": 30}  # one model: quick start-up


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")


@pytest.fixture
def task_store_url(tmp_path: Path) -> str:
    return os.environ.get("TEST_DATABASE_URL") or f"sqlite+aiosqlite:///{tmp_path}/tasks.db"


@pytest.fixture
def replicas(ollama_double: OllamaDouble, task_store_url: str) -> Iterator[list[ServerProcess]]:
    """Replicas A and B on the same store, started together as a deployment starts them."""
    servers = [
        start_server(ollama_host=ollama_double.url, task_store_url=task_store_url, **REPLICA)
        for _ in range(2)
    ]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


@asynccontextmanager
async def a2a_client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server, headers=A2A_HEADERS, timeout=60) as client:
        yield client


async def rpc(client: httpx.AsyncClient, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One JSON-RPC call at "/"; the result, or RpcError (errors come inside an HTTP 200)."""
    call_id = str(uuid.uuid4())
    body = {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params}
    response = await client.post("/", json=body)
    assert response.status_code == 200 and response.http_version == "HTTP/2", response.text
    answer = response.json()
    assert answer["id"] == call_id
    if "error" in answer:
        raise RpcError(answer["error"])
    return answer["result"]


def message(context_id: str, text: str) -> dict[str, Any]:
    return {
        "message": {
            "messageId": str(uuid.uuid4()),
            "contextId": context_id,
            "role": "ROLE_USER",
            "parts": [{"text": text}],
        }
    }


async def send(client: httpx.AsyncClient, context_id: str, text: str) -> dict[str, Any]:
    return (await rpc(client, "SendMessage", message(context_id, text)))["task"]


async def get_task(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    return await rpc(client, "GetTask", {"id": task_id})


async def list_tasks(client: httpx.AsyncClient, context_id: str) -> dict[str, Any]:
    return await rpc(
        client, "ListTasks", {"contextId": context_id, "pageSize": 100, "includeArtifacts": True}
    )


def result_of(task: dict[str, Any]) -> dict[str, Any]:
    """The classification a completed task carries (its artifact's data part)."""
    (artifact,) = task["artifacts"]
    (data,) = [part["data"] for part in artifact["parts"] if "data" in part]
    return data


TEXTS = [
    "One of the best films I have seen this year: moving and beautifully acted.",
    "A dull, lifeless remake with a plot that makes no sense.",
    "The soundtrack alone is worth the ticket.",
    "I walked out after twenty minutes; a waste of an evening.",
    "Warm, funny and sharply written from start to finish.",
    "Wooden acting and a script full of clichés.",
]


async def test_a_task_run_on_one_replica_is_found_on_the_other(
    replicas: list[ServerProcess], ollama_double: OllamaDouble
) -> None:
    a, b = replicas
    assert a.port != b.port and a.proc.pid != b.proc.pid
    context_id = str(uuid.uuid4())
    async with a2a_client(a) as on_a, a2a_client(b) as on_b:
        sent = await send(on_a, context_id, TEXTS[0])
        assert sent["status"]["state"] == COMPLETED
        assert result_of(sent)["results"][0]["label"] == "positive"

        # GetTask on B answers with A's task: same state, same artifact, same history.
        fetched = await get_task(on_b, sent["id"])
        assert fetched["id"] == sent["id"] and fetched["contextId"] == context_id
        assert fetched["status"]["state"] == COMPLETED
        assert result_of(fetched) == result_of(sent)
        assert fetched["history"][0]["parts"][0]["text"] == TEXTS[0]

        # A task B runs is listed on A, and both are listed on B, newest first.
        second = await send(on_b, context_id, TEXTS[1])
        assert result_of(second)["results"][0]["label"] == "negative"
        for client in (on_a, on_b):
            listed = await list_tasks(client, context_id)
            assert [task["id"] for task in listed["tasks"]] == [second["id"], sent["id"]]
            assert listed["totalSize"] == 2
            assert {task["status"]["state"] for task in listed["tasks"]} == {COMPLETED}

        # The store answers, not a cache that says yes to everything.
        with pytest.raises(RpcError) as missing:
            await get_task(on_b, str(uuid.uuid4()))
        assert missing.value.code == TASK_NOT_FOUND

    # Without the shared store a replica only knows its own tasks.
    with running_server(ollama_host=ollama_double.url, **REPLICA) as alone:
        async with a2a_client(alone) as on_alone:
            with pytest.raises(RpcError) as unknown:
                await get_task(on_alone, sent["id"])
            assert unknown.value.code == TASK_NOT_FOUND
            assert (await list_tasks(on_alone, context_id))["tasks"] == []


async def _stream_until_working(
    client: httpx.AsyncClient, context_id: str, text: str, working: asyncio.Future[str]
) -> list[dict[str, Any]]:
    """SendStreamingMessage; resolve ``working`` with the task id once the task is working,
    and keep reading until the server goes away. Returns the events seen."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendStreamingMessage",
        "params": message(context_id, text),
    }
    events: list[dict[str, Any]] = []
    try:
        async with client.stream("POST", "/", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line.removeprefix("data:"))["result"]
                events.append(event)
                status = event.get("statusUpdate", {}).get("status", {})
                if status.get("state") == "TASK_STATE_WORKING" and not working.done():
                    working.set_result(event["statusUpdate"]["taskId"])
    except httpx.TransportError:
        pass  # the replica died mid-stream
    return events


async def _eventually_state(client: httpx.AsyncClient, task_id: str, state: str) -> None:
    for _ in range(200):
        try:
            if (await get_task(client, task_id))["status"]["state"] == state:
                return
        except RpcError:
            pass  # not stored yet
        await asyncio.sleep(0.025)
    raise AssertionError(f"task {task_id} never reached {state}")


async def test_killing_a_replica_mid_stream_loses_no_completed_task(
    replicas: list[ServerProcess], ollama_double: OllamaDouble
) -> None:
    a, b = replicas
    context_id = str(uuid.uuid4())
    # The stream gets a connection of its own: httpx (httpcore) holds back the events of one
    # HTTP/2 stream while other requests on the same connection wait for their answers.
    async with a2a_client(a) as on_a, a2a_client(a) as stream_a, a2a_client(b) as on_b:
        # A stream of requests to A: these complete ...
        done = await asyncio.gather(*(send(on_a, context_id, text) for text in TEXTS))
        assert [task["status"]["state"] for task in done] == [COMPLETED] * len(TEXTS)

        # ... and these are still in the guard when A dies: a streaming request whose task
        # is stored as working, and three more requests.
        ollama_double.set_latency(5.0)
        working: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stream = asyncio.create_task(
            _stream_until_working(stream_a, context_id, "Still deciding.", working)
        )
        in_flight = [
            asyncio.create_task(send(on_a, context_id, f"Unfinished review {i}.")) for i in range(3)
        ]
        streamed_id = await asyncio.wait_for(working, 30)
        await _eventually_state(on_b, streamed_id, "TASK_STATE_WORKING")
        assert len(ollama_double.chat_requests) >= len(TEXTS) * 2  # in and out screens
        a.proc.send_signal(signal.SIGKILL)
        assert a.proc.wait(10) == -signal.SIGKILL
        events = await asyncio.wait_for(stream, 30)
        unfinished = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(outcome, httpx.TransportError) for outcome in unfinished)
        assert not any(
            event.get("statusUpdate", {}).get("status", {}).get("state") == COMPLETED
            for event in events
        )
        ollama_double.set_latency(0.0)

        # B has every task A completed, unchanged.
        for task in done:
            fetched = await get_task(on_b, task["id"])
            assert fetched["status"]["state"] == COMPLETED
            assert result_of(fetched) == result_of(task)
        listed = await list_tasks(on_b, context_id)
        states = {task["id"]: task["status"]["state"] for task in listed["tasks"]}
        assert {task["id"] for task in done} <= set(states)
        # A task A was still running stays as A last stored it; none appears completed.
        extra = {
            task_id: state
            for task_id, state in states.items()
            if task_id not in {task["id"] for task in done}
        }
        assert streamed_id in extra and set(extra.values()) <= UNFINISHED
        assert listed["totalSize"] == len(states) <= len(TEXTS) + 4

        # B keeps serving, in the same context.
        after = await send(on_b, context_id, TEXTS[4])
        assert after["status"]["state"] == COMPLETED
        assert (await list_tasks(on_b, context_id))["totalSize"] == len(states) + 1


# --- replicas starting together ----------------------------------------------------------------


def _open_store(url: str, rounds: int, barrier: Any, results: Any) -> None:
    """A replica-like process: each round, open the store the way the service does at
    start-up, at the same moment as the other process (the barrier), and report the outcome."""
    from service.a2a.store import create_task_storage

    async def open_once() -> str:
        storage = create_task_storage(url)
        try:
            barrier.wait(60)
            await storage.start()
            return "ok"
        except Exception as exc:  # reported to the test, which shows it
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        finally:
            await storage.close()

    for _ in range(rounds):
        results.put(asyncio.run(open_once()))


@asynccontextmanager
async def fresh_store(tmp_path: Path) -> AsyncIterator[str]:
    """A store URL of its own: a new PostgreSQL database (dropped afterwards) when
    TEST_DATABASE_URL is set, else a new SQLite file."""
    database = os.environ.get("TEST_DATABASE_URL")
    if not database:
        yield f"sqlite+aiosqlite:///{tmp_path}/start.db"
        return
    server = make_url(database)
    admin = await asyncpg.connect(
        host=server.host,
        port=server.port or 5432,
        user=server.username,
        password=server.password,
        database=server.database,
    )
    name = f"gis_start_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_replicas_starting_together_on_a_fresh_store_both_start(tmp_path: Path) -> None:
    # Replicas of a new deployment start at the same moment and each creates the task table
    # when it is missing; whichever loses that race must still start.
    rounds = 5
    async with fresh_store(tmp_path) as url:
        engine = create_async_engine(url)
        spawn = multiprocessing.get_context("spawn")
        barrier, results = spawn.Barrier(3), spawn.Queue()
        processes = [
            spawn.Process(target=_open_store, args=(url, rounds, barrier, results))
            for _ in range(2)
        ]
        for process in processes:
            process.start()
        outcomes: list[str] = []
        try:
            for _ in range(rounds):
                async with engine.begin() as connection:  # a fresh store for this round
                    await connection.execute(text("DROP TABLE IF EXISTS tasks"))
                await asyncio.to_thread(barrier.wait, 60)
                outcomes += [await asyncio.to_thread(results.get, True, 60) for _ in range(2)]
        finally:
            await engine.dispose()
            for process in processes:
                process.join(30)
    assert [process.exitcode for process in processes] == [0, 0]
    failures = [outcome for outcome in outcomes if outcome != "ok"]
    assert failures == [], f"{len(failures)} of {2 * rounds} start-ups failed: {failures[:2]}"


# --- a task left running by a replica that died -----------------------------------------------


async def _subscribe(client: httpx.AsyncClient, task_id: str) -> list[dict[str, Any]]:
    """SubscribeToTask; every event until the stream ends."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "SubscribeToTask", "params": {"id": task_id}}
    events: list[dict[str, Any]] = []
    async with client.stream("POST", "/", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
    return events


async def test_a_task_its_replica_left_running_ends_failed_and_its_subscriber_is_told(
    ollama_double: OllamaDouble, task_store_url: str
) -> None:
    # No task can run longer than REQUEST_TIMEOUT (+ CHAT_TIMEOUT: a chat turn) +
    # GRACEFUL_TIMEOUT (+1 s of clock skew), so a running task unchanged for longer than that
    # was left by a process that is gone.
    quick = {**REPLICA, "request_timeout": 3, "graceful_timeout": 1, "chat_timeout": 1}
    quick |= {"task_store_sweep_interval": 0.5, "guard_timeout": 2}
    context_id = str(uuid.uuid4())
    with running_server(ollama_host=ollama_double.url, task_store_url=task_store_url, **quick) as b:
        a = start_server(ollama_host=ollama_double.url, task_store_url=task_store_url, **quick)
        try:
            a.wait_ready()
            async with a2a_client(a) as stream_a, a2a_client(b) as on_b:
                ollama_double.set_latency(30.0)
                working: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                stream = asyncio.create_task(
                    _stream_until_working(stream_a, context_id, "Left behind.", working)
                )
                task_id = await asyncio.wait_for(working, 30)
                a.proc.send_signal(signal.SIGKILL)  # before its 3 s deadline could end the task
                assert a.proc.wait(10) == -signal.SIGKILL
                await asyncio.wait_for(stream, 30)
                ollama_double.set_latency(0.0)
                assert (await get_task(on_b, task_id))["status"]["state"] in UNFINISHED

                # B does not run it; its subscriber follows the store and is told the end.
                events = await asyncio.wait_for(_subscribe(on_b, task_id), 30)
                results = [event["result"] for event in events]
                assert results[0]["task"]["id"] == task_id
                last = results[-1]["statusUpdate"]["status"]
                assert last["state"] == "TASK_STATE_FAILED"
                data = [part["data"] for part in last["message"]["parts"] if "data" in part]
                assert data == [{"reason": "task-interrupted"}]

                ended = await get_task(on_b, task_id)
                assert ended["status"]["state"] == "TASK_STATE_FAILED"
        finally:
            a.stop()


async def test_the_sweep_ends_interrupted_tasks_and_deletes_expired_ones(tmp_path: Path) -> None:
    from a2a.server.context import ServerCallContext
    from a2a.types import TaskState

    from service.a2a.store import create_task_storage

    storage = create_task_storage(
        f"sqlite+aiosqlite:///{tmp_path}/sweep.db", retention=3600, stale_after=60
    )
    await storage.start()
    context = ServerCallContext()

    task = task_aged

    try:
        S = TaskState
        for saved in (
            task("old-done", S.TASK_STATE_COMPLETED, 7200),
            task("new-done", S.TASK_STATE_COMPLETED, 10),
            task("old-working", S.TASK_STATE_WORKING, 120),
            task("new-working", S.TASK_STATE_WORKING, 5),
            task("old-waiting", S.TASK_STATE_INPUT_REQUIRED, 7200),
        ):
            await storage.store.save(saved, context)
        swept = await storage.sweep()
        assert (swept.interrupted, swept.expired) == (1, 1)
        state = {}
        for task_id in ("old-done", "new-done", "old-working", "new-working", "old-waiting"):
            found = await storage.store.get(task_id, context)
            state[task_id] = None if found is None else TaskState.Name(found.status.state)
        assert state == {
            "old-done": None,
            "new-done": "TASK_STATE_COMPLETED",
            "old-working": "TASK_STATE_FAILED",
            "new-working": "TASK_STATE_WORKING",
            "old-waiting": "TASK_STATE_INPUT_REQUIRED",
        }
    finally:
        await storage.close()


async def test_the_sweep_reads_only_the_states_it_ends_a_page_at_a_time(tmp_path: Path) -> None:
    from a2a.server.context import ServerCallContext
    from a2a.types import TaskState

    from service.a2a.store import create_task_storage

    url = os.environ.get("TEST_DATABASE_URL") or f"sqlite+aiosqlite:///{tmp_path}/pages.db"
    storage = create_task_storage(url, retention=3600, stale_after=60, idle_after=3600)
    storage.sweep_page = 2
    await storage.start()
    context = ServerCallContext()
    run = uuid.uuid4().hex[:8]  # a shared database may hold other runs' tasks
    S = TaskState
    # The oldest rows are finished tasks inside the retention: a pass that read the oldest
    # rows whatever their state would see only these and never reach the ones to end.
    groups = {
        "kept": (S.TASK_STATE_COMPLETED, 600, 6),
        "stale": (S.TASK_STATE_WORKING, 120, 3),
        "expired": (S.TASK_STATE_COMPLETED, 7200, 5),
        "idle": (S.TASK_STATE_INPUT_REQUIRED, 7200, 3),
    }
    try:
        for name, (state, age, count) in groups.items():
            for i in range(count):
                await storage.store.save(task_aged(f"{run}-{name}-{i}", state, age + i), context)
        await storage.sweep()
        ended = {}
        for name, (_, _, count) in groups.items():
            for i in range(count):
                found = await storage.store.get(f"{run}-{name}-{i}", context)
                ended[f"{name}-{i}"] = None if found is None else S.Name(found.status.state)
        expected = {f"kept-{i}": "TASK_STATE_COMPLETED" for i in range(6)}
        expected |= {f"stale-{i}": "TASK_STATE_FAILED" for i in range(3)}
        expected |= {f"expired-{i}": None for i in range(5)}
        expected |= {f"idle-{i}": "TASK_STATE_CANCELED" for i in range(3)}
        assert ended == expected
    finally:
        await storage.close()
