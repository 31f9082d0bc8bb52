"""Hold back a streamed reply and release it only in pieces the guard has passed.

The model's pieces (Ollama's stream items, about a token each) are gathered into chunks: a
chunk ends after ``CHAT_CHUNK_TOKENS`` pieces, or, with ``CHAT_CHUNK=sentences``, at the
first sentence end before that once it holds a quarter of them (a reply of many short
sentences must not cost a screen per sentence). At each chunk boundary the reply *so far* is
screened as the assistant's turn of the conversation, while the model goes on generating the
next chunk. Chunks are released in order, each only after the screen that covers it passed:

- a screen that blocks stops the reply there: generation is cancelled, nothing of that chunk
  (or any later one) is sent, and the reply ends with ``content_filter`` and the categories;
- a screen that gets no verdict stops it too, with the guard's error (fail closed);
- a model failure mid-way ends it with the model's error; what was released had passed.

Consumers that go away (the iterator closed early) cancel generation and pending screens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from service.chat.metrics import FIRST_RELEASE, GUARD_CALLS_PER_REPLY, REPLIES, STOPPED, TOKENS
from service.chat.model import Generated
from service.chat.types import ChatDelta, ChatEnd, ChatEvent, Usage
from service.guard.admission import follow_up
from service.guard.scanner import Message, ScanResult, ScanStatus

Scan = Callable[[tuple[Message, ...]], Awaitable[ScanResult]]
_Queue = asyncio.Queue["_Chunk | _Finished | BaseException"]
_SENTENCE_ENDS = (".", "!", "?", ":", ";", "\n")


@dataclass(frozen=True)
class ChunkPolicy:
    tokens: int  # pieces per chunk at most
    mode: Literal["tokens", "sentences"] = "tokens"

    @property
    def sentence_minimum(self) -> int:
        """Pieces a chunk holds at least before a sentence end may end it."""
        return max(1, self.tokens // 4)

    def ends_chunk(self, pieces: int, piece: str) -> bool:
        if pieces >= self.tokens:
            return True
        return (
            self.mode == "sentences"
            and pieces >= self.sentence_minimum
            and piece.rstrip(" ").endswith(_SENTENCE_ENDS)
        )


@dataclass(frozen=True)
class _Chunk:
    text: str
    pieces: int
    screen: asyncio.Future[ScanResult]


@dataclass(frozen=True)
class _Finished:
    generated: Generated


class ScreenedReply:
    """The guarded reply as an async iterator of ChatDelta, then one ChatEnd."""

    def __init__(
        self,
        generation: AsyncIterator[str | Generated],
        conversation: tuple[Message, ...],
        scan: Scan | None,  # None: output screening is switched off
        policy: ChunkPolicy,
        started: float | None = None,
    ) -> None:
        self._generation = generation
        self._conversation = conversation
        self._scan = scan
        self._policy = policy
        self._started = time.perf_counter() if started is None else started
        self.guard_calls = 0

    def __aiter__(self) -> AsyncIterator[ChatEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ChatEvent]:
        queue: _Queue = asyncio.Queue()
        producer = asyncio.create_task(self._produce(queue))
        released_pieces = 0
        first = True
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, _Finished):
                    generated = item.generated
                    end = ChatEnd(
                        "length" if generated.done_reason == "length" else "stop",
                        Usage(
                            generated.prompt_tokens, generated.completion_tokens, released_pieces
                        ),
                        guard_calls=self.guard_calls,
                    )
                    self._record(end)
                    yield end
                    return
                result = await item.screen
                if result.status is ScanStatus.ERROR:
                    assert result.error is not None
                    raise result.error  # fail closed: nothing more is released
                if not result.passed:
                    end = ChatEnd(
                        "content_filter",
                        Usage(0, released_pieces + item.pieces, released_pieces),
                        categories=result.categories,
                        guard_calls=self.guard_calls,
                        screens=(result,),
                    )
                    self._record(end)
                    yield end
                    return
                released_pieces += item.pieces
                if first:
                    FIRST_RELEASE.observe(time.perf_counter() - self._started)
                    first = False
                yield ChatDelta(item.text)
        finally:
            producer.cancel()
            while not queue.empty():
                pending = queue.get_nowait()
                if isinstance(pending, _Chunk):
                    pending.screen.cancel()

    async def _produce(self, queue: _Queue) -> None:
        reply = ""
        pieces: list[str] = []
        try:
            async for piece in self._generation:
                if isinstance(piece, Generated):
                    if pieces:
                        reply = self._cut(queue, reply, pieces)
                    TOKENS.labels("generated").inc(piece.completion_tokens)
                    queue.put_nowait(_Finished(piece))
                    return
                pieces.append(piece)
                if self._policy.ends_chunk(len(pieces), piece):
                    reply = self._cut(queue, reply, pieces)
                    pieces = []
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the model failed: the consumer raises it in order
            queue.put_nowait(exc)
        finally:
            aclose = getattr(self._generation, "aclose", None)
            if aclose is not None:
                await aclose()

    def _cut(
        self,
        queue: asyncio.Queue[_Chunk | _Finished | BaseException],
        reply: str,
        pieces: list[str],
    ) -> str:
        """Close a chunk: start the screen of the reply so far, queue the chunk behind it."""
        text = "".join(pieces)
        reply += text
        if self._scan is None:
            skipped = asyncio.get_running_loop().create_future()
            skipped.set_result(ScanResult.skipped(""))
            screen: asyncio.Future[ScanResult] = skipped
        else:
            self.guard_calls += 1
            # A follow-up (service/guard/admission.py): the reply's conversation was admitted
            # at its input screen, and a full queue must not cut the reply off midway.
            token = follow_up.set(True)
            try:
                screen = asyncio.ensure_future(
                    self._scan((*self._conversation, Message("assistant", reply)))
                )
            finally:
                follow_up.reset(token)
        queue.put_nowait(_Chunk(text, len(pieces), screen))
        return reply

    def _record(self, end: ChatEnd) -> None:
        REPLIES.labels(end.finish_reason).inc()
        GUARD_CALLS_PER_REPLY.observe(end.guard_calls)
        TOKENS.labels("released").inc(end.usage.released_tokens)
        for category in end.categories:
            STOPPED.labels(category.code).inc()
