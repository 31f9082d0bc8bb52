"""Where A2A tasks live: in memory (default) or in SQL through a2a-sdk's DatabaseTaskStore.

``TASK_STORE_URL`` takes a SQLAlchemy URL (``sqlite+aiosqlite:///tasks.db``,
``postgresql+asyncpg://user:pass@host/db``), a plain ``sqlite:///`` or ``postgresql://``
URL (the async driver is filled in), or a bare file path (a SQLite file). With a SQL store,
tasks outlive a restart and are shared by every worker process. The in-memory store keeps at
most TASK_STORE_MAX_TASKS tasks, forgetting the oldest finished ones first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from a2a.auth.user import User
from a2a.server.context import ServerCallContext
from a2a.server.tasks import (
    DatabasePushNotificationConfigStore,
    DatabaseTaskStore,
    InMemoryTaskStore,
    PushNotificationConfigStore,
    TaskStore,
)
from a2a.types import Message, Part, Role, Task, TaskState, TaskStatus
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.a2a.parts import data_part, failure_parts, now, text_part
from service.a2a.sdk_compat import (
    RUNNING_STATES,
    TERMINAL_TASK_STATES,
    delete_push_configs,
    delete_rows,
    resolve_user_scope,
    rows_updated_before,
)
from service.core.errors import TaskInterrupted, TaskStoreFull

logger = logging.getLogger("service.a2a.store")

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


class _Owner(User):
    """The owner a stored task was filed under, as a user (to address it again)."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def is_authenticated(self) -> bool:
        return bool(self._name)

    @property
    def user_name(self) -> str:
        return self._name


class BoundedInMemoryTaskStore(InMemoryTaskStore):
    """The SDK's in-memory store with two ceilings, a task count and the tasks' serialised
    bytes: past either it forgets the oldest finished tasks (down to 90 % of the ceiling, so
    the scan is rare). Unfinished tasks (running, or a conversation waiting for input) are
    never forgotten, so they have a quota instead: one owner's may take at most a quarter of
    either ceiling, all owners' together half (:meth:`refusal`, asked before a task starts).
    Finished tasks then always have room, and one caller cannot crowd out the others."""

    OWNER_SHARE = 0.25
    UNFINISHED_SHARE = 0.5

    def __init__(self, max_tasks: int, max_bytes: int = 256 * 1024 * 1024) -> None:
        super().__init__(owner_resolver=resolve_user_scope)
        self.max_tasks = max_tasks
        self.max_bytes = max_bytes
        # (owner, task id) -> (finished, serialised bytes), oldest first.
        self._kept: OrderedDict[tuple[str, str], tuple[bool, int]] = OrderedDict()
        self.bytes = 0
        # Unfinished tasks: owner -> [count, bytes], and all owners' together.
        self._unfinished: dict[str, list[int]] = {}
        self._all_unfinished = [0, 0]
        # The push configs of the tasks, forgotten with them (push notifications on).
        self.push_configs: PushNotificationConfigStore | None = None

    async def save(self, task: Task, context: ServerCallContext) -> None:
        await super().save(task, context)
        key = (resolve_user_scope(context), task.id)
        self._count_out(key)
        size = task.ByteSize()
        finished = task.status.state in TERMINAL_TASK_STATES
        # An update keeps the task's place: it is forgotten in the order it was created.
        self._kept[key] = (finished, size)
        self.bytes += size
        if not finished:
            self._add_unfinished(key[0], 1, size)
        if len(self._kept) > self.max_tasks or self.bytes > self.max_bytes:
            await self._forget_oldest()

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        await super().delete(task_id, context)
        key = (resolve_user_scope(context), task_id)
        self._count_out(key)
        self._kept.pop(key, None)
        if self.push_configs is not None and await self.push_configs.get_info(task_id, context):
            await self.push_configs.delete_info(task_id, context)

    def refusal(self, context: ServerCallContext) -> TaskStoreFull | None:
        """Why a new task of this caller may not start (None: it may)."""
        owner = resolve_user_scope(context)
        mine = self._unfinished.get(owner, [0, 0])
        quotas: tuple[tuple[list[int], float, str], ...] = (
            (mine, self.OWNER_SHARE, "for one caller"),
            (self._all_unfinished, self.UNFINISHED_SHARE, "for all callers together"),
        )
        for (count, size), share, whose in quotas:
            if count + 1 > self.max_tasks * share:
                tasks = int(self.max_tasks * share)
                return TaskStoreFull(whose, f"{tasks} task{'s' if tasks != 1 else ''}")
            if size >= self.max_bytes * share:
                return TaskStoreFull(whose, f"{int(self.max_bytes * share)} bytes")
        return None

    def _count_out(self, key: tuple[str, str]) -> None:
        """Take a stored task's old entry out of the totals (before it is saved again)."""
        finished, size = self._kept.get(key, (True, 0))
        self.bytes -= size
        if key in self._kept and not finished:
            self._add_unfinished(key[0], -1, -size)

    def _add_unfinished(self, owner: str, count: int, size: int) -> None:
        mine = self._unfinished.setdefault(owner, [0, 0])
        mine[0] += count
        mine[1] += size
        self._all_unfinished[0] += count
        self._all_unfinished[1] += size
        if not mine[0]:
            del self._unfinished[owner]

    def unfinished(self) -> list[tuple[str, str]]:
        """(owner, task id) of every task not in a terminal state."""
        return [key for key, (finished, _) in self._kept.items() if not finished]

    async def _forget_oldest(self) -> None:
        count_goal, bytes_goal = int(self.max_tasks * 0.9), int(self.max_bytes * 0.9)
        victims = []
        count, total = len(self._kept), self.bytes
        for key, (finished, size) in self._kept.items():
            if count <= count_goal and total <= bytes_goal:
                break
            if finished:
                victims.append(key)
                count, total = count - 1, total - size
        for owner, task_id in victims:
            await self.delete(task_id, ServerCallContext(user=_Owner(owner)))
        if victims:
            logger.info(
                "forgot finished tasks", extra={"tasks": len(victims), "bytes_kept": self.bytes}
            )


