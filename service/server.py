"""Serving the app with Hypercorn: HTTP/2 (h2c prior knowledge and ``Upgrade: h2c``),
HTTP/1.1, and HTTPS with ALPN h2 when CERTFILE and KEYFILE are set.

Processes. ``WORKERS=1`` serves in this process. ``WORKERS=N`` starts N worker processes
(spawned, each loading the app) and supervises them; every worker binds its *own* listening
socket to the same address with ``SO_REUSEPORT``, so the kernel spreads new connections
across the workers by a hash of the connection's addresses. (Hypercorn's built-in
multi-worker mode shares one listening socket between the processes; under HTTP/2's few
long-lived connections one worker then tends to take them all.) Each HTTP/2 connection
stays on the worker that accepted it, so spread load needs several connections.

Shutdown. SIGTERM or SIGINT stops accepting (the listening socket closes, new connections
are refused), lets in-flight requests finish for up to GRACEFUL_TIMEOUT seconds, closes
idle connections, runs the app's shutdown, and exits 0. The supervisor forwards the signal
to every worker and exits 0 when they all did.

Start: ``python -m service serve [--host H] [--port P] [--workers N]`` (or
``python -m service.server`` with the same options).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from hypercorn.utils import LifespanFailureError
from prometheus_client.multiprocess import mark_process_dead
from pydantic import ValidationError

from service import connection_limit, h2_patch
from service.cli_help import plain, settings_epilog
from service.config import Settings, invalid_settings
from service.logging import configure_logging
from service.web.metrics import MULTIPROCESS_DIR

logger = logging.getLogger("service.server")

h2_patch.install()  # Hypercorn's HTTP/2 early-answer fix, see service/h2_patch.py


class StartupFailed(Exception):
    """The app could not be built (models, settings); the cause is logged."""


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound (not yet listening) TCP socket; Hypercorn calls listen() on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def build_config(settings: Settings, fd: int | None = None) -> Config:
    """Hypercorn's configuration from the settings; ``fd`` is an already bound socket."""
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"fd://{fd}"] if fd is not None else [f"{host}:{settings.port}"]
    config.workers = 1  # processes are managed by serve(), see the module docstring
    if settings.certfile and settings.keyfile:
        config.certfile = settings.certfile
        config.keyfile = settings.keyfile
        config.alpn_protocols = ["h2", "http/1.1"]
    config.keep_alive_max_requests = settings.keep_alive_max_requests
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.graceful_timeout = settings.graceful_timeout
    config.h2_max_concurrent_streams = settings.h2_max_concurrent_streams
    # Hypercorn's own body cap applies to WSGI only; the app enforces MAX_BODY_BYTES itself.
    config.accesslog = None  # the request middleware writes a JSON access line
    config.errorlog = logging.getLogger("hypercorn.error")  # through the JSON root handler
    config.loglevel = settings.log_level
    config.include_server_header = False
    return config


async def serve_async(settings: Settings, sock: socket.socket) -> None:
    """Serve the app on ``sock`` until SIGTERM/SIGINT, then shut down gracefully."""
    from service.app import create_app  # imports torch; keep `--help` fast

    try:
        app = create_app(settings)
    except Exception as exc:
        logger.error("startup failed: %s: %s", type(exc).__name__, exc)
        raise StartupFailed from exc
    connection_limit.install(settings.max_connections)
    config = build_config(settings, fd=sock.detach())  # Hypercorn owns the descriptor now
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(signum: int) -> None:
        if not stop.is_set():
            logger.info(
                "shutting down: no new connections, finishing in-flight requests",
                extra={"signal": signal.Signals(signum).name},
            )
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    # Starlette types the ASGI callable with its own Protocol and Hypercorn with another.
    serve_app: Any = app
    await hypercorn_serve(serve_app, config, shutdown_trigger=stop.wait, mode="asgi")


def _serve_one(settings: Settings, *, reuse_port: bool = False) -> int:
    try:
        sock = bind_socket(settings.host, settings.port, reuse_port=reuse_port)
    except OSError as exc:
        logger.error(
            "cannot bind", extra={"host": settings.host, "port": settings.port, "error": str(exc)}
        )
        return 1
    try:
        asyncio.run(serve_async(settings, sock))
    except (LifespanFailureError, StartupFailed):
        logger.error("the application failed to start; exiting")  # cause logged above
        return 1
    except Exception:
        logger.exception("server failed")
        return 1
    logger.info("stopped cleanly")
    return 0


