"""REST routes: /v1 (classify, models, moderate), health, readiness, metrics, problem docs.

Routes reach models and the guard only through the GuardedPipeline on ``app.state``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.web.problems import PROBLEM_TYPES, problem_response
from service.rest.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    HealthResponse,
    ModelsResponse,
    ModerateRequest,
    ModerateResponse,
    Problem,
    ReadinessResponse,
)
from service.config import Settings
from service.guard.types import Message
from service.core.pipeline import ClassifyOutcome, GuardedPipeline, InputLimitError

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 404, 413, 422, 503, 504)
}


# Coroutines, not plain functions: FastAPI runs a plain-function dependency in its thread
# pool, a thread hop per request for a single attribute read.
async def get_pipeline(request: Request) -> GuardedPipeline:
    return request.app.state.pipeline


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


PipelineDep = Annotated[GuardedPipeline, Depends(get_pipeline)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


# Full paths, no router prefix: the route object then carries the public path, which the
# metrics use as their route label.
v1 = APIRouter(tags=["v1"])
ops = APIRouter(tags=["operations"])


@v1.post(
    "/v1/classify",
    summary="Classify the sentiment of one or more texts, with both guard screens",
    response_model=ClassifyResponse,
    responses=PROBLEM_RESPONSES,
)
async def classify(body: ClassifyRequest, pipeline: PipelineDep) -> JSONResponse:
    texts = body.items()
    try:
        outcome = await pipeline.classify(texts, body.model)
    except InputLimitError as exc:
        if body.text is not None:  # report against the field the caller actually sent
            for error in exc.errors:
                error["loc"] = ("text", *error["loc"][2:])
        raise
    return JSONResponse(classify_answer(outcome))


def classify_answer(outcome: ClassifyOutcome) -> dict[str, Any]:
    return {
        "model": {"name": outcome.model.name, "version": outcome.model.version},
        "results": [
            {
                "index": index,
                "label": result.prediction.label,
                "score": result.prediction.score,
                "probabilities": result.prediction.probabilities,
                "screens": {
                    "input": result.input_verdict.to_dict() if result.input_verdict else None,
                    "output": result.output_verdict.to_dict() if result.output_verdict else None,
                },
            }
            for index, result in enumerate(outcome.results)
        ],
        "timing": outcome.timing.to_dict(),
    }


@v1.get("/v1/models", summary="The loaded models and the default", response_model=ModelsResponse)
async def models(pipeline: PipelineDep) -> JSONResponse:
    default = pipeline.default_model
    listing = []
    for name in pipeline.model_names():
        info = pipeline.model_info(name).to_dict()
        info["default"] = name == default
        listing.append(info)
    return JSONResponse({"default": default, "models": listing})


@v1.post(
    "/v1/moderate",
    summary="The guard as a service: Llama Guard's verdict on a text or a conversation",
    response_model=ModerateResponse,
    responses=PROBLEM_RESPONSES,
)
async def moderate(body: ModerateRequest, pipeline: PipelineDep) -> JSONResponse:
    if body.text is not None:
        messages = [Message(role="user", content=body.text)]
    else:
        messages = [Message(role=m.role, content=m.content) for m in body.messages or []]
    started = time.perf_counter()
    try:
        verdict = await pipeline.moderate(messages)
    except InputLimitError as exc:
        if body.text is not None:  # report against the field the caller actually sent
            for error in exc.errors:
                error["loc"] = ("text",)
        raise
    answer = verdict.to_dict()
    answer["timing"] = {"total_ms": round((time.perf_counter() - started) * 1000.0, 3)}
    return JSONResponse(answer)


@ops.get("/healthz", summary="Liveness: the process answers", response_model=HealthResponse)
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@ops.get(
    "/readyz",
    summary="Readiness: models loaded, Ollama reachable, guard model present",
    response_model=ReadinessResponse,
    responses={503: {"model": Problem, "content": {"application/problem+json": {}}}},
)
async def readyz(
    request: Request,
    pipeline: PipelineDep,
    settings: SettingsDep,
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
    if detail:
        checks["detail"] = detail
    if all(check["ok"] for key, check in checks.items() if key != "detail"):
        return JSONResponse({"ready": True, "checks": checks})
    failing = [key for key, check in checks.items() if key != "detail" and not check["ok"]]
    return problem_response(
        request,
        503,
        "not-ready",
        f"failing checks: {', '.join(failing)}",
        ready=False,
        checks=checks,
    )


@ops.get("/metrics", summary="Prometheus metrics (text exposition format)")
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@ops.get("/problems/{slug}", summary="What a problem type means", include_in_schema=True)
async def problem_type(slug: str, request: Request) -> JSONResponse:
    kind = PROBLEM_TYPES.get(slug)
    if kind is None:
        return problem_response(request, 404, None, f"no problem type {slug!r}")
    return JSONResponse(
        {
            "type": kind.uri,
            "title": kind.title,
            "status": kind.status,
            "description": kind.description,
        }
    )
