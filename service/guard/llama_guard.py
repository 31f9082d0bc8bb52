"""Llama Guard 3 on Ollama, called through the official ``ollama`` AsyncClient: one
implementation of the :class:`~service.guard.scanner.Scanner` interface.

``scan`` returns a :class:`ScanResult`; when no verdict can be had its status is ``error``
and its decision ``block`` (fail closed). ``screen`` is the same judgement raising
:class:`GuardError` instead. There is no path that lets a conversation through without an
answer from the guard model.

- The caller screens input as ``[user: text]``, output as ``[user: text, assistant: reply]``.
- Calls use ``/api/chat`` with temperature 0, a small ``num_predict`` and ``keep_alive``,
  over a lean HTTP/1.1 transport under the ollama client (:mod:`service.guard.transport`).
- Each attempt is bounded by ``GUARD_TIMEOUT``. Connection-type failures (refused, DNS,
  dropped connection, timeout, HTTP 5xx) are retried ``GUARD_RETRIES`` times with exponential
  backoff from ``GUARD_RETRY_BACKOFF``. A 4xx (404 means the guard model is missing), a
  malformed body, and an answer that cannot be parsed are not retried; neither is an unsafe
  verdict, which is an answer, not a failure.
- At most ``GUARD_CONCURRENCY`` calls are in flight to Ollama and ``GUARD_QUEUE`` more wait;
  past that, and past one caller's ``GUARD_CALLER_SHARE`` of them, a screen is refused at
  once (``overloaded``, see :mod:`service.guard.admission`). Concurrent identical screens
  share one call, which is cancelled when every caller waiting for it has gone away, and
  successful verdicts are cached (LRU, ``GUARD_CACHE_SIZE`` entries, ``GUARD_CACHE_TTL``
  seconds).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import httpx
import ollama

from service.guard.admission import Admission, caller, follow_up
from service.guard.budget import conversation_bytes_limit, guard_bytes
from service.guard.cache import VerdictCache, conversation_key
from service.guard.metrics import (
    GUARD_ABANDONED,
    GUARD_CALLS,
    GUARD_CATEGORIES,
    GUARD_ERRORS,
    GUARD_LATENCY,
    GUARD_RETRIES,
    cache_hit_counter,
    screen_counter,
)
from service.guard.scanner import GuardError, Message, ScanResult
from service.guard.taxonomy import HAZARDS
from service.guard.template import neutralise
from service.guard.transport import ScreenTransport
from service.guard.verdict import parse_verdict

if TYPE_CHECKING:  # service.config imports the taxonomy from this package
    from service.config import Settings

log = logging.getLogger("service.guard")

_ROLES = ("user", "assistant")
_MAX_BACKOFF = 10.0  # seconds; one retry never waits longer than this


class LlamaGuard:
    """Screens conversations with the guard model; see the module docstring for the rules."""

    def __init__(self, settings: Settings, client: ollama.AsyncClient | None = None) -> None:
        self.settings = settings
        self.model = settings.guard_model
        self._owns_client = client is None
        # Each screen attempt is bounded by asyncio.wait_for(GUARD_TIMEOUT); the client's own
        # read timeout only has to stop a stalled model pull.
        timeout = httpx.Timeout(max(60.0, settings.guard_timeout), connect=settings.guard_timeout)
        self._client = client or ollama.AsyncClient(host=settings.ollama_host, timeout=timeout)
        # Screens (one whole answer each, on every request's path) over the lean transport,
        # unless the environment sends Ollama's traffic through a proxy (httpx's transport
        # honours HTTP_PROXY; the lean one connects directly); readiness and pulls (a pull
        # streams its progress) over httpx's own.
        self._screens = client or self._client
        if client is None and not proxied(settings.ollama_host):
            self._screens = ollama.AsyncClient(
                host=settings.ollama_host,
                timeout=timeout,
                transport=ScreenTransport(max_idle=settings.guard_concurrency),
            )
        self._semaphore = asyncio.Semaphore(settings.guard_concurrency)
        self._cache = VerdictCache(settings.guard_cache_size, settings.guard_cache_ttl)
        self._per_caller = bool(settings.api_tokens)  # verdicts kept per caller (_key)
        self._inflight: dict[str, asyncio.Future[ScanResult]] = {}
        self._waiters: dict[asyncio.Future[ScanResult], int] = {}  # callers awaiting a call
        self._admission = Admission(
            settings.guard_concurrency, settings.guard_queue, settings.guard_caller_share
        )
        self._block_categories = tuple(settings.guard_block_categories)
        # num_ctx on every call: Ollama cuts a prompt longer than the context it runs the model
        # with, and a screen must see all of the conversation (service/guard/budget.py).
        self._options = {
            "temperature": 0,
            "num_predict": settings.guard_num_predict,
            "num_ctx": settings.guard_num_ctx,
        }
        self._keep_alive = _keep_alive(settings.guard_keep_alive)
        for stage in ("input", "output"):
            if not getattr(settings, f"guard_screen_{stage}"):
                log.warning(
                    "guard %s screening is OFF (GUARD_SCREEN_%s=false): %s is not checked",
                    stage,
                    stage.upper(),
                    "user text" if stage == "input" else "model output",
                )

    async def __aenter__(self) -> LlamaGuard:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- screening ------------------------------------------------------------------------

    async def scan(self, conversation: Sequence[Message]) -> ScanResult:
        """Judge a conversation (the Scanner interface): a guard failure is a result with
        status error and decision block, not an exception. Raises ValueError when the
        conversation itself is invalid (empty, or a role other than user/assistant)."""
        try:
            return await self.screen(conversation)
        except GuardError as error:
            return ScanResult.failed(error, self.model)

    async def screen(self, messages: Sequence[Message]) -> ScanResult:
        """Judge a conversation. Raises GuardError when no verdict can be had (fail closed),
        ValueError when the conversation itself is invalid (empty, or a role other than
        user/assistant). The last turn's role says which stage this is."""
        conversation = _validated(messages)
        stage = "output" if conversation[-1].role == "assistant" else "input"
        return await self._screen(conversation, stage)

    def cached(self, messages: Sequence[Message]) -> ScanResult | None:
        """The cached verdict for a conversation, counted as a cache hit like a scan that
        finds it; None when it needs a scan. Synchronous: a caller with many conversations
        scans only the ones not known. Raises ValueError like scan for an invalid one."""
        return self.cached_all([messages])[0]

    def cached_all(self, conversations: Sequence[Sequence[Message]]) -> list[ScanResult | None]:
        """:meth:`cached` of each conversation, in order, with the hits counted once per
        outcome rather than once per hit (a 32-text request looks up 64 verdicts). Raises
        ValueError, counting nothing, when any conversation is invalid."""
        found: list[ScanResult | None] = []
        # (stage, the stored verdict's id) -> [that verdict, hits]: by identity, as hashing a
        # verdict would hash every field.
        tally: dict[tuple[str, int], list[Any]] = {}
        for messages in conversations:
            started = time.perf_counter()
            conversation = _validated(messages)
            hit = self._cache.get(self._key(conversation))
            if hit is None:
                found.append(None)
                continue
            stage = "output" if conversation[-1].role == "assistant" else "input"
            entry = tally.get((stage, id(hit)))
            if entry is None:
                tally[stage, id(hit)] = [hit, 1]
            else:
                entry[1] += 1
            found.append(hit.as_cached(_ms_since(started)))
        if tally:
            cache_hit_counter("cache").inc(sum(hits for _, hits in tally.values()))
            for (stage, _), (hit, hits) in tally.items():
                self._count(hit, stage, hits)
        return found

    def _key(self, conversation: tuple[Message, ...]) -> str:
        """The conversation's key for the cache and for sharing an in-flight call. With
        API_TOKENS, callers are told apart, and a verdict (or a call) one caller caused must
        not show another that its text was sent (a cached verdict answers at once): each
        caller's verdicts are its own. Without tokens anyone may call, and all share them."""
        scope = caller.get() if self._per_caller else ""
        return conversation_key(self.model, conversation, scope)

    def _cache_hit(self, key: str, stage: str, started: float) -> ScanResult | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        cache_hit_counter("cache").inc()
        return self._count(hit.as_cached(_ms_since(started)), stage)

    async def _screen(self, conversation: tuple[Message, ...], stage: str) -> ScanResult:
        started = time.perf_counter()
        key = self._key(conversation)
        hit = self._cache_hit(key, stage, started)
        if hit is not None:
            return hit

        call = self._inflight.get(key)
        joined = call is not None
        if call is None:
            self._check_fits(conversation, stage)
            who, following = caller.get(), follow_up.get()
            refusal = self._admission.enter(who, following)
            if refusal is not None:  # refused at once, not left to time out in a queue
                GUARD_CALLS.labels(stage, "error").inc()
                GUARD_ERRORS.labels("overloaded").inc()
                raise GuardError(
                    "overloaded", refusal.reason, retry_after=self.settings.guard_retry_after
                )
            call = asyncio.ensure_future(self._call(conversation, key, stage))
            self._inflight[key] = call
            self._waiters[call] = 0
            call.add_done_callback(lambda done: self._call_done(key, done, who, following))
        else:
            cache_hit_counter("inflight").inc()
        self._waiters[call] += 1
        try:
            # shield: one caller going away must not cancel a call others still wait on;
            # the last one to go cancels it (below), so abandoned work stops.
            verdict = await asyncio.shield(call)
        except GuardError as error:
            GUARD_CALLS.labels(stage, "error").inc()
            GUARD_ERRORS.labels(error.kind).inc()
            raise
        finally:
            if call in self._waiters:
                self._waiters[call] -= 1
                if self._waiters[call] == 0 and not call.done():
                    call.cancel()  # nobody waits for this verdict any more
                    GUARD_ABANDONED.inc()
                    # Forgotten at once: the cancelled call ends a loop pass later, and a
                    # screen of the same conversation arriving meanwhile must start its own
                    # call, not join this one and be handed its cancellation.
                    if self._inflight.get(key) is call:
                        del self._inflight[key]
        if joined:
            verdict = verdict.as_cached(_ms_since(started))
        return self._count(verdict, stage)

    def _check_fits(self, conversation: tuple[Message, ...], stage: str) -> None:
        """Raise GuardError ``too_long`` (fail closed) for a conversation that might not fit
        the guard's context: Ollama would cut it and the guard judge only part of it."""
        num_ctx, num_predict = self.settings.guard_num_ctx, self.settings.guard_num_predict
        room = conversation_bytes_limit(num_ctx, num_predict, len(conversation))
        size = guard_bytes([message.content for message in conversation], room)
        if size > room:
            needed = num_ctx - num_predict - room + size
            GUARD_CALLS.labels(stage, "error").inc()
            GUARD_ERRORS.labels("too_long").inc()
            raise GuardError(
                "too_long",
                f"the conversation may need {needed} prompt tokens; GUARD_NUM_CTX "
                f"{num_ctx} leaves {num_ctx - num_predict} after the verdict",
                retry_after=self.settings.guard_retry_after,
            )

    def _call_done(
        self, key: str, call: asyncio.Future[ScanResult], who: str, following: bool
    ) -> None:
        if self._inflight.get(key) is call:
            del self._inflight[key]
        self._waiters.pop(call, None)
        self._admission.leave(who, following)
        if not call.cancelled():
            call.exception()  # mark retrieved: errors reach the callers through shield()

    async def _call(self, conversation: tuple[Message, ...], key: str, stage: str) -> ScanResult:
        """One screen against Ollama, with bounded retries; caches a successful verdict."""
        started = time.perf_counter()
        attempts = 0
        try:
            while True:
                attempts += 1
                try:
                    # asyncio.timeout, not wait_for, which on Python 3.11 runs the call in a
                    # task of its own: the slot is given back one loop pass sooner.
                    async with self._semaphore, asyncio.timeout(self.settings.guard_timeout):
                        response = await self._chat(conversation)
                    break
                except Exception as exc:  # every failure becomes a GuardError
                    error, retryable = classify(exc, self.model, self.settings.guard_timeout)
                    error.attempts = attempts
                    if not retryable or attempts > self.settings.guard_retries:
                        raise error from exc
                    backoff = self.settings.guard_retry_backoff * 2 ** (attempts - 1)
                    delay = min(backoff, _MAX_BACKOFF)
                    GUARD_RETRIES.labels(error.kind).inc()
                    log.warning(
                        "guard call failed (%s: %s); retry %d of %d in %.2fs",
                        error.kind,
                        error.detail,
                        attempts,
                        self.settings.guard_retries,
                        delay,
                    )
                    await asyncio.sleep(delay)
            answer = response.message.content or ""
            try:
                if response.done_reason == "length":
                    # Cut at num_predict: a list of codes may have lost the one that blocks.
                    raise GuardError(
                        "unparseable",
                        f"the verdict was cut at GUARD_NUM_PREDICT="
                        f"{self.settings.guard_num_predict} tokens: {answer!r}",
                    )
                verdict = parse_verdict(
                    answer, model=self.model, block_categories=self._block_categories
                )
            except GuardError as error:
                error.attempts = attempts
                log.warning("guard model %s answered %r", self.model, answer)
                raise
        except GuardError as error:
            error.retry_after = self.settings.guard_retry_after
            log.warning(
                "guard refused (fail closed) after %d attempt(s): %s: %s",
                error.attempts,
                error.kind,
                error.detail,
            )
            raise
        finally:
            GUARD_LATENCY.labels(stage).observe(time.perf_counter() - started)
        verdict = replace(verdict, latency_ms=_ms_since(started))
        self._cache.put(key, verdict)
        return verdict

    async def _chat(self, conversation: tuple[Message, ...]) -> ollama.ChatResponse:
        return await self._screens.chat(
            model=self.model,
            # Only what the guard model reads is neutralised: a text cannot close its own
            # turn or write the verdict (service/guard/template.py); the cache key and
            # everything else keep the caller's exact text.
            messages=[{"role": m.role, "content": neutralise(m.content)} for m in conversation],
            stream=False,
            options=self._options,
            keep_alive=self._keep_alive,
        )

    def _count(self, verdict: ScanResult, stage: str, screens: int = 1) -> ScanResult:
        """Count ``screens`` screens of ``stage`` that ended with this verdict."""
        outcome = "safe" if verdict.safe else "blocked" if verdict.blocked else "allowed_unsafe"
        screen_counter(stage, outcome).inc(screens)
        for category in verdict.categories:
            code = category.code if category.code in HAZARDS else "unknown"
            GUARD_CATEGORIES.labels(code, str(verdict.blocked).lower()).inc(screens)
        return verdict

    # --- readiness and model management ----------------------------------------------------

    async def readiness(self) -> dict[str, Any]:
        """Whether Ollama answers and holds the guard model, and which screens are on."""
        state: dict[str, Any] = {
            "ollama": False,
            "model_present": False,
            "model": self.model,
            "screen_input": self.settings.guard_screen_input,
            "screen_output": self.settings.guard_screen_output,
            "detail": None,
        }
        try:
            listing = await asyncio.wait_for(self._client.list(), self.settings.guard_timeout)
        except Exception as exc:  # reported, not raised
            error, _ = classify(exc, self.model, self.settings.guard_timeout)
            state["detail"] = (
                f"Ollama at {self.settings.ollama_host} did not answer ({error.kind}): "
                f"{error.detail}"
            )
            return state
        state["ollama"] = True
        names = [entry.model for entry in listing.models if entry.model]
        state["model_present"] = any(same_model(self.model, name) for name in names)
        if not state["model_present"]:
            state["detail"] = (
                f"guard model {self.model} is not on Ollama at {self.settings.ollama_host} "
                f"(present: {', '.join(names) or 'none'}); run `ollama pull {self.model}` "
                "or start with GUARD_PULL=true"
            )
        return state

    async def ensure_model(self) -> bool:
        """Make sure the guard model is present. When it is missing and GUARD_PULL is true,
        pull it (progress logged at INFO); when GUARD_PULL is false, log a warning. Returns
        whether the model is present afterwards; raises GuardError when Ollama is unreachable
        or the pull fails."""
        state = await self.readiness()
        if state["model_present"]:
            return True
        if not state["ollama"]:
            raise GuardError(
                "connection", state["detail"], retry_after=self.settings.guard_retry_after
            )
        if not self.settings.guard_pull:
            log.warning("%s", state["detail"])
            return False
        log.info("pulling guard model %s on %s", self.model, self.settings.ollama_host)
        progress = _PullProgress(self.model)
        try:
            async for update in await self._client.pull(self.model, stream=True):
                progress.log(update)
        except Exception as exc:  # every failure becomes a GuardError
            if isinstance(exc, ollama.ResponseError) and exc.status_code in (-1, 404):
                error = GuardError("model_missing", f"pulling {self.model} failed: {exc.error}")
            else:
                error, _ = classify(exc, self.model, self.settings.guard_timeout)
            error.retry_after = self.settings.guard_retry_after
            raise error from exc
        state = await self.readiness()
        if not state["model_present"]:
            raise GuardError(
                "model_missing",
                f"pull of {self.model} finished but the model is not listed",
                retry_after=self.settings.guard_retry_after,
            )
        log.info("guard model %s is ready", self.model)
        return True

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.close()  # type: ignore[no-untyped-call]  # ollama leaves it bare
            if self._screens is not self._client:  # its own client only off a proxy
                await self._screens.close()  # type: ignore[no-untyped-call]


