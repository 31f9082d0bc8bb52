"""The chat model on Ollama, through the official ``ollama`` AsyncClient, streaming.

``generate`` yields the reply's text as Ollama streams it, then one :class:`Generated` with
why it stopped and the token counts. Every failure is a :class:`ChatUnavailable`: Ollama
unreachable, an error status, the model missing, an answer that is not Ollama's JSON, or the
whole generation taking longer than ``CHAT_TIMEOUT``. At most ``CHAT_CONCURRENCY``
generations run at once; more wait for a slot within the same deadline. This client is
separate from the guard's: its own timeout, concurrency and connection pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import ollama

from service.chat.types import ChatMessage
from service.core.errors import ChatUnavailable
from service.guard.llama_guard import same_model

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger("service.chat")


@dataclass(frozen=True)
class Generated:
    done_reason: str  # "stop" or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int


async def cut_at_bytes(
    generation: AsyncIterator[str | Generated], max_bytes: int | None
) -> AsyncIterator[str | Generated]:
    """``generation`` ended (``length``, as at max_tokens) before its pieces pass
    ``max_bytes`` UTF-8 bytes together: a longer reply's screen would not fit the guard's
    context. None: not cut."""
    size = produced = 0
    try:
        async for piece in generation:
            if isinstance(piece, str):
                size += len(piece.encode("utf-8"))
                if max_bytes is not None and size > max_bytes:
                    yield Generated("length", 0, produced)
                    return
                produced += 1
            yield piece
    finally:
        aclose = getattr(generation, "aclose", None)  # a reply cut short stops generating
        if aclose is not None:
            await aclose()


class ChatModel:
    """Streams replies from ``CHAT_MODEL`` on Ollama."""

    def __init__(self, settings: Settings, client: ollama.AsyncClient | None = None) -> None:
        self.settings = settings
        self.model = settings.chat_model
        self._owns_client = client is None
        timeout = httpx.Timeout(settings.chat_timeout, connect=min(10.0, settings.chat_timeout))
        self._client = client or ollama.AsyncClient(host=settings.ollama_host, timeout=timeout)
        self._slots = asyncio.Semaphore(settings.chat_concurrency)
        self._keep_alive = settings.guard_keep_alive

    @property
    def enabled(self) -> bool:
        return bool(self.model)

    async def generate(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float | None
    ) -> AsyncIterator[str | Generated]:
        """The reply, piece by piece, then a Generated. Raises ChatUnavailable."""
        if not self.enabled:
            raise ChatUnavailable("disabled", "CHAT_MODEL is empty", retry_after=None)
        options: dict[str, Any] = {"num_predict": max_tokens}
        if temperature is not None:
            options["temperature"] = temperature
        try:
            async with asyncio.timeout(self.settings.chat_timeout):
                async with self._slots:
                    stream = await self._client.chat(
                        model=self.model,
                        messages=[{"role": m.role, "content": m.content} for m in messages],
                        stream=True,
                        options=options,
                        keep_alive=self._keep_alive,
                    )
                    try:
                        async for part in stream:
                            text = part.message.content or ""
                            if text:
                                yield text
                            if part.done:
                                yield Generated(
                                    done_reason=(
                                        "length" if part.done_reason == "length" else "stop"
                                    ),
                                    prompt_tokens=part.prompt_eval_count or 0,
                                    completion_tokens=part.eval_count or 0,
                                )
                                return
                    finally:
                        # The client's stream holds its HTTP response until closed; left to
                        # the garbage collector, the connection would stay taken till then.
                        close = getattr(stream, "aclose", None)
                        if close is not None:
                            await close()
            raise ChatUnavailable("malformed", "the stream ended without a final message")
        except ChatUnavailable:
            raise
        except TimeoutError:
            raise ChatUnavailable(
                "timeout", f"no complete answer within {self.settings.chat_timeout:g} s"
            ) from None
        except Exception as exc:  # every failure of the model becomes a ChatUnavailable
            raise _unavailable(exc, self.model) from exc

    async def readiness(self) -> dict[str, Any]:
        """Whether the chat model is on Ollama (or chat is switched off)."""
        if not self.enabled:
            return {"ok": True, "enabled": False, "warning": "chat is off (CHAT_MODEL is empty)"}
        try:
            listing = await asyncio.wait_for(self._client.list(), self.settings.guard_timeout)
        except Exception as exc:  # reported, not raised
            return {"ok": False, "enabled": True, "model": self.model, "detail": str(exc)}
        names = [entry.model for entry in listing.models if entry.model]
        present = any(same_model(self.model, name) for name in names)
        state: dict[str, Any] = {"ok": present, "enabled": True, "model": self.model}
        if not present:
            state["detail"] = f"chat model {self.model} is not on Ollama; ollama pull {self.model}"
        return state

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.close()  # type: ignore[no-untyped-call]  # ollama leaves it bare


def _unavailable(exc: BaseException, model: str) -> ChatUnavailable:
    if isinstance(exc, ollama.ResponseError):
        if exc.status_code == 404:
            return ChatUnavailable("model_missing", f"chat model {model} not found: {exc.error}")
        return ChatUnavailable("http", f"Ollama answered HTTP {exc.status_code}: {exc.error}")
    if isinstance(exc, ConnectionError | httpx.TransportError | OSError):
        return ChatUnavailable("connection", f"{type(exc).__name__}: {exc or 'connection lost'}")
    if isinstance(exc, ValueError):
        return ChatUnavailable("malformed", f"Ollama sent a body that is not its JSON: {exc}")
    log.error("unexpected chat model failure", exc_info=exc)
    return ChatUnavailable("malformed", f"unexpected {type(exc).__name__}: {exc}")
