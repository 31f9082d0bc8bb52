"""The composition root: settings, model registry, scanner and pipeline are built here, once,
and handed to both front ends (REST in :mod:`service.rest`, A2A in :mod:`service.a2a`), which
never import each other and reach the models and the guard only through the pipeline.

``create_app`` loads the models before the app exists (blocking: it runs before serving
starts); the lifespan warms them up, starts the guard-model pull when asked, and closes
everything at shutdown. Tests may pass their own registry or scanner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI

from service.a2a.mount import mount_a2a
from service.chat.model import ChatModel
from service.config import Settings, get_settings
from service.core.pipeline import GuardedPipeline
from service.drift.monitor import DriftMonitor
from service.guard.llama_guard import LlamaGuard
from service.guard.scanner import Scanner
from service.rest.routes import create_routers
from service.web.auth import install_auth
from service.web.cors import AllowedOriginsCORS
from service.web.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.web.pages import install_pages
from service.web.problems import install_problem_handlers

if TYPE_CHECKING:
    from service.models.registry import ModelRegistry

logger = logging.getLogger("service.app")

VERSION = "0.1.0"
DESCRIPTION = """
Sentiment classifiers (a quantized CNN and a Switch-Transformer MoE) behind a guardrail:
every text and every answer is screened by Llama Guard 3 on Ollama; when the guard
cannot answer, the service refuses (fail closed). Errors are RFC 9457 problem documents.
"""


def load_registry(settings: Settings) -> ModelRegistry:
    """Load the configured models (all shipped artifacts when MODELS is empty)."""
    from service.models.registry import ModelRegistry

    root = Path(settings.artifacts_dir) if settings.artifacts_dir else None
    registry = ModelRegistry.load(
        names=settings.models or None,
        root=root,
        adapters_root=Path(settings.adapters_dir) if settings.adapters_dir else None,
        merge=settings.adapters_merge,
    )
    if settings.default_model not in registry.names():
        raise RuntimeError(
            f"DEFAULT_MODEL {settings.default_model!r} is not among the loaded models "
            f"{registry.names()}"
        )
    return registry


async def _pull_guard_model(guard: LlamaGuard) -> None:
    try:
        await guard.ensure_model()
    except Exception:
        logger.exception("pulling the guard model failed")


def create_app(
    settings: Settings | None = None,
    *,
    registry: ModelRegistry | None = None,
    scanner: Scanner | None = None,
) -> FastAPI:
    """The ASGI application. ``registry``/``scanner`` default to loading from ``settings``."""
    settings = settings or get_settings()
    deadline = settings.guard_deadline_warning()
    if deadline:
        logger.warning("%s", deadline)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    models = registry or load_registry(settings)
    owned_scanner = scanner is None
    the_scanner: Scanner = scanner if scanner is not None else LlamaGuard(settings)
    chat = ChatModel(settings) if settings.chat_model else None
    drift = DriftMonitor.for_registry(settings, models) if settings.drift_enabled else None
    pipeline = GuardedPipeline(models, the_scanner, settings, chat, drift)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        pull: asyncio.Task[None] | None = None
        if settings.guard_pull and isinstance(the_scanner, LlamaGuard):
            # Pulling can take minutes; /readyz says "not ready" until the model is present.
            pull = asyncio.create_task(_pull_guard_model(the_scanner))
        await pipeline.warm_up()
        # The drift checks run in this background task, never in a request's await chain.
        checker = asyncio.create_task(drift.run()) if drift is not None else None
        logger.info(
            "started",
            extra={"models": models.names(), "default_model": settings.default_model},
        )
        try:
            yield
        finally:
            if pull is not None and not pull.done():
                pull.cancel()
            if checker is not None:
                checker.cancel()
            await pipeline.aclose()
            if owned_scanner:
                await the_scanner.aclose()
            logger.info("stopped")

    app = FastAPI(
        title="Guarded Inference Service",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # install_pages serves /docs and /redoc with local assets
        redoc_url=None,
    )
    install_problem_handlers(app)
    install_pages(app)  # /docs, /redoc and the /ui playground, no CDN
    for router in create_routers(pipeline, settings):
        app.include_router(router)
    mount_a2a(app, pipeline, settings)  # the A2A agent: card, JSON-RPC and HTTP+JSON routes
    install_auth(app, settings)  # bearer tokens (API_TOKENS) on everything but open paths
    # Added last = outermost: the request id exists before the body limit can refuse.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout=settings.body_timeout,
    )
    if settings.cors_allow_origins:  # outside auth: a preflight carries no token
        app.add_middleware(AllowedOriginsCORS, origins=settings.cors_allow_origins)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)
    return app