def classify(exc: BaseException, model: str, timeout: float) -> tuple[GuardError, bool]:
    """The GuardError for a failed call to Ollama, and whether the call is worth retrying."""
    if isinstance(exc, GuardError):
        return exc, False
    # Before ConnectionError: the builtin TimeoutError is an OSError too.
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return GuardError("timeout", f"no answer within {timeout:g}s"), True
    if isinstance(exc, ollama.ResponseError):
        status = exc.status_code
        if status == 404:
            detail = (
                f"guard model {model} not found on Ollama ({exc.error}); "
                f"run `ollama pull {model}` or start with GUARD_PULL=true"
            )
            return GuardError("model_missing", detail, status_code=404), False
        detail = f"Ollama answered HTTP {status}: {exc.error}"
        return GuardError("http", detail, status_code=status), status >= 500
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return GuardError("connection", f"cannot call Ollama: {exc}"), False
    # ollama turns httpx.ConnectError (refused, DNS) into the builtin ConnectionError;
    # a connection dropped mid-request surfaces as an httpx transport error.
    if isinstance(exc, ConnectionError | httpx.TransportError | OSError):
        return GuardError("connection", f"{type(exc).__name__}: {exc or 'connection lost'}"), True
    # json.JSONDecodeError and pydantic.ValidationError are both ValueErrors.
    if isinstance(exc, ValueError):
        return GuardError("malformed", f"Ollama sent a body that is not its JSON: {exc}"), False
    log.error("unexpected guard failure", exc_info=exc)
    return GuardError("malformed", f"unexpected {type(exc).__name__}: {exc}"), False


