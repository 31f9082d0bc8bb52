"""Task stores: tasks kept in SQLite outlive a restart of the real server; TASK_STORE_URL
forms; the in-memory default."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.auth.user import User
from a2a.server.context import ServerCallContext
from a2a.server.tasks import DatabaseTaskStore, InMemoryTaskStore
from a2a.types import ListTasksRequest, Message, Part, Task, TaskState, TaskStatus
from google.protobuf.json_format import MessageToDict

from service.a2a.store import BoundedInMemoryTaskStore, create_task_storage, database_url
from tests.helpers import running_server, task_aged
from tests.ollama_double import OllamaDouble

GOOD = "One of the best films I have ever seen: a moving, beautifully acted masterpiece."
V1 = {"A2A-Version": "1.0"}


def rpc(client: httpx.Client, method: str, params: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    response = client.post("/a2a/jsonrpc", json=body, headers=V1)
    assert response.http_version == "HTTP/2" and response.status_code == 200
    answer = response.json()
    assert "result" in answer, answer
    return answer["result"]


def send(client: httpx.Client, text: str, context_id: str) -> dict[str, Any]:
    message = {
        "role": "ROLE_USER",
        "messageId": uuid.uuid4().hex,
        "contextId": context_id,
        "parts": [{"text": text}],
    }
    return rpc(client, "SendMessage", {"message": message})["task"]


def h2(base_url: str) -> httpx.Client:
    return httpx.Client(http1=False, http2=True, base_url=base_url, timeout=30)


def test_sqlite_tasks_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "state" / "tasks.db"  # the folder does not exist yet
    context_id = uuid.uuid4().hex
    with OllamaDouble() as double:
        double.set_rules([("bomb", "unsafe\nS9")])
        with running_server(
            ollama_host=double.url, task_store_url=f"sqlite+aiosqlite:///{db}"
        ) as server:
            with h2(server.base_url) as client:
                completed = send(client, GOOD, context_id)
                rejected = send(client, "How to build a bomb", context_id)
            assert completed["status"]["state"] == "TASK_STATE_COMPLETED"
            assert rejected["status"]["state"] == "TASK_STATE_REJECTED"
            [ready] = server.wait_for_log(lambda e: e.get("message") == "a2a agent ready")
            assert ready["task_store"] == f"sqlite+aiosqlite:///{db}"
        assert db.is_file()

        # Restart on the same file, named as a bare path this time.
        restarted = running_server(ollama_host=double.url, task_store_url=str(db))
        with restarted as server, h2(server.base_url) as client:
            got = rpc(client, "GetTask", {"id": completed["id"]})
            assert got["status"]["state"] == "TASK_STATE_COMPLETED"
            assert got["artifacts"] == completed["artifacts"]
            assert got["history"] == completed["history"]
            got = rpc(client, "GetTask", {"id": rejected["id"]})
            assert got["status"] == rejected["status"]
            assert "S9 Indiscriminate Weapons" in got["status"]["message"]["parts"][0]["text"]
            # 0.3 and HTTP+JSON read the same store.
            body = {"jsonrpc": "2.0", "id": 2, "method": "tasks/get"}
            answer = client.post("/", json={**body, "params": {"id": completed["id"]}})
            assert answer.json()["result"]["status"]["state"] == "completed"
            response = client.get(f"/a2a/rest/tasks/{rejected['id']}", headers=V1)
            assert response.status_code == 200 and response.json()["id"] == rejected["id"]

            third = send(client, GOOD, context_id)
            listed = rpc(client, "ListTasks", {"contextId": context_id})
            assert listed["totalSize"] == 3
            assert {t["id"] for t in listed["tasks"]} == {
                completed["id"],
                rejected["id"],
                third["id"],
            }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite+aiosqlite:///var/tasks.db", "sqlite+aiosqlite:///var/tasks.db"),
        ("sqlite:////srv/tasks.db", "sqlite+aiosqlite:////srv/tasks.db"),
        (
            "postgresql://a2a:pw@127.0.0.1:5432/a2a",
            "postgresql+asyncpg://a2a:pw@127.0.0.1:5432/a2a",
        ),
        ("postgres://a2a@127.0.0.1/a2a", "postgresql+asyncpg://a2a@127.0.0.1/a2a"),
        ("postgresql+asyncpg://127.0.0.1/a2a", "postgresql+asyncpg://127.0.0.1/a2a"),
    ],
)
def test_database_url_forms(given: str, expected: str) -> None:
    assert database_url(given) == expected


def test_a_bare_path_is_a_sqlite_file(tmp_path: Path) -> None:
    assert database_url(str(tmp_path / "t.db")) == f"sqlite+aiosqlite:///{tmp_path / 't.db'}"


async def test_store_choice_and_no_password_in_its_description() -> None:
    memory = create_task_storage(None)
    assert isinstance(memory.store, InMemoryTaskStore) and memory.engine is None
    postgres = create_task_storage("postgresql://a2a:s3cret@127.0.0.1:5432/a2a")
    try:
        assert isinstance(postgres.store, DatabaseTaskStore)
        assert "s3cret" not in postgres.description
        assert postgres.description == "postgresql+asyncpg://a2a:***@127.0.0.1:5432/a2a"
    finally:
        await postgres.close()


async def test_memory_store_forgets_the_oldest_finished_tasks_first() -> None:
    store = BoundedInMemoryTaskStore(max_tasks=10)
    context = ServerCallContext()

    def task(task_id: str, state: int) -> Task:
        return Task(id=task_id, context_id="c", status=TaskStatus(state=state))

    await store.save(task("running", TaskState.TASK_STATE_WORKING), context)
    for i in range(10):
        await store.save(task(f"done-{i}", TaskState.TASK_STATE_COMPLETED), context)
    # 11 tasks > 10: down to 9, oldest finished first; the running one stays.
    listed = await store.list(ListTasksRequest(page_size=100), context)
    kept = {t.id for t in listed.tasks}
    assert kept == {"running"} | {f"done-{i}" for i in range(2, 10)}
    assert await store.get("done-0", context) is None
    # A task saved again as finished becomes forgettable in its original order.
    await store.save(task("running", TaskState.TASK_STATE_COMPLETED), context)
    for i in range(10, 12):
        await store.save(task(f"done-{i}", TaskState.TASK_STATE_COMPLETED), context)
    assert await store.get("running", context) is None
    assert await store.get("done-11", context) is not None
    assert (await store.list(ListTasksRequest(page_size=100), context)).total_size <= 10


def _big_task(task_id: str, state: int) -> Task:
    """A task of about 100 KB (its history holds one long text)."""
    return Task(
        id=task_id,
        context_id="c",
        status=TaskStatus(state=state),
        history=[Message(message_id=task_id, parts=[Part(text="x" * 100_000)])],
    )


async def test_memory_store_is_bounded_by_bytes_too() -> None:
    store = BoundedInMemoryTaskStore(max_tasks=100_000, max_bytes=1024 * 1024)
    context = ServerCallContext()
    task = _big_task

    await store.save(task("running", TaskState.TASK_STATE_WORKING), context)
    for i in range(30):
        await store.save(task(f"done-{i}", TaskState.TASK_STATE_COMPLETED), context)
        assert store.bytes <= 1024 * 1024
    listed = await store.list(ListTasksRequest(page_size=100), context)
    kept = {t.id for t in listed.tasks}
    assert "running" in kept and "done-29" in kept and "done-0" not in kept
    assert 5 <= len(kept) <= 10
    assert store.bytes == sum(t.ByteSize() for t in listed.tasks)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_waiting_conversations_end_after_the_idle_timeout(kind: str, tmp_path: Path) -> None:
    url = None if kind == "memory" else f"sqlite+aiosqlite:///{tmp_path}/idle.db"
    storage = create_task_storage(url, idle_after=60, sweep_interval=3600)
    await storage.start()
    context = ServerCallContext()

    task = task_aged

    try:
        waiting = TaskState.TASK_STATE_INPUT_REQUIRED
        await storage.store.save(task("old-wait", waiting, 120), context)
        await storage.store.save(task("new-wait", waiting, 5), context)
        await storage.store.save(task("old-done", TaskState.TASK_STATE_COMPLETED, 120), context)
        swept = await storage.sweep()
        assert swept.idle == 1
        old = await storage.store.get("old-wait", context)
        assert old is not None and old.status.state == TaskState.TASK_STATE_CANCELED
        data = [MessageToDict(p.data) for p in old.status.message.parts if p.HasField("data")]
        assert data == [{"reason": "conversation-idle", "idle_after_s": 60.0}]
        new = await storage.store.get("new-wait", context)
        assert new is not None and new.status.state == waiting
        done = await storage.store.get("old-done", context)
        assert done is not None and done.status.state == TaskState.TASK_STATE_COMPLETED
    finally:
        await storage.close()


class _Caller(User):
    """A caller by name (the store files tasks under it)."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def user_name(self) -> str:
        return self._name


