"""Where A2A tasks live: in memory (default) or in SQL through a2a-sdk's DatabaseTaskStore.

``TASK_STORE_URL`` takes a SQLAlchemy URL (``sqlite+aiosqlite:///tasks.db``,
``postgresql+asyncpg://user:pass@host/db``), a plain ``sqlite:///`` or ``postgresql://``
URL (the async driver is filled in), or a bare file path (a SQLite file). With a SQL store,
tasks outlive a restart and are shared by every worker process. The in-memory store keeps at
most TASK_STORE_MAX_TASKS tasks, forgetting the oldest finished ones first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from a2a.auth.user import User
from a2a.server.context import ServerCallContext
from a2a.server.tasks import DatabaseTaskStore, InMemoryTaskStore, TaskStore
from a2a.types import Task
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.a2a.sdk_compat import TERMINAL_TASK_STATES, resolve_user_scope

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
    """The SDK's in-memory store with a ceiling: past ``max_tasks`` it forgets the oldest
    finished tasks (down to 90 % of the ceiling, so the scan is rare). Running tasks are
    never forgotten."""

    def __init__(self, max_tasks: int) -> None:
        super().__init__(owner_resolver=resolve_user_scope)
        self.max_tasks = max_tasks
        self._finished: OrderedDict[tuple[str, str], bool] = OrderedDict()  # oldest first

    async def save(self, task: Task, context: ServerCallContext) -> None:
        await super().save(task, context)
        self._finished[(resolve_user_scope(context), task.id)] = (
            task.status.state in TERMINAL_TASK_STATES
        )
        if len(self._finished) > self.max_tasks:
            await self._forget_oldest(len(self._finished) - int(self.max_tasks * 0.9))

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        await super().delete(task_id, context)
        self._finished.pop((resolve_user_scope(context), task_id), None)

    async def _forget_oldest(self, count: int) -> None:
        victims = [key for key, finished in self._finished.items() if finished][:count]
        for owner, task_id in victims:
            await self.delete(task_id, ServerCallContext(user=_Owner(owner)))
        if victims:
            logger.info("forgot finished tasks", extra={"tasks": len(victims)})


@dataclass
class TaskStorage:
    store: TaskStore
    engine: AsyncEngine | None  # None for the in-memory store
    description: str  # for the log: never includes a password

    async def start(self) -> None:
        if not isinstance(self.store, DatabaseTaskStore):
            return
        for attempt in range(3):
            try:
                await self.store.initialize()  # creates the table when missing
                return
            except DBAPIError:
                # Replicas starting together race to create the table; the loser sees
                # "already exists" (or a locked SQLite file). The table check runs again on
                # the next try and finds it.
                if attempt == 2:
                    raise
                logger.info("task store not ready; trying again", exc_info=True)
                await asyncio.sleep(0.1 * (attempt + 1))

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()


def database_url(value: str) -> str:
    """A SQLAlchemy async URL for TASK_STORE_URL (see the module docstring)."""
    if "://" not in value:
        path = Path(value).expanduser().resolve()
        return f"sqlite+aiosqlite:///{path}"
    scheme, rest = value.split("://", 1)
    return f"{_ASYNC_DRIVERS.get(scheme, scheme)}://{rest}"


def create_task_storage(task_store_url: str | None, max_tasks: int = 100_000) -> TaskStorage:
    """The task store TASK_STORE_URL asks for (in memory, bounded, when it is empty)."""
    if not task_store_url:
        return TaskStorage(BoundedInMemoryTaskStore(max_tasks), None, "memory")
    url = make_url(database_url(task_store_url))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, pool_pre_ping=url.get_backend_name() != "sqlite")
    return TaskStorage(DatabaseTaskStore(engine), engine, url.render_as_string(hide_password=True))