def proxied(host: str) -> bool:
    """Whether httpx would reach the Ollama at ``host`` (as OLLAMA_HOST is written) through a
    proxy from the environment: HTTP_PROXY, HTTPS_PROXY or ALL_PROXY, less NO_PROXY."""
    url = httpx.URL(host if "://" in host else f"http://{host}")
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # untyped
    return not bypass(url.host or "127.0.0.1", proxies)


def same_model(wanted: str, listed: str) -> bool:
    """Whether two Ollama model names are the same model (``x`` is ``x:latest``)."""
    return _canonical(wanted) == _canonical(listed)


def _canonical(name: str) -> str:
    name = name.strip().lower()
    for prefix in ("registry.ollama.ai/", "library/"):
        name = name.removeprefix(prefix)
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def _validated(messages: Sequence[Message]) -> tuple[Message, ...]:
    conversation = tuple(messages)
    if not conversation:
        raise ValueError("the conversation to screen is empty")
    for message in conversation:
        if not isinstance(message, Message) or message.role not in _ROLES:
            raise ValueError(f"each message needs role user or assistant, got {message!r}")
        if not isinstance(message.content, str):
            raise ValueError("message content must be a string")
    return conversation


def _keep_alive(value: str) -> str | float:
    """Ollama reads a bare number as seconds (-1: forever) and a string as a duration."""
    try:
        return float(value)
    except ValueError:
        return value


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


class _PullProgress:
    """Logs pull progress at INFO: every status change, and every 10% of a download."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._status: str | None = None
        self._decile = -1

    def log(self, update: ollama.ProgressResponse) -> None:
        status = update.status or ""
        if status != self._status:
            self._status, self._decile = status, -1
            if not update.total:
                log.info("pull %s: %s", self.model, status)
        if update.total:
            completed = update.completed or 0
            decile = min(10, completed * 10 // update.total)
            if decile > self._decile:
                self._decile = decile
                log.info(
                    "pull %s: %s %d/%d bytes (%d%%)",
                    self.model,
                    status,
                    completed,
                    update.total,
                    completed * 100 // update.total,
                )