@dataclass
class Sweep:
    interrupted: int  # running tasks ended failed: nothing can still be running them
    expired: int  # finished tasks deleted after the retention period
    idle: int = 0  # conversations ended after waiting too long for the caller's next turn


@dataclass
class TaskStorage:
    """The task store and its upkeep. A SQL store is swept at start and every
    ``sweep_interval`` seconds: finished tasks older than ``retention`` are deleted, and a
    task still submitted or working that has not changed for ``stale_after`` seconds (longer
    than any task can run) is ended failed, "interrupted": its process stopped before it
    finished. Both stores: a conversation waiting for the caller's next message
    (input-required) for longer than ``idle_after`` seconds is ended canceled, so waiting
    conversations cannot pile up (``idle_after`` 0: they wait forever)."""

    store: TaskStore
    engine: AsyncEngine | None  # None for the in-memory store
    description: str  # for the log: never includes a password
    retention: float = 0.0  # seconds; 0 keeps finished tasks forever
    stale_after: float = 60.0
    sweep_interval: float = 60.0
    idle_after: float = 0.0
    # Push notifications on: the tasks' push configs (in the same database), and who hears
    # of a task the upkeep ended (interrupted, idle).
    push_configs: PushNotificationConfigStore | None = None
    on_end: Callable[[Task], None] | None = None
    sweep_page: int = 1000  # rows read from a SQL store at a time
    _sweeper: asyncio.Task[None] | None = None

    def attach_push_configs(self, configs: PushNotificationConfigStore) -> None:
        """Keep ``configs`` with the tasks: created with the tables, deleted with the tasks."""
        self.push_configs = configs
        if isinstance(self.store, BoundedInMemoryTaskStore):
            self.store.push_configs = configs

    async def start(self) -> None:
        if not isinstance(self.store, DatabaseTaskStore):
            if self.idle_after:
                self._sweeper = asyncio.create_task(self._sweep_forever())
            return
        for attempt in range(3):
            try:
                await self.store.initialize()  # creates the table when missing
                if isinstance(self.push_configs, DatabasePushNotificationConfigStore):
                    await self.push_configs.initialize()
                break
            except DBAPIError:
                # Replicas starting together race to create the table; the loser sees
                # "already exists" (or a locked SQLite file). The table check runs again on
                # the next try and finds it.
                if attempt == 2:
                    raise
                logger.info("task store not ready; trying again", exc_info=True)
                await asyncio.sleep(0.1 * (attempt + 1))
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def sweep(self) -> Sweep:
        """One pass of upkeep (see the class docstring)."""
        store = self.store
        idle = await self._end_idle_conversations()
        if not isinstance(store, DatabaseTaskStore):
            return Sweep(0, 0, idle)
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        interrupted = 0
        stale = now - dt.timedelta(seconds=self.stale_after)
        async for rows in rows_updated_before(store, stale, RUNNING_STATES, self.sweep_page):
            for row in rows:
                context = ServerCallContext(user=_Owner(row.owner))
                task = await store.get(row.id, context)
                if task is not None and task.status.state in RUNNING_STATES:
                    await interrupt(store, task, context)
                    self._ended(task)
                    interrupted += 1
        expired = 0
        if self.retention:
            cutoff = now - dt.timedelta(seconds=self.retention)
            async for rows in rows_updated_before(
                store, cutoff, TERMINAL_TASK_STATES, self.sweep_page
            ):
                finished = [row.id for row in rows]
                expired += await delete_rows(store, finished)
                if isinstance(self.push_configs, DatabasePushNotificationConfigStore):
                    await delete_push_configs(self.push_configs, finished)
        if interrupted or expired or idle:
            logger.info(
                "task store swept",
                extra={"interrupted": interrupted, "expired": expired, "idle": idle},
            )
        return Sweep(interrupted, expired, idle)

    async def _end_idle_conversations(self) -> int:
        if not self.idle_after:
            return 0
        store = self.store
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.idle_after)
        if isinstance(store, DatabaseTaskStore):
            waiting = [
                (row.owner, row.id)
                async for rows in rows_updated_before(
                    store,
                    cutoff.replace(tzinfo=None),
                    (TaskState.TASK_STATE_INPUT_REQUIRED,),
                    self.sweep_page,
                )
                for row in rows
            ]
        elif isinstance(store, BoundedInMemoryTaskStore):
            waiting = store.unfinished()
        else:
            return 0
        ended = 0
        for owner, task_id in waiting:
            context = ServerCallContext(user=_Owner(owner))
            task = await store.get(task_id, context)
            if (
                task is not None
                and task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
                and task.status.HasField("timestamp")
                and task.status.timestamp.ToDatetime(tzinfo=dt.UTC) < cutoff
            ):
                await end_idle(store, task, context, self.idle_after)
                self._ended(task)
                ended += 1
        return ended

    def _ended(self, task: Task) -> None:
        if self.on_end is not None:
            self.on_end(task)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except Exception:  # the next pass tries again
                logger.exception("sweeping the task store failed")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.engine is not None:
            await self.engine.dispose()


