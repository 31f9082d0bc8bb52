"""The OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``POST /v1/moderations``,
and the ``object``/``data`` fields of ``GET /v1/models``.

Thin codecs over the core, like the other routes: an OpenAI request body -> a core operation
(``pipeline.chat`` / ``pipeline.chat_complete`` / ``pipeline.moderate``) -> the OpenAI shape.
The guard's decisions are the core's: a blocked conversation is a ``content-blocked``
problem before any stream starts, an unsafe chunk of a reply ends it with
``finish_reason: "content_filter"``, and a guard or model failure mid-stream ends the stream
with an OpenAI error event (``data: {"error": {...}}``, no ``[DONE]``), which OpenAI's
clients raise as an ``APIError``. Problem documents of these paths also carry OpenAI's
``error`` member (:func:`openai_error`). See docs/chat.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.chat.holdback import ScreenedReply
from service.chat.types import ChatDelta, ChatEnd, ChatMessage, ChatRole
from service.config import Settings
from service.core.errors import InternalError, RequestTimeout, ServiceError, shown
from service.core.limits import ItemPath, LimitExceeded
from service.core.pipeline import GuardedPipeline
from service.guard.scanner import Message, ScanResult
from service.models.registry import UnknownModelError
from service.rest.media import JSONBodyRoute
from service.rest.schemas import CategoryOut, Problem
from service.web.problems import add_problem_member

logger = logging.getLogger("service.rest.openai")

CHAT_COMPLETIONS = "/v1/chat/completions"
MODERATIONS = "/v1/moderations"
# Their problem documents also carry OpenAI's "error" member, which OpenAI's clients read for
# the message and the body of the error they raise (RFC 9457 allows extension members).
OPENAI_COMPATIBLE_PATHS = frozenset({CHAT_COMPLETIONS, MODERATIONS})

SSE = "text/event-stream"
# One server-sent event of a streamed reply: its data is a chat.completion.chunk (JSON), an
# error object ({"error": {...}}, the last event of a failed stream) or "[DONE]".
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
}
OWNER = "guarded-inference"  # owned_by of the classifiers in /v1/models
# What the caller may name as the moderation model besides the guard model: OpenAI's own
# moderation models, all answered by Llama Guard (so code written for OpenAI runs unchanged).
OPENAI_MODERATION_PREFIXES = ("omni-moderation", "text-moderation")

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 404, 413, 415, 422, 503, 504)
}


# --- the OpenAI moderation categories ------------------------------------------------------
OPENAI_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# Llama Guard 3's hazards (S1..S14) as OpenAI's moderation categories, where they correspond.
# S5 Defamation, S6 Specialized Advice, S7 Privacy, S8 Intellectual Property, S13 Elections
# and S14 Code Interpreter Abuse have no OpenAI counterpart: they flag the input, and show
# only in "llama_guard".
LLAMA_GUARD_TO_OPENAI: dict[str, tuple[str, ...]] = {
    "S1": ("violence", "illicit/violent"),  # Violent Crimes
    "S2": ("illicit",),  # Non-Violent Crimes
    "S3": ("sexual", "illicit"),  # Sex-Related Crimes
    "S4": ("sexual", "sexual/minors"),  # Child Sexual Exploitation
    "S9": ("illicit/violent",),  # Indiscriminate Weapons
    "S10": ("hate",),  # Hate
    "S11": ("self-harm",),  # Suicide & Self-Harm
    "S12": ("sexual",),  # Sexual Content
}


# --- request bodies ------------------------------------------------------------------------
class TextPart(BaseModel):
    """OpenAI's text content part; the only part type accepted."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["text"]
    text: str


def _text_parts_only(value: Any, what: str) -> Any:
    """Refuse, with one clear message, a list holding anything but text parts."""
    if isinstance(value, list):
        for index, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(
                    f"part {index}: only text parts ({{'type': 'text', 'text': ...}}) are "
                    f"supported in {what}, not {shown(repr(kind))}"
                )
    return value


def _joined(parts: list[TextPart]) -> str:
    return "\n".join(part.text for part in parts)


