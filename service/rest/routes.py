"""REST front end: /v1 (classify, models, moderate; the OpenAI-compatible chat completions and
moderations in :mod:`service.rest.openai`), health, readiness, metrics, problem docs.

:func:`create_routers` is given the pipeline by the composition root (``service.app``) and
closes over it; a route reaches the models and the guard only through it. Each route is a
thin codec: body -> core operation -> ``outcome.to_dict()``; core failures become problem
documents by the one handler in :mod:`service.web.problems`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.config import Settings
from service.core.errors import ERRORS
from service.core.limits import ItemPath, LimitExceeded
from service.core.pipeline import GuardedPipeline
from service.guard.scanner import Message
from service.rest.media import JSONBodyRoute
from service.rest.openai import create_openai_router, openai_models
from service.rest.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    DriftResponse,
    HealthResponse,
    ModelsResponse,
    ModerateRequest,
    ModerateResponse,
    Problem,
    ReadinessResponse,
)
from service.web.auth import caller_of
from service.web.metrics import exposition_registry
from service.web.problems import problem_response

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 404, 413, 415, 422, 503, 504)
}


def _single_text(_: ItemPath) -> ItemPath:
    return ("text",)


def _conversation_messages(item: ItemPath) -> ItemPath:
    # ("conversations", 0, "messages", i, "content") -> ("messages", i, "content")
    return item[2:] if item[:1] == ("conversations",) and len(item) > 2 else ("messages",)


def create_routers(pipeline: GuardedPipeline, settings: Settings) -> list[APIRouter]:
    """The /v1 routes and the operations routes, over ``pipeline``."""
    # Full paths, no router prefix: the route object then carries the public path, which
    # the metrics use as their route label.
    v1 = APIRouter(tags=["v1"], route_class=JSONBodyRoute)  # bodies are JSON, else 415
    ops = APIRouter(tags=["operations"])

    @v1.post(
        "/v1/classify",
        summary="Classify the sentiment of one or more texts, with both guard screens",
        response_model=ClassifyResponse,
        responses=PROBLEM_RESPONSES,
    )
    async def classify(body: ClassifyRequest) -> JSONResponse:
        try:
            outcome = await pipeline.classify(body.items(), body.model)
        except LimitExceeded as exc:
            if body.text is not None:  # report against the field the caller actually sent
                raise exc.relocated(_single_text) from None
            raise
        return JSONResponse(outcome.to_dict())

    @v1.get(
        "/v1/models", summary="The loaded models and the default", response_model=ModelsResponse
    )
    async def models() -> JSONResponse:
        default = pipeline.default_model
        listing = [
            {**info.to_dict(), "default": info.name == default} for info in pipeline.models()
        ]
        # "object" and "data": the same models in the shape OpenAI's clients list them.
        data = openai_models(pipeline)
        return JSONResponse({"default": default, "models": listing, "object": "list", "data": data})

    @v1.post(
        "/v1/moderate",
        summary="The guard as a service: Llama Guard's verdict on a text or a conversation",
        response_model=ModerateResponse,
        responses=PROBLEM_RESPONSES,
    )
    async def moderate(body: ModerateRequest) -> JSONResponse:
        locate: Callable[[ItemPath], ItemPath]
        if body.text is not None:
            conversation = [Message(role="user", content=body.text)]
            locate = _single_text
        else:
            conversation = [Message(role=m.role, content=m.content) for m in body.messages or []]
            locate = _conversation_messages
        try:
            outcome = await pipeline.moderate([conversation])
        except LimitExceeded as exc:
            raise exc.relocated(locate) from None
        return JSONResponse({**outcome.results[0].to_dict(), "timing": outcome.timing()})

    @v1.get(
        "/v1/drift",
        summary="Drift of each model's recent texts from its training data",
        response_model=DriftResponse,
        responses=PROBLEM_RESPONSES,
    )
    async def drift(
        model: str | None = Query(None, min_length=1, description="Only this model"),
    ) -> JSONResponse:
        # The monitor's figures and vocabulary words, never a caller's text; like /v1/models
        # and /metrics it is answered without the guard (the A2A drift-report skill screens).
        return JSONResponse(pipeline.drift_status(model))

    @ops.get("/healthz", summary="Liveness: the process answers", response_model=HealthResponse)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    # HEAD for probes that only look at the status (undocumented twins of the GETs).
    ops.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)

    @ops.get(
        "/readyz",
        summary="Readiness: models loaded, Ollama reachable, guard model present",
        response_model=ReadinessResponse,
        responses={503: {"model": Problem, "content": {"application/problem+json": {}}}},
    )
    async def readyz(request: Request) -> JSONResponse:
        return await _readiness(request, pipeline, settings)

    ops.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)
    registry = exposition_registry()

    @ops.get(
        "/metrics",
        summary="Prometheus metrics (text exposition format)",
        response_class=PlainTextResponse,
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @ops.get(
        "/problems/{slug}",
        summary="What a problem type means",
        responses={404: {"model": Problem, "content": {"application/problem+json": {}}}},
    )
    async def problem_type(slug: str, request: Request) -> JSONResponse:
        spec = ERRORS.get(slug)
        if spec is None:
            return problem_response(request, 404, None, f"no problem type {slug!r}")
        return JSONResponse(
            {
                "type": spec.uri,
                "title": spec.title,
                "status": spec.status,
                "description": spec.description,
            }
        )

    return [v1, create_openai_router(pipeline, settings), ops]


async def _readiness(
    request: Request, pipeline: GuardedPipeline, settings: Settings
) -> JSONResponse:
    names = pipeline.model_names()
    checks: dict[str, Any] = {
        "models": {
            "ok": bool(names) and pipeline.default_model in names,
            "loaded": names,
            "default": pipeline.default_model,
        }
    }
    try:
        async with asyncio.timeout(settings.guard_timeout):
            guard = await pipeline.readiness()
        detail = guard.get("detail")
    except Exception as exc:  # a readiness probe reports failures, it does not raise them
        guard = {"ollama": False, "model_present": False, "model": settings.guard_model}
        guard |= {"screen_input": settings.guard_screen_input}
        guard |= {"screen_output": settings.guard_screen_output}
        detail = f"readiness check failed: {type(exc).__name__}: {exc}"
    checks["ollama"] = {"ok": bool(guard.get("ollama")), "url": settings.ollama_host}
    checks["guard_model"] = {"ok": bool(guard.get("model_present")), "model": guard.get("model")}
    screens = {"input": bool(guard.get("screen_input")), "output": bool(guard.get("screen_output"))}
    # A screen turned off is the operator's explicit choice (GUARD_SCREEN_*=false): shown
    # here and warned about at start, but it does not make the service unready.
    checks["screens"] = {"ok": True, **screens}
    off = [stage for stage, on in screens.items() if not on]
    if off:
        checks["screens"]["warning"] = f"{' and '.join(off)} screening is off"
    # The chat model present on Ollama; chat switched off (CHAT_MODEL empty) is the
    # operator's choice, shown with a warning like a screen turned off.
    try:
        async with asyncio.timeout(settings.guard_timeout):
            checks["chat"] = await pipeline.chat_readiness()
    except Exception as exc:  # reported, not raised
        checks["chat"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    if detail:
        checks["detail"] = detail
    ready = all(check["ok"] for key, check in checks.items() if key != "detail")
    if not _may_see_details(request, settings):
        # /readyz stays open for probes; with API_TOKENS set, only a caller with a valid
        # token sees the details (Ollama's URL, model names, the guard's failure text).
        checks = {key: {"ok": check["ok"]} for key, check in checks.items() if key != "detail"}
    if ready:
        return JSONResponse({"ready": True, "checks": checks})
    failing = [key for key, check in checks.items() if key != "detail" and not check["ok"]]
    return problem_response(
        request,
        503,
        "not-ready",
        f"failing checks: {', '.join(failing)}",
        # Probes and load balancers retry; say when it is worth it.
        headers={"Retry-After": str(settings.guard_retry_after)},
        ready=False,
        checks=checks,
    )


def _may_see_details(request: Request, settings: Settings) -> bool:
    """Everyone without API_TOKENS; with it, only callers the auth middleware identified by
    a valid bearer token (it names them on open paths too)."""
    return not settings.api_tokens or caller_of(request.scope) is not None