def _as(name: str) -> ServerCallContext:
    return ServerCallContext(user=_Caller(name))


async def test_unfinished_tasks_have_a_quota_per_caller_and_for_all() -> None:
    store = BoundedInMemoryTaskStore(max_tasks=8)  # a caller: 2 unfinished; everyone: 4
    waiting, done = TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_COMPLETED

    def task(task_id: str, state: int) -> Task:
        return Task(id=task_id, context_id="c", status=TaskStatus(state=state))

    assert store.refusal(_as("ann")) is None
    for i in range(2):
        await store.save(task(f"ann-{i}", waiting), _as("ann"))
    refused = store.refusal(_as("ann"))
    assert refused is not None and refused.problem == "task-store-full"
    assert "for one caller (2 tasks)" in refused.message
    assert store.refusal(_as("bob")) is None  # another caller is not crowded out
    # A task that finishes makes room again; its finished copy does not count.
    await store.save(task("ann-0", done), _as("ann"))
    assert store.refusal(_as("ann")) is None
    await store.save(task("ann-2", waiting), _as("ann"))
    for name in ("bob", "cat"):
        await store.save(task(f"{name}-0", waiting), _as(name))
    # 4 unfinished in all: nobody starts another, not even a caller with none.
    everyone = store.refusal(_as("dan"))
    assert everyone is not None and "for all callers together (4 tasks)" in everyone.message
    await store.delete("bob-0", _as("bob"))
    assert store.refusal(_as("dan")) is None
    # The finished task is still there: nothing had to be forgotten.
    assert await store.get("ann-0", _as("ann")) is not None


async def test_unfinished_bytes_have_a_quota_and_finished_tasks_keep_their_room() -> None:
    store = BoundedInMemoryTaskStore(max_tasks=1000, max_bytes=1024 * 1024)
    task = _big_task
    started = 0
    while store.refusal(_as("ann")) is None:
        await store.save(task(f"ann-{started}", TaskState.TASK_STATE_WORKING), _as("ann"))
        started += 1
    assert started == 3  # a quarter of 1 MiB holds three 100 KB tasks, not a fourth
    refused = store.refusal(_as("ann"))
    assert refused is not None and "for one caller (262144 bytes)" in refused.message
    # Another caller's finished tasks come and go within the rest, the running ones stay.
    for i in range(20):
        await store.save(task(f"bob-{i}", TaskState.TASK_STATE_COMPLETED), _as("bob"))
    assert store.bytes <= 1024 * 1024
    for i in range(3):
        assert await store.get(f"ann-{i}", _as("ann")) is not None
    assert await store.get("bob-19", _as("bob")) is not None
    assert await store.get("bob-18", _as("bob")) is not None
