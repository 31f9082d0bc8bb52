"""Dynamic micro-batching: concurrent predict calls for one model share one forward pass.

Each model (or base model with its adapters) has a :class:`Batcher`. Callers ``await
batcher.submit(items)`` (texts, or (model, text) pairs); a worker coroutine takes the queued
calls (up to ``max_texts`` items, waiting at most ``max_wait`` seconds for more), runs ONE
blocking forward over all their items in a worker thread, and hands each caller its own
slice. A model's forward is per-text deterministic (fixed-length rows, MoE
routing per sequence), so a text's result does not depend on the batch it ran in, up to
float rounding: the matrix products of the dense layers take other kernels for other row
counts, which moves a probability by about 1e-8.

The worker runs only while there is work: it starts on the first call after an idle spell
and ends when the queue is empty, so an idle batcher holds no task. The wait for more calls
applies from the second batch of a busy spell on: the first batch after an idle spell runs at
once, so a lone caller never pays ``max_wait``. Cancelling a waiting
caller drops only its own texts; an exception in the forward reaches every caller of that
batch; :meth:`Batcher.aclose` fails every queued or running call with :class:`BatcherClosed`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio.to_thread

T = TypeVar("T")  # what one row of a forward is: a text, or a (model, text) pair
R = TypeVar("R")

# The blocking forward: items in, one result per item out, in order.
Forward = Callable[[list[T]], Sequence[R]]
# Called after each forward with (texts in the batch, calls in the batch, forward seconds).
BatchObserver = Callable[[int, int, float], None]


class BatcherClosed(RuntimeError):
    """The batcher was shut down before this call's forward finished."""


@dataclass(eq=False)
class _Call(Generic[T, R]):
    texts: list[T]
    future: asyncio.Future[list[R]] = field(repr=False)


class Batcher(Generic[T, R]):
    """Combines concurrent calls into one forward of at most ``max_texts`` texts.

    A single call with more than ``max_texts`` texts runs alone (calls are never split).
    ``max_wait`` (seconds) bounds how long the worker waits for more calls once it holds at
    least one (not for the first batch after an idle spell); 0 means it takes only what is
    already queued.
    """

    def __init__(
        self,
        forward: Forward[T, R],
        *,
        max_texts: int = 64,
        max_wait: float = 0.002,
        observe: BatchObserver | None = None,
    ) -> None:
        if max_texts < 1:
            raise ValueError("max_texts must be at least 1")
        if max_wait < 0:
            raise ValueError("max_wait must not be negative")
        self._forward = forward
        self._max_texts = max_texts
        self._max_wait = max_wait
        self._observe = observe
        self._queue: deque[_Call[T, R]] = deque()
        self._queued_texts = 0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._running: list[_Call[T, R]] = []
        self._closed = False
        self.forwards = 0  # forward passes run so far (for tests and diagnostics)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_texts(self) -> int:
        """Texts waiting for a forward (not counting a forward already running)."""
        return self._queued_texts

    async def submit(self, texts: Sequence[T]) -> list[R]:
        """The forward's results for ``texts``, computed together with concurrent calls."""
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        loop = asyncio.get_running_loop()
        call: _Call[T, R] = _Call(list(texts), loop.create_future())
        self._queue.append(call)
        self._queued_texts += len(call.texts)
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._work(), name="batcher")
        elif self._arrived is not None:
            self._arrived.set()
        # Cancelling this await cancels the future; the worker then skips the call, or, if
        # its forward already runs, drops its slice. Other callers are unaffected.
        return await call.future

    async def aclose(self) -> None:
        """Stop the worker and fail every call that has no result yet. Idempotent."""
        self._closed = True
        worker = self._worker
        if worker is not None and not worker.done():
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # our own caller is being cancelled, not just the worker
        self._fail_all(BatcherClosed("the batcher was closed"))

    # --- worker ----------------------------------------------------------------------------
    async def _work(self) -> None:
        # The first batch after an idle spell does not wait: a lone caller (e.g. one client
        # sending one request at a time) must not pay max_wait on every call. Once calls
        # arrive while a forward runs, there is concurrency, and waiting can fill batches.
        first = True
        try:
            while self._queue:
                if not first:
                    await self._gather_more()
                first = False
                batch = self._take()
                if batch:
                    await self._run(batch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a fault in the worker itself must not strand callers
            self._fail_all(exc)
            raise
        finally:
            if self._closed:
                self._fail_all(BatcherClosed("the batcher was closed"))

    async def _gather_more(self) -> None:
        """Wait (at most max_wait) while fewer than max_texts texts are queued."""
        if self._max_wait <= 0 or self._queued_texts >= self._max_texts:
            return
        arrived = self._arrived
        assert arrived is not None
        deadline = asyncio.get_running_loop().time() + self._max_wait
        try:
            async with asyncio.timeout_at(deadline):
                while self._queued_texts < self._max_texts:
                    arrived.clear()
                    await arrived.wait()
        except TimeoutError:
            pass

    def _take(self) -> list[_Call[T, R]]:
        """Pop calls from the front, in order, while they fit within max_texts."""
        batch: list[_Call[T, R]] = []
        size = 0
        while self._queue:
            call = self._queue[0]
            if call.future.done():  # its caller was cancelled while waiting
                self._queue.popleft()
                self._queued_texts -= len(call.texts)
                continue
            if batch and size + len(call.texts) > self._max_texts:
                break
            self._queue.popleft()
            self._queued_texts -= len(call.texts)
            batch.append(call)
            size += len(call.texts)
        return batch

    async def _run(self, batch: list[_Call[T, R]]) -> None:
        texts = [text for call in batch for text in call.texts]
        self._running = batch
        started = time.perf_counter()
        try:
            # abandon_on_cancel: shutting down does not wait for a long forward to finish.
            results = await anyio.to_thread.run_sync(self._forward, texts, abandon_on_cancel=True)
            if len(results) != len(texts):
                raise RuntimeError(f"forward gave {len(results)} results for {len(texts)} texts")
        except Exception as exc:  # every caller of this batch gets the forward's error
            self._running = []
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        finally:
            self.forwards += 1
        # (On cancellation self._running stays set, so aclose() fails those calls.)
        self._running = []
        elapsed = time.perf_counter() - started
        start = 0
        for call in batch:
            end = start + len(call.texts)
            if not call.future.done():
                call.future.set_result(list(results[start:end]))
            start = end
        if self._observe is not None:
            self._observe(len(texts), len(batch), elapsed)

    def _fail_all(self, exc: BaseException) -> None:
        for call in [*self._running, *self._queue]:
            if not call.future.done():
                call.future.set_exception(exc)
        self._running = []
        self._queue.clear()
        self._queued_texts = 0
