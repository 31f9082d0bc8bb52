"""Settings, read from environment variables (and an optional .env file).

Every variable is documented in docs/configuration.md (tests/test_docs.py checks it against
this class); names are the upper-case field names (``guard_model`` -> ``GUARD_MODEL``).
``OLLAMA_HOST`` follows Ollama's own convention.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.guard.taxonomy import HAZARDS

# Longest pause between two guard attempts (service.guard.llama_guard uses the same bound;
# tests/test_config_budget.py checks they agree).
GUARD_MAX_BACKOFF = 10.0


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def parse_push_host(entry: str) -> tuple[str, int | None]:
    """An A2A_PUSH_ALLOWED_HOSTS entry as (host, port or None): ``host``, ``host:port``,
    ``[v6 address]`` or ``[v6 address]:port``, ``*.domain`` or ``*``; the host lower-cased,
    an IP address in its canonical form. ValueError for anything else (a URL, a path)."""
    text = entry.strip().lower()
    if "/" in text or "@" in text:
        raise ValueError(f"A2A_PUSH_ALLOWED_HOSTS entry {entry!r}: a host, not a URL")
    host, port = text, ""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"A2A_PUSH_ALLOWED_HOSTS entry {entry!r}: write [address]:port")
        port = port[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if port and not (port.isdecimal() and port.isascii() and 0 < int(port) < 65536):
        raise ValueError(f"A2A_PUSH_ALLOWED_HOSTS entry {entry!r}: bad port {port!r}")
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        name = host.removeprefix("*.") if host != "*" else "x"
        labels = name.rstrip(".").split(".")
        if not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise ValueError(
                f"A2A_PUSH_ALLOWED_HOSTS entry {entry!r} is not a host name, address, "
                "*.domain or * (no scheme, no path)"
            ) from None
        host = host.rstrip(".")
    return host, int(port) if port else None


_ORIGIN = re.compile(r"https?://[^/?#@\s]+")
_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- server -----------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    certfile: str | None = None
    keyfile: str | None = None
    graceful_timeout: float = Field(30.0, gt=0)
    log_level: str = "INFO"
    # One JSON access line per request (method, route, status, duration, request id).
    access_log: bool = True
    # Requests one connection may carry before the server closes it (Hypercorn's default of
    # 1,000 would drop long-lived HTTP/2 connections under load).
    keep_alive_max_requests: int = Field(1_000_000_000, ge=1)
    # Seconds an idle connection stays open.
    keep_alive_timeout: float = Field(75.0, gt=0)
    # Client connections one server process holds open at once; past it new ones are closed
    # at once (0: no ceiling).
    max_connections: int = Field(1024, ge=0)
    # Concurrent streams one HTTP/2 connection may have open (SETTINGS_MAX_CONCURRENT_STREAMS).
    h2_max_concurrent_streams: int = Field(256, ge=1)
    # Browser origins (scheme://host[:port], comma-separated; * for any) whose pages may call
    # the API: their requests get CORS headers and their preflights an answer. Empty: no
    # CORS headers for anyone (browsers then refuse cross-origin calls).
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- models -----------------------------------------------------------------------
    default_model: str = "sentiment-cnn-int8"
    # Models loaded at start; empty means every shipped artifact.
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    artifacts_dir: str | None = None
    # LoRA adapter artifacts discovered at start (empty: the artifacts folder's adapters/).
    adapters_dir: str | None = None
    # Adapters served as a merged copy of their base: faster, one more copy of the base
    # weights in memory each (11 MB for the fp32 CNN); the rest share the base in one batch.
    adapters_merge: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Micro-batching: concurrent classify calls for one model share one forward pass of at
    # most this many texts (a single larger request still runs, alone).
    batch_max_texts: int = Field(64, ge=1)
    # Milliseconds the batcher waits for more calls once it holds one; 0 takes only what is
    # already queued (calls still combine while a forward is running).
    batch_max_wait_ms: float = Field(2.0, ge=0)
    # Torch intra-op threads per forward; 0 keeps torch's default (one per core). One leaves
    # the other cores to the event loop: with more, idle OpenMP workers spin for CPU time the
    # event loop needs, and a forward stalls whenever one of its threads is descheduled.
    torch_threads: int = Field(1, ge=0, le=256)

    # --- request limits ---------------------------------------------------------------
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # Seconds from a request's start by which its whole body must have arrived (else 408).
    body_timeout: float = Field(30.0, gt=0)
    max_text_chars: int = Field(20_000, ge=1)
    max_batch: int = Field(64, ge=1)
    request_timeout: float = Field(30.0, gt=0)

    # --- guard ------------------------------------------------------------------------
    ollama_host: str = "http://127.0.0.1:11434"
    guard_model: str = "llama-guard3:1b"
    # Seconds per guard call attempt, and retries after a failed one. The defaults fit the
    # request deadline: both screens of a classify call (input, then output), every attempt
    # timing out, take 2 x (6 x 2 + 0.2) = 24.4 s < REQUEST_TIMEOUT (see guard_deadline_warning).
    guard_timeout: float = Field(6.0, gt=0)
    guard_retries: int = Field(1, ge=0, le=10)
    guard_retry_backoff: float = Field(0.2, ge=0)
    guard_concurrency: int = Field(8, ge=1)
    # Guard calls that may wait for one of the GUARD_CONCURRENCY slots; past it a screen is
    # refused at once (503, Retry-After) instead of timing out in a queue.
    guard_queue: int = Field(256, ge=0)
    # Share of the running-or-waiting guard calls one caller (token name, or client address
    # when auth is off) may hold.
    guard_caller_share: float = Field(0.5, gt=0, le=1)
    guard_keep_alive: str = "30m"
    # Room for the longest verdict, "unsafe" and all fourteen codes; one cut short is refused.
    guard_num_predict: int = Field(48, ge=1)
    # The context (tokens) the guard model is run with, sent as Ollama's num_ctx. A text or
    # conversation that might not fit is refused (service/guard/budget.py): Ollama would cut
    # it, and the guard judge only part of it.
    guard_num_ctx: int = Field(16_384, ge=1024)
    guard_cache_size: int = Field(4096, ge=0)
    guard_cache_ttl: float = Field(600.0, ge=0)
    guard_screen_input: bool = True
    guard_screen_output: bool = True
    # Hazard codes that block; empty means all of S1..S14.
    guard_block_categories: Annotated[list[str], NoDecode] = Field(default_factory=list)
    guard_pull: bool = False
    guard_retry_after: int = Field(5, ge=1)

    # --- chat ----------------------------------------------------------------------------
    # The chat model on Ollama (OLLAMA_HOST); empty switches chat off.
    chat_model: str = "llama3.2:1b"
    # Seconds one reply may take to generate, from the call to its last piece.
    chat_timeout: float = Field(120.0, gt=0)
    # Replies generated at once; more wait for a slot within their CHAT_TIMEOUT.
    chat_concurrency: int = Field(4, ge=1)
    # Most tokens one reply may have (a request's max_tokens is capped to it; the default).
    chat_max_tokens: int = Field(512, ge=1)
    # Most messages in one conversation (each at most MAX_TEXT_CHARS characters).
    chat_max_messages: int = Field(64, ge=1)
    # The streamed reply is held back and screened in chunks: a chunk ends after this many
    # tokens, or (CHAT_CHUNK=sentences) at the first sentence end before that once it holds
    # a quarter of them.
    chat_chunk: Literal["tokens", "sentences"] = "tokens"
    chat_chunk_tokens: int = Field(24, ge=1)
    # Seconds an A2A chat conversation may wait for the caller's next message before it is
    # ended (canceled, reason conversation-idle); 0 lets conversations wait forever.
    chat_idle_timeout: float = Field(3600.0, ge=0)

    # --- drift ---------------------------------------------------------------------------
    # The online drift monitor (docs/drift.md): per model, a window of the descriptors of the
    # texts it classified, tested off the request path against its reference profile.
    drift_enabled: bool = True
    # Texts in one model's window; past it the oldest are forgotten.
    drift_window: int = Field(1000, ge=10, le=100_000)
    # Texts a window must hold before it gets a verdict.
    drift_min_window: int = Field(200, ge=1)
    # The windows are tested once this many texts arrived since the last check, or
    # DRIFT_CHECK_INTERVAL seconds after it, whichever comes first.
    drift_check_every: int = Field(1000, ge=1)
    drift_check_interval: float = Field(30.0, gt=0)
    # A feature drifted when its statistic is at or above its threshold.
    drift_length_threshold: float = Field(0.3, gt=0)
    drift_words_threshold: float = Field(0.3, gt=0)
    drift_oov_share_threshold: float = Field(0.5, gt=0)
    drift_tokens_threshold: float = Field(0.05, gt=0)
    drift_score_threshold: float = Field(0.5, gt=0)

    # --- A2A / auth -------------------------------------------------------------------
    public_url: str | None = None
    api_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    agent_name: str = "Guarded Inference Service"
    task_store_url: str | None = None
    # In-memory task store only: tasks kept; past it the oldest finished ones are forgotten.
    task_store_max_tasks: int = Field(100_000, ge=1)
    # In-memory task store only: bytes of tasks kept (their serialised size); past it the
    # oldest finished ones are forgotten.
    task_store_max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    # SQL task store only: finished tasks older than this many seconds are deleted (0 keeps
    # them forever).
    task_store_retention: float = Field(7 * 24 * 3600.0, ge=0)
    # Seconds between two sweeps of the task store (retention, interrupted tasks).
    task_store_sweep_interval: float = Field(60.0, gt=0)
    # The agent card's provider (organization, and its URL; empty means the public URL).
    agent_provider: str = "Guarded Inference Service"
    agent_provider_url: str | None = None
    # Model behind the A2A skill "sentiment-cnn" (empty means DEFAULT_MODEL).
    a2a_cnn_model: str | None = None
    # Model behind the A2A skill "sentiment-moe".
    a2a_moe_model: str = "switch-moe"
    # Model behind the A2A skill "hyperbole".
    a2a_hyperbole_model: str = "hyperbole-lora"
    # Model behind the A2A skill "sentiment-cascade".
    a2a_cascade_model: str = "sentiment-cascade"
    # A2A push notifications: the webhook hosts the agent may POST task updates to, as
    # host, host:port, [v6 address]:port, *.domain or * (comma-separated). A host named
    # exactly may resolve to any address; one matched by * or *.domain only to public ones.
    # Empty: push notifications are off.
    a2a_push_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Seconds one webhook call may take (connect, send, answer); redirects are not followed.
    a2a_push_timeout: float = Field(5.0, gt=0, le=60)
    # Retries of a webhook call that failed (timeout, connection, 408, 425, 429, 5xx), and
    # the pause before the first one, doubled before each next one (at most 30 s).
    a2a_push_retries: int = Field(3, ge=0, le=10)
    a2a_push_retry_backoff: float = Field(0.5, ge=0, le=30)

    @field_validator(
        "models",
        "adapters_merge",
        "api_tokens",
        "guard_block_categories",
        "a2a_push_allowed_hosts",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("a2a_push_allowed_hosts")
    @classmethod
    def _push_hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_push_host(entry)  # raises ValueError naming the entry
        return [entry.lower() for entry in value]

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        value = _split_csv(value)
        if not isinstance(value, list):
            return value
        origins = [str(origin).rstrip("/").lower() for origin in value]
        bad = [origin for origin in origins if origin != "*" and not _ORIGIN.fullmatch(origin)]
        if bad:
            raise ValueError(f"not an origin (scheme://host[:port], or *): {bad}")
        return origins

    @field_validator("guard_block_categories")
    @classmethod
    def _known_codes(cls, value: list[str]) -> list[str]:
        codes = [code.upper() for code in value]
        unknown = [code for code in codes if code not in HAZARDS]
        if unknown:
            raise ValueError(f"unknown hazard codes {unknown}; known: S1..S14")
        return codes

    def chat_turn_timeout(self) -> float:
        """Seconds a whole chat reply may take, on every front end: its input screen within
        REQUEST_TIMEOUT, then generation within CHAT_TIMEOUT (the reply's screens overlap
        generation; the last one must fit too). 0 when chat is off."""
        return self.request_timeout + self.chat_timeout if self.chat_model else 0.0

    def guard_worst_case(self) -> float:
        """Seconds one guard screen may take before it gives up: every attempt timing out
        (GUARD_TIMEOUT x (GUARD_RETRIES + 1)) plus the backoff before each retry
        (GUARD_RETRY_BACKOFF x 2^n, at most 10 s each). Waiting for a free GUARD_CONCURRENCY
        slot is not counted."""
        backoff = sum(
            min(self.guard_retry_backoff * 2**n, GUARD_MAX_BACKOFF)
            for n in range(self.guard_retries)
        )
        return self.guard_timeout * (self.guard_retries + 1) + backoff

    def guard_deadline_warning(self) -> str | None:
        """Why the guard's retries cannot finish inside REQUEST_TIMEOUT, or None when they can.

        A classify call runs its screens one after the other (the input screen, then the
        output screen), so the budget is the worst case of one screen times the screens that
        are on. Over it, a guard that keeps timing out is cut off by the request deadline (504
        request-timeout) before its last retry. This is a warning, logged at start, not a
        refusal: a request deadline shorter than the guard's is a legitimate choice (the
        caller gets a 504 sooner) and the tests use it to exercise that path.
        """
        screens = int(self.guard_screen_input) + int(self.guard_screen_output)
        per_screen = self.guard_worst_case()
        if screens * per_screen <= self.request_timeout:
            return None
        return (
            f"the guard's timeout and retries do not fit REQUEST_TIMEOUT={self.request_timeout:g}"
            f"s: GUARD_TIMEOUT={self.guard_timeout:g}s x (GUARD_RETRIES={self.guard_retries} + 1)"
            f" + backoff from GUARD_RETRY_BACKOFF={self.guard_retry_backoff:g}s = "
            f"{per_screen:g}s per screen, x {screens} screen(s) in sequence = "
            f"{screens * per_screen:g}s; a guard that times out is answered 504 before its "
            "retries end. Lower GUARD_TIMEOUT or GUARD_RETRIES, or raise REQUEST_TIMEOUT"
        )

    @property
    def base_url(self) -> str:
        """The URL clients reach us at (PUBLIC_URL, or the bind address)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.certfile and self.keyfile else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{scheme}://{host}:{self.port}"