class ChatMessageIn(BaseModel):
    """One message. Other members OpenAI defines (``name``, ``refusal``, ...) are ignored."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="'developer' is taken as 'system'."
    )
    content: str | list[TextPart] = Field(
        description="A string, or a list of text parts (joined with newlines)."
    )

    @field_validator("content", mode="before")
    @classmethod
    def _only_text(cls, value: Any) -> Any:
        return _text_parts_only(value, "message content")

    def to_core(self) -> ChatMessage:
        role: ChatRole = "system" if self.role == "developer" else self.role
        content = self.content if isinstance(self.content, str) else _joined(self.content)
        return ChatMessage(role, content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool | None = None


# Fields that would change the reply's meaning and that this service cannot honour: refused
# (422) when set to anything but their default, rather than silently ignored.
_UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "logprobs",
    "top_logprobs",
    "stop",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
)
_DEFAULTS: tuple[Any, ...] = (None, False, 0, [], {}, "none", "auto", ["text"], {"type": "text"})


class ChatCompletionRequest(BaseModel):
    """OpenAI's Chat Completions request. Fields not listed here that do not change what the
    reply means (``user``, ``seed``, ``top_p``, ``frequency_penalty``, ``metadata``, ...)
    are accepted and ignored."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,  # JSON types as documented: no "5" for 5, no 0 for false
        json_schema_extra={
            "examples": [
                {
                    "model": "llama3.2:1b",
                    "messages": [
                        {"role": "system", "content": "You are a baker."},
                        {"role": "user", "content": "How do I bake sourdough bread?"},
                    ],
                    "stream": True,
                }
            ]
        },
    )

    model: str = Field(description="The chat model (GET /v1/models, kind 'chat').")
    messages: list[ChatMessageIn]
    max_tokens: int | None = Field(None, ge=1, description="Capped by CHAT_MAX_TOKENS.")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Wins over max_tokens when both are given."
    )
    temperature: float | None = Field(None, ge=0, le=2)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, description="Only 1.")
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    stop: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only one choice is generated: n must be 1")
        return value

    @field_validator(*_UNSUPPORTED)
    @classmethod
    def _unsupported(cls, value: Any) -> Any:
        if any(value == default and type(value) is type(default) for default in _DEFAULTS):
            return value
        raise ValueError("not supported by this service (leave it unset)")

    def token_limit(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ModerationRequest(BaseModel):
    """OpenAI's moderation request: one input (a string, or a list of text objects taken as
    one text) or several (a list of strings), each judged on its own."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        json_schema_extra={
            "examples": [
                {"input": "How do I bake sourdough bread?"},
                {"input": ["How do I steal a car?", "Lovely weather."]},
            ]
        },
    )

    input: str | list[str] | list[TextPart]
    model: str | None = Field(
        None, description="The guard model, or an OpenAI moderation model name; optional."
    )

    @field_validator("input", mode="before")
    @classmethod
    def _only_text(cls, value: Any) -> Any:
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            return _text_parts_only(value, "moderation input")
        return value

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, str) for item in self.input):
            return [str(item) for item in self.input]
        return [_joined([item for item in self.input if isinstance(item, TextPart)])]


# --- response bodies (for the OpenAPI document; answers are built as dicts) -----------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GuardOut(BaseModel):
    """Why the guard stopped the reply (only with finish_reason content_filter)."""

    stage: Literal["output"]
    categories: list[CategoryOut]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length", "content_filter"]
    guard: GuardOut | None = Field(None, description="Present with content_filter.")


class ChatCompletion(BaseModel):
    id: str = Field(examples=["chatcmpl-5f0c3b1e9a2d4c7e8b6a1d2f3e4c5b6a"])
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class LlamaGuardOut(BaseModel):
    safe: bool
    blocked: bool = Field(description="Whether the service's policy refuses it.")
    categories: list[CategoryOut]


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]
    llama_guard: LlamaGuardOut


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


# --- codecs ----------------------------------------------------------------------------------
def _input_at(single: bool) -> Callable[[ItemPath], ItemPath]:
    def locate(item: ItemPath) -> ItemPath:
        # ("conversations", i, "messages", 0, "content") -> ("input", i); ("conversations",)
        if single or len(item) < 2:
            return ("input",)
        return ("input", item[1])

    return locate


def moderation_result(result: ScanResult) -> dict[str, Any]:
    flagged = {name for c in result.categories for name in LLAMA_GUARD_TO_OPENAI.get(c.code, ())}
    return {
        "flagged": not result.safe,
        "categories": {name: name in flagged for name in OPENAI_CATEGORIES},
        "category_scores": {name: 1.0 if name in flagged else 0.0 for name in OPENAI_CATEGORIES},
        "category_applied_input_types": {
            name: ["text"] if name in flagged else [] for name in OPENAI_CATEGORIES
        },
        "llama_guard": {
            "safe": result.safe,
            "blocked": result.blocked,
            "categories": [category.to_dict() for category in result.categories],
        },
    }


def openai_models(pipeline: GuardedPipeline) -> list[dict[str, Any]]:
    """The ``data`` of GET /v1/models: the classifiers, then the chat model (when on)."""
    data = [
        {
            "id": info.name,
            "object": "model",
            "created": _card_created(info.card),
            "owned_by": OWNER,
            "kind": "classifier",
        }
        for info in pipeline.models()
    ]
    if pipeline.chat_model is not None:
        data.append(
            {
                "id": pipeline.chat_model,
                "object": "model",
                "created": 0,
                "owned_by": "ollama",
                "kind": "chat",
            }
        )
    return data


def _card_created(card: dict[str, Any]) -> int:
    """The card's creation date as Unix seconds; 0 when it has none."""
    try:
        day = datetime.strptime(str(card.get("created", "")), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return 0
    return int(day.timestamp())


def openai_error(
    status: int, code: str | None, message: str, extensions: Mapping[str, Any]
) -> dict[str, Any]:
    """OpenAI's error object for a problem: ``message``, ``type`` (from the status),
    ``code`` (the problem type's slug), ``param`` (the first invalid field), and the
    problem's extension members again (OpenAI's clients expose only this object as the
    error's body), except the ``errors`` list, whose first entry is summed up instead."""
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    error: dict[str, Any] = {
        "message": message,
        "type": _OPENAI_TYPES.get(status, fallback),
        "code": code,
        "param": None,
    }
    errors = extensions.get("errors")
    if errors:
        first = errors[0]
        error["param"] = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        if first.get("msg") and first["msg"] not in message:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            error["message"] = f"{message}: {error['param']}: {first['msg']}{more}"
    for key, value in extensions.items():
        if key != "errors" and key not in error:
            error[key] = value
    return error


_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _error_event(error: ServiceError) -> bytes:
    spec = error.spec
    return _sse({"error": openai_error(spec.status, spec.slug, error.message, error.details())})


def _finish(end: ChatEnd) -> dict[str, Any]:
    """The choice members that say how the reply ended."""
    members: dict[str, Any] = {"finish_reason": end.finish_reason}
    guard = end.guard_dict()
    if guard is not None:
        members["guard"] = guard
    return members


def _log_end(end: ChatEnd, *, stream: bool) -> None:
    logger.info(
        "chat completed",
        extra={
            "finish_reason": end.finish_reason,
            "stream": stream,
            "released_tokens": end.usage.released_tokens,
            "guard_calls": end.guard_calls,
        },
    )


async def _chunks(
    reply: ScreenedReply,
    head: dict[str, Any],
    include_usage: bool,
    seconds: float,
    deadline: float,
) -> AsyncIterator[bytes]:
    """The reply as chat.completion.chunk events: the role, one event per released piece,
    the end; then the usage (when asked) and [DONE]. A failure ends it with an error event
    and no [DONE], and so does a reply not finished by ``deadline`` (the loop's clock:
    ``seconds`` after the request began; generation and screens are bounded one by one,
    this bounds them all together)."""
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], **choice: Any) -> bytes:
        members = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None, **choice}
        return _sse({**head, "choices": [members], **extra})

    yield chunk({"role": "assistant", "content": ""})
    events = aiter(reply)
    end: ChatEnd | None = None
    try:
        while True:
            # Bounded await by await: a timeout must never span a yield (the caller's code
            # runs there).
            try:
                async with asyncio.timeout_at(deadline):
                    event = await anext(events)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RequestTimeout(seconds) from None
            if isinstance(event, ChatDelta):
                yield chunk({"content": event.text})
            else:
                end = event
    except ServiceError as error:  # the guard or the model failed: what was sent had passed
        logger.warning("chat stream failed", extra={"problem": error.problem, **error.details()})
        yield _error_event(error)
        return
    except Exception:
        logger.exception("chat stream failed unexpectedly")
        yield _error_event(InternalError())
        return
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()  # stops generation and pending screens
    assert end is not None  # a reply ends with one ChatEnd, or raises
    _log_end(end, stream=True)
    yield chunk({}, **_finish(end))
    if include_usage:
        yield _sse({**head, "choices": [], "usage": end.usage.to_dict()})
    yield b"data: [DONE]\n\n"


