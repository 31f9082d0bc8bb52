"""A ceiling on open connections per server process (``MAX_CONNECTIONS``).

Hypercorn has no such setting: every accepted connection gets a ``TCPServer`` and stays open
for as long as the client keeps it. :func:`install` replaces the ``TCPServer`` that
Hypercorn's asyncio worker creates per connection with one that closes a connection at once,
before reading from it, when the process already holds ``limit`` of them; the client sees
the connection refused by a close and may retry. ``tests/test_connection_limit.py`` fails
if Hypercorn's worker stops creating its per-connection server through that name.
"""

from __future__ import annotations

import logging

import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer
from prometheus_client import Counter, Gauge

logger = logging.getLogger("service.connections")

OPEN = Gauge("http_connections_open", "Client connections open now.", multiprocess_mode="livesum")
REFUSED = Counter(
    "http_connections_refused_total",
    "Client connections closed at once because MAX_CONNECTIONS were already open.",
)


class LimitedTCPServer(TCPServer):
    """Hypercorn's per-connection server, refusing connections past ``limit``."""

    limit = 0  # 0: no ceiling (set by install())
    open = 0

    async def run(self) -> None:
        cls = LimitedTCPServer
        if cls.limit and cls.open >= cls.limit:
            REFUSED.inc()
            logger.warning("connection refused: MAX_CONNECTIONS reached", extra={"open": cls.open})
            self.writer.close()
            return
        cls.open += 1
        OPEN.inc()
        try:
            await super().run()
        finally:
            cls.open -= 1
            OPEN.dec()

    async def _read_data(self) -> None:
        await super()._read_data()
        # The client closed its side. Hypercorn would keep the connection (and its place)
        # until the keep-alive timer fires, up to KEEP_ALIVE_TIMEOUT later; stop the timer.
        await self.idle_task.stop()


def install(limit: int) -> None:
    """Serve at most ``limit`` connections at once in this process (0: no ceiling)."""
    if getattr(hypercorn_run, "TCPServer", None) not in (TCPServer, LimitedTCPServer):
        raise RuntimeError(
            "hypercorn.asyncio.run no longer creates its connections through TCPServer; "
            "MAX_CONNECTIONS cannot be enforced"
        )
    LimitedTCPServer.limit = limit
    hypercorn_run.TCPServer = LimitedTCPServer  # type: ignore[misc]  # the patch point
