"""Starting the real service under Hypercorn in a subprocess, for integration tests.

``running_server(...)`` runs ``python -m service.server --port 0`` (the same code path as
``python -m service serve``) with settings passed as environment variables, learns the port
from Hypercorn's "Running on" log line, keeps every JSON log line for assertions, and stops
the process with SIGTERM at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
_RUNNING_ON = re.compile(r"Running on (https?)://([^ ]+):(\d+)")

# Every setting the tests depend on is pinned, so the caller's environment cannot change them.
BASE_ENV: dict[str, str] = {
    "HOST": "127.0.0.1",
    "PORT": "0",
    "WORKERS": "1",
    "LOG_LEVEL": "INFO",
    "ACCESS_LOG": "true",
    "MODELS": "",
    "DEFAULT_MODEL": "sentiment-cnn-int8",
    "GUARD_MODEL": "llama-guard3:1b",
    "GUARD_TIMEOUT": "5",
    "GUARD_RETRIES": "0",
    "GUARD_RETRY_BACKOFF": "0.01",
    "GUARD_RETRY_AFTER": "7",
    "GUARD_CACHE_SIZE": "0",  # rules change per test; a cached verdict would hide that
    "GUARD_SCREEN_INPUT": "true",
    "GUARD_SCREEN_OUTPUT": "true",
    "GUARD_BLOCK_CATEGORIES": "",
    "GUARD_PULL": "false",
    "GUARD_CONCURRENCY": "32",
    "GUARD_NUM_PREDICT": "48",
    "GUARD_NUM_CTX": "16384",
    "CHAT_MODEL": "llama3.2:1b",
    "REQUEST_TIMEOUT": "30",
    "MAX_BODY_BYTES": str(1024 * 1024),
    "MAX_TEXT_CHARS": "20000",
    "MAX_BATCH": "64",
    "GRACEFUL_TIMEOUT": "30",
    "API_TOKENS": "",
    "CERTFILE": "",
    "KEYFILE": "",
}


class ServerProcess:
    """A started service process and the log lines it wrote."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.scheme = "http"
        self.port = 0
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self._lines.append(line.rstrip("\n"))
            match = _RUNNING_ON.search(line)
            if match and not self._ready.is_set():
                self.scheme, self.port = match.group(1), int(match.group(3))
                self._ready.set()
        self._ready.set()  # the process ended; wait_ready() reports it

    def wait_ready(self, timeout: float = 120.0) -> None:
        if not self._ready.wait(timeout) or not self.port:
            self.proc.kill()
            raise RuntimeError("the server did not start:\n" + "\n".join(self.lines[-40:]))

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (non-JSON lines are skipped)."""
        entries = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def logs_for(self, request_id: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs() if entry.get("request_id") == request_id]

    def wait_for_log(
        self, predicate: Any, *, count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` log entries satisfy ``predicate``; return all that do."""
        deadline = time.monotonic() + timeout
        while True:
            found = [entry for entry in self.logs() if predicate(entry)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=5)
        return code


def server_env(overrides: Mapping[str, str] | None = None, **settings: Any) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in BASE_ENV}
    env.update(BASE_ENV)
    env.update(overrides or {})
    env.update({key.upper(): str(value) for key, value in settings.items()})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_server(
    *, args: tuple[str, ...] = (), env: Mapping[str, str] | None = None, **settings: Any
) -> ServerProcess:
    """Start the service; settings as keyword arguments (``ollama_host=...``) or env."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.server", *args],
        cwd=REPO,
        env=server_env(env, **settings),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return ServerProcess(proc)


@contextlib.contextmanager
def running_server(**settings: Any) -> Iterator[ServerProcess]:
    """A ready server for the duration of the block; stopped (SIGTERM) afterwards."""
    server = start_server(**settings)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def curl(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run curl (silent, with the status line and headers in the output via -i)."""
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", str(int(timeout)), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 5,
        check=False,
    )


def h2_client(server: ServerProcess, *, timeout: float = 30, **options: Any) -> httpx.AsyncClient:
    """An httpx client speaking HTTP/2 with prior knowledge over cleartext (h2c) to ``server``
    (http1=False: no HTTP/1.1 fallback, so every answer really is HTTP/2)."""
    return httpx.AsyncClient(
        http1=False, http2=True, base_url=server.base_url, timeout=timeout, **options
    )


async def screen_user(guard: Any, text: str) -> Any:
    """The guard's verdict on ``text`` as the user's message (raises GuardError)."""
    from service.guard import Message

    return await guard.screen([Message("user", text)])


async def screen_reply(guard: Any, text: str, reply: str) -> Any:
    """The guard's verdict on ``reply`` as the assistant's answer to ``text``."""
    from service.guard import Message

    return await guard.screen([Message("user", text), Message("assistant", reply)])


class SpyRegistry:
    """A real model registry that records every predict call: the texts, the pipeline call
    it ran inside (``pipeline_call``), when it started. ``gate`` (an Event) holds a predict
    until it is set; ``fail`` makes predict raise, as a broken model would."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[dict[str, Any]] = []
        self.gate: threading.Event | None = None
        self.finished = threading.Event()
        self.fail = False

    @property
    def batches(self) -> list[list[str]]:
        return [call["texts"] for call in self.calls]

    def names(self) -> list[str]:
        return list(self.inner.names())

    def info(self, name: str) -> Any:
        return self.inner.info(name)

    def batch_group(self, name: str) -> str:
        return str(self.inner.batch_group(name))

    def predict_mixed(self, items: Any) -> Any:
        """The pipeline's forward: recorded like predict, under the first item's model."""
        items = list(items)
        self._record(items[0][0] if items else "", [text for _, text in items])
        return self._finish(lambda: self.inner.predict_mixed(items))

    def predict(self, name: str, texts: Any) -> Any:
        self._record(name, list(texts))
        return self._finish(lambda: self.inner.predict(name, texts))

    def _record(self, name: str, texts: list[str]) -> None:
        from service.core.pipeline import pipeline_call

        self.calls.append(
            {
                "name": name,
                "texts": texts,
                "pipeline": pipeline_call.get(),
                "started": time.monotonic(),
            }
        )

    def _finish(self, forward: Any) -> Any:
        if self.gate is not None:
            self.gate.wait(10)
        try:
            if self.fail:
                raise RuntimeError("the model's memory is corrupted")
            return forward()
        finally:
            self.finished.set()


def task_aged(task_id: str, state: int, age: float) -> Any:
    """An A2A task in ``state`` whose status last changed ``age`` seconds ago."""
    from a2a.types import Task, TaskStatus
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromNanoseconds(int((time.time() - age) * 1e9))
    return Task(id=task_id, context_id="c", status=TaskStatus(state=state, timestamp=stamp))


def judge_failing_past(words: int) -> Any:
    """An Ollama-double judge that answers ``safe`` for an input screen and for a reply of at
    most ``words`` words, and a non-verdict for any longer reply. Keyed on what is screened,
    not on the order screens arrive in: a streamed reply's chunk screens overlap, so the
    second chunk's screen can reach the guard before the first one's."""

    def judge(messages: list[dict[str, Any]]) -> str:
        reply = messages[-1] if messages and messages[-1].get("role") == "assistant" else None
        if reply is None or len(str(reply.get("content", "")).split()) <= words:
            return "safe"
        return "I am not sure what you mean"  # not a verdict

    return judge