def _worker_main(settings_data: dict[str, Any], port: int, index: int) -> None:
    """Entry of a spawned worker process."""
    settings = Settings(**{**settings_data, "port": port})
    configure_logging(settings.log_level).addFilter(_WorkerTag(index))
    sys.exit(_serve_one(settings, reuse_port=True))


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _supervise(settings: Settings) -> int:
    """Run ``settings.workers`` worker processes, each with its own SO_REUSEPORT socket."""
    port = settings.port
    reservation: socket.socket | None = None
    if port == 0:
        # Pick the port once for all workers. The reservation is bound but never listens,
        # so the kernel hands it no connections; it only keeps the port ours.
        reservation = bind_socket(settings.host, 0, reuse_port=True)
        port = reservation.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    # /metrics answers for every worker, not the one that took the scrape: the workers write
    # their values to files there (prometheus-client's multiprocess mode; the spawned
    # workers read the variable before they import prometheus_client).
    own_metrics_dir: Path | None = None
    if not os.environ.get(MULTIPROCESS_DIR):
        own_metrics_dir = Path(tempfile.mkdtemp(prefix="gis-metrics-"))
        os.environ[MULTIPROCESS_DIR] = str(own_metrics_dir)
    data = settings.model_dump()
    shared_store: Path | None = None
    if not settings.task_store_url:
        # Each worker would keep its own in-memory tasks, and a GetTask or a cancel that
        # lands on another worker than the task's would not find it. The workers share a
        # SQLite file instead, for as long as this supervisor runs.
        shared_store = Path(tempfile.mkdtemp(prefix="gis-tasks-"))
        data["task_store_url"] = f"sqlite+aiosqlite:///{shared_store / 'tasks.db'}"
        logger.info(
            "several workers and no TASK_STORE_URL: the workers share their A2A tasks in a "
            "SQLite file for as long as the service runs (set TASK_STORE_URL to keep them)",
            extra={"task_store": str(shared_store / "tasks.db")},
        )
    workers = [
        ctx.Process(target=_worker_main, args=(data, port, i), name=f"worker-{i}", daemon=False)
        for i in range(settings.workers)
    ]
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.start()
    logger.info(
        "supervising workers",
        extra={"workers": settings.workers, "port": port, "pids": [w.pid for w in workers]},
    )
    exit_code = 0
    running = list(workers)
    while running:
        for sentinel in wait([worker.sentinel for worker in running]):
            worker = next(w for w in running if w.sentinel == sentinel)
            worker.join()
            running.remove(worker)
            if worker.pid is not None:
                mark_process_dead(worker.pid)  # its live gauges no longer count
            if worker.exitcode != 0:
                exit_code = exit_code or (worker.exitcode or 1)
                if not stopping:
                    logger.error(
                        "worker exited unexpectedly; stopping the others",
                        extra={"worker": worker.name, "exitcode": worker.exitcode},
                    )
                    forward(signal.SIGTERM, None)
    if reservation is not None:
        reservation.close()
    if shared_store is not None:
        shutil.rmtree(shared_store, ignore_errors=True)
    if own_metrics_dir is not None:
        del os.environ[MULTIPROCESS_DIR]
        shutil.rmtree(own_metrics_dir, ignore_errors=True)
    return exit_code


def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; the process exit code (0 after a graceful shutdown)."""
    configure_logging(settings.log_level)
    if settings.workers == 1:
        return _serve_one(settings)
    return _supervise(settings)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``serve``; each overrides its environment variable. The help ends with
    every other setting and its default."""
    parser.epilog = settings_epilog()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the list's lines
    parser.add_argument("--host", help="bind address (HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port, 0 for any free one (PORT, default 8080)")
    parser.add_argument("--workers", type=int, help="worker processes (WORKERS, default 1)")
    parser.add_argument("--certfile", help="TLS certificate (CERTFILE): serve HTTPS with h2")
    parser.add_argument("--keyfile", help="TLS private key (KEYFILE)")
    parser.add_argument("--log-level", dest="log_level", help="LOG_LEVEL (default INFO)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    names = ("host", "port", "workers", "certfile", "keyfile", "log_level")
    overrides = {
        name: getattr(args, name) for name in names if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def run_serve(args: argparse.Namespace) -> int:
    """``serve`` subcommand: settings from the environment, overridden by the options. An
    invalid setting is reported in a line per variable (exit 2), not as a traceback."""
    try:
        settings = settings_from_args(args)
    except ValidationError as error:
        print(invalid_settings(error), file=sys.stderr)
        return 2
    return serve(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.server",
        description=plain(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