def create_openai_router(pipeline: GuardedPipeline, settings: Settings) -> APIRouter:
    """The OpenAI-compatible routes, over ``pipeline``."""
    router = APIRouter(tags=["openai"], route_class=JSONBodyRoute)  # bodies are JSON, else 415
    for path in OPENAI_COMPATIBLE_PATHS:
        add_problem_member(path, "error", openai_error)

    @router.post(
        CHAT_COMPLETIONS,
        summary="OpenAI-compatible chat completion, streamed or whole, guarded both ways",
        response_model=ChatCompletion,
        responses={
            200: {
                "content": {SSE: {"schema": SSE_EVENT}},
                "description": "A chat.completion object, or with stream: true a stream of "
                "chat.completion.chunk events ending with data: [DONE].",
            },
            **_PROBLEMS,
        },
    )
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        chat_model = pipeline.chat_model
        if chat_model is not None and body.model != chat_model:
            raise UnknownModelError(body.model, [chat_model])
        messages = [message.to_core() for message in body.messages]
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if body.stream else "chat.completion",
            "created": int(time.time()),
            "model": body.model,
        }
        # The whole reply, its input screen included, within one deadline.
        seconds = settings.chat_turn_timeout()
        deadline = asyncio.get_running_loop().time() + seconds
        if body.stream:
            # Refusals (blocked input, guard down, limits) are raised here, before any
            # stream exists: they are problem documents, not events.
            _, reply = await pipeline.chat(
                messages, max_tokens=body.token_limit(), temperature=body.temperature
            )
            return StreamingResponse(
                _chunks(reply, head, body.include_usage(), seconds, deadline),
                media_type=SSE,
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            async with asyncio.timeout_at(deadline) as scope:
                whole = await pipeline.chat_complete(
                    messages, max_tokens=body.token_limit(), temperature=body.temperature
                )
        except TimeoutError:
            if not scope.expired():
                raise
            raise RequestTimeout(seconds) from None
        _log_end(whole.end, stream=False)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": whole.text, "refusal": None},
            "logprobs": None,
            **_finish(whole.end),
        }
        return JSONResponse({**head, "choices": [choice], "usage": whole.end.usage.to_dict()})

    @router.post(
        MODERATIONS,
        summary="OpenAI-compatible moderation: Llama Guard's verdict on each input",
        response_model=ModerationResponse,
        responses=_PROBLEMS,
    )
    async def moderations(body: ModerationRequest) -> JSONResponse:
        guard_model = settings.guard_model
        if body.model is not None and not (
            body.model == guard_model or body.model.startswith(OPENAI_MODERATION_PREFIXES)
        ):
            raise UnknownModelError(body.model, [guard_model])
        conversations = [[Message("user", text)] for text in body.texts()]
        try:
            outcome = await pipeline.moderate(conversations)
        except LimitExceeded as exc:
            raise exc.relocated(_input_at(not isinstance(body.input, list))) from None
        results = [moderation_result(result) for result in outcome.results]
        model = outcome.results[0].model if outcome.results else guard_model
        return JSONResponse({"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results})

    return router