async def _end(
    store: TaskStore,
    task: Task,
    context: ServerCallContext,
    state: TaskState,
    parts: list[Part],
) -> None:
    """Store ``task`` in the terminal ``state``, its status message made of ``parts``."""
    task.status.CopyFrom(
        TaskStatus(
            state=state,
            timestamp=now(),
            message=Message(
                role=Role.ROLE_AGENT,
                message_id=str(uuid.uuid4()),
                task_id=task.id,
                context_id=task.context_id,
                parts=parts,
            ),
        )
    )
    await store.save(task, context)


async def end_idle(
    store: TaskStore, task: Task, context: ServerCallContext, seconds: float
) -> None:
    """End a conversation that waited too long for its caller: canceled, with the reason."""
    parts = [
        text_part(f"ended: no message from the caller for {seconds:g} s"),
        data_part({"reason": "conversation-idle", "idle_after_s": seconds}),
    ]
    await _end(store, task, context, TaskState.TASK_STATE_CANCELED, parts)
    logger.info("conversation ended idle", extra={"task_id": task.id})


async def interrupt(store: TaskStore, task: Task, context: ServerCallContext) -> Task:
    """End a task its process left running: failed, with the reason."""
    parts = failure_parts(TaskInterrupted())
    await _end(store, task, context, TaskState.TASK_STATE_FAILED, parts)
    logger.warning("task interrupted", extra={"task_id": task.id})
    return task


def database_url(value: str) -> str:
    """A SQLAlchemy async URL for TASK_STORE_URL (see the module docstring)."""
    if "://" not in value:
        path = Path(value).expanduser().resolve()
        return f"sqlite+aiosqlite:///{path}"
    scheme, rest = value.split("://", 1)
    return f"{_ASYNC_DRIVERS.get(scheme, scheme)}://{rest}"


def create_task_storage(
    task_store_url: str | None,
    max_tasks: int = 100_000,
    max_bytes: int = 256 * 1024 * 1024,
    *,
    retention: float = 0.0,
    stale_after: float = 60.0,
    sweep_interval: float = 60.0,
    idle_after: float = 0.0,
) -> TaskStorage:
    """The task store TASK_STORE_URL asks for (in memory, bounded, when it is empty), with
    the SQL store's upkeep (see TaskStorage)."""
    if not task_store_url:
        memory = BoundedInMemoryTaskStore(max_tasks, max_bytes)
        return TaskStorage(
            memory, None, "memory", sweep_interval=sweep_interval, idle_after=idle_after
        )
    url = make_url(database_url(task_store_url))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, pool_pre_ping=url.get_backend_name() != "sqlite")
    description = url.render_as_string(hide_password=True)
    return TaskStorage(
        DatabaseTaskStore(engine),
        engine,
        description,
        retention=retention,
        stale_after=stale_after,
        sweep_interval=sweep_interval,
        idle_after=idle_after,
    )
