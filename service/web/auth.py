"""Bearer-token authentication for the whole API (REST /v1 and every A2A route).

With API_TOKENS set (comma-separated, so a new token can be rolled out before the old one is
dropped), every request needs ``Authorization: Bearer <one of the tokens>``; anything else
answers 401 problem+json with ``WWW-Authenticate: Bearer``. Closed by default: only the
paths in :data:`OPEN_PATHS` (probes, metrics, the public agent card, the API docs and the
problem-type pages) stay open. Without API_TOKENS nothing is protected and a warning is
logged at startup.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service.config import Settings
from service.web.problems import problem_response

logger = logging.getLogger("service.auth")

REALM = "guarded-inference"
OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/.well-known/agent-card.json",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
    }
)
OPEN_PREFIXES = ("/problems/",)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def token_is_valid(token: str | None, tokens: Sequence[str]) -> bool:
    """Constant-time comparison against every configured token (no early exit, so the time
    taken does not tell which token, or how much of one, matched)."""
    if not token:
        return False
    given = token.encode()
    valid = False
    for expected in tokens:
        valid |= hmac.compare_digest(given, expected.encode())
    return valid


class BearerAuthMiddleware:
    """Refuses requests to protected paths that lack a valid bearer token."""

    def __init__(self, app: ASGIApp, tokens: Sequence[str]) -> None:
        self.app = app
        self.tokens = tuple(tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        header = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"),
            None,
        )
        token = bearer_token(header)
        if token_is_valid(token, self.tokens):
            await self.app(scope, receive, send)
            return
        if token is None:
            detail = "a valid bearer token is required (Authorization: Bearer <token>)"
            challenge = f'Bearer realm="{REALM}"'
        else:
            detail = "the bearer token is not valid"
            challenge = f'Bearer realm="{REALM}", error="invalid_token"'
        # Read the body before answering: Hypercorn's HTTP/2 connection fails (and takes every
        # other stream with it) when request data arrives for a stream already answered.
        await _drain(receive)
        response = problem_response(
            None,
            401,
            None,
            detail,
            headers={"WWW-Authenticate": challenge},
            path=scope.get("path", ""),
        )
        await response(scope, receive, send)


async def _drain(receive: Receive) -> None:
    """Consume the request body (the body-limit middleware outside still caps it)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Protect ``app`` with API_TOKENS, or warn that it is open."""
    if not settings.api_tokens:
        logger.warning(
            "API_TOKENS is not set: the REST API and the A2A agent accept requests from "
            "anyone who can reach them"
        )
        return
    app.add_middleware(BearerAuthMiddleware, tokens=settings.api_tokens)
    logger.info("bearer-token auth on", extra={"tokens": len(settings.api_tokens)})
