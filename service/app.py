"""create_app(settings): the FastAPI application, its wiring and its lifespan.

At startup the lifespan loads the models (in a worker thread: it is blocking I/O and CPU),
opens the guard client, and builds the GuardedPipeline, the only object the routes use to
reach a model or the guard. Tests may pass their own registry or guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread
from fastapi import FastAPI

from service.a2a.server import mount_a2a
from service.web.auth import install_auth
from service.web.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.web.problems import install_problem_handlers
from service.rest.routes import ops, v1
from service.config import Settings, get_settings
from service.core.pipeline import GuardedPipeline

if TYPE_CHECKING:
    from service.guard import Guard
    from service.models.registry import ModelRegistry

logger = logging.getLogger("service.app")

DESCRIPTION = """
Sentiment classifiers (a quantized CNN and a Switch-Transformer MoE) behind a guardrail:
every text and every answer is screened by Llama Guard 3 on Ollama; when the guard
cannot answer, the service refuses (fail closed). Errors are RFC 9457 problem documents.
"""


def load_registry(settings: Settings) -> ModelRegistry:
    """Load the configured models (all shipped artifacts when MODELS is empty)."""
    from service.models.registry import ModelRegistry

    root = Path(settings.artifacts_dir) if settings.artifacts_dir else None
    registry = ModelRegistry.load(names=settings.models or None, root=root)
    if settings.default_model not in registry.names():
        raise RuntimeError(
            f"DEFAULT_MODEL {settings.default_model!r} is not among the loaded models "
            f"{registry.names()}"
        )
    return registry


async def _pull_guard_model(guard: Guard) -> None:
    try:
        await guard.ensure_model()
    except Exception:
        logger.exception("pulling the guard model failed")


def create_app(
    settings: Settings | None = None,
    *,
    registry: ModelRegistry | None = None,
    guard: Guard | None = None,
) -> FastAPI:
    """The ASGI application. ``registry``/``guard`` default to loading from ``settings``."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        try:
            models = registry or await anyio.to_thread.run_sync(load_registry, settings)
        except Exception as exc:
            logger.error("startup failed: %s: %s", type(exc).__name__, exc)
            raise
        owned_guard = guard is None
        if guard is None:
            from service.guard import Guard

            the_guard = Guard(settings)
        else:
            the_guard = guard
        pull: asyncio.Task[None] | None = None
        if settings.guard_pull:
            # Pulling can take minutes; /readyz says "not ready" until the model is present.
            pull = asyncio.create_task(_pull_guard_model(the_guard))
        app.state.pipeline = GuardedPipeline(models, the_guard, settings)
        await app.state.pipeline.warm_up()
        logger.info(
            "started",
            extra={"models": models.names(), "default_model": settings.default_model},
        )
        try:
            yield
        finally:
            if pull is not None and not pull.done():
                pull.cancel()
            await app.state.pipeline.aclose()
            if owned_guard:
                await the_guard.aclose()
            logger.info("stopped")

    app = FastAPI(
        title="Guarded Inference Service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_problem_handlers(app)
    app.include_router(v1)
    app.include_router(ops)
    mount_a2a(app, settings)  # the A2A agent: card, JSON-RPC and HTTP+JSON routes
    install_auth(app, settings)  # bearer tokens (API_TOKENS) on everything but open paths
    # Added last = outermost: the request id exists before the body limit can refuse.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)
    return app