# Settings that hold secrets: never echoed (an API token; the task store URL's password).
SECRET_FIELDS = frozenset({"api_tokens", "task_store_url"})


def settings_report(settings: Settings) -> dict[str, str]:
    """Every setting as its environment variable and value, secrets masked: API tokens show
    only their callers' names, URLs hide their passwords."""
    report: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name == "api_tokens":
            shown = ",".join(f"{caller}:***" for caller in _callers(value))
        elif isinstance(value, list):
            shown = ",".join(str(item) for item in value)
        elif isinstance(value, bool):
            shown = str(value).lower()
        elif value is None:
            shown = ""
        else:
            shown = str(value)
        if name == "task_store_url" and shown and "@" in shown and "://" in shown:
            scheme, rest = shown.split("://", 1)
            credentials, _, host = rest.rpartition("@")
            user = credentials.split(":", 1)[0]
            shown = f"{scheme}://{user}:***@{host}" if ":" in credentials else shown
        report[name.upper()] = shown
    return report


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def _callers(entries: list[str]) -> list[str]:
    """The caller name of each API_TOKENS entry, as the service names it (a bare token:
    ``token-`` and 8 hex digits of its hash), never a part of a token."""
    from service.web.auth import token_identities

    try:
        return list(token_identities(entries).values())
    except ValueError:  # an entry the service refuses at start: show nothing of it
        return ["***"] * len(entries)


def invalid_settings(error: ValidationError) -> str:
    """A settings error as the user set it: one line per variable, not a traceback. The
    value is echoed only for settings that hold no secret."""
    lines = [f"error: {error.error_count()} invalid setting(s):"]
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"]).upper() or "settings"
        value = item.get("input")
        secret = bool(item["loc"]) and str(item["loc"][0]) in SECRET_FIELDS
        shown = "" if secret or isinstance(value, dict) else f" (got {str(value)[:100]!r})"
        lines.append(f"  {name}: {item['msg']}{shown}")
    return "\n".join(lines)
