"""Bearer-token authentication for the whole API (REST /v1 and every A2A route).

With API_TOKENS set (comma-separated ``name:token`` entries; a caller may have two tokens, so
a new token can be rolled out before the old one is dropped), every request needs
``Authorization: Bearer <one of the tokens>``; anything else answers 401 problem+json with
``WWW-Authenticate: Bearer``. Closed by default: only the paths in :data:`OPEN_PATHS` (probes,
metrics, the public agent card, the API docs, the playground page, their static assets and the
problem-type pages) stay open: the pages hold no data, the API calls they make carry a token.
Without API_TOKENS nothing is protected and a warning is logged at startup. With it,
``/openapi.json`` declares the bearer scheme on every protected operation, so the docs'
"Authorize" button sends the token.

Each token has an identity, its name: the caller is set on the request as a Starlette user
(``scope["user"]``), so A2A tasks are stored with it as their owner and every task method
sees only the caller's own tasks; logs name the caller, never the token. An entry without a
name (a bare token) is named ``token-`` and the first 8 hex digits of its SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.authentication import AuthCredentials, SimpleUser
from starlette.types import ASGIApp, Receive, Scope, Send

from service.config import Settings
from service.guard.admission import caller as guard_caller
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
        "/ui",
    }
)
OPEN_PREFIXES = ("/problems/", "/static/")
SECURITY_SCHEME = "bearer"


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def token_identities(entries: Sequence[str]) -> dict[str, str]:
    """API_TOKENS entries (``name:token`` or a bare token) as token -> caller name. Several
    tokens may share a name (one caller rolling a new token out before dropping the old
    one). Raises ValueError for an empty token or a token given twice."""
    identities: dict[str, str] = {}
    for entry in entries:
        name, sep, token = entry.partition(":")
        if not sep or not _NAME.match(name):
            # No name, or what precedes the colon is no name: the whole entry is the token.
            name, token = "", entry
        if not token:
            raise ValueError(f"API_TOKENS entry {name!r} has an empty token")
        name = name or "token-" + hashlib.sha256(token.encode()).hexdigest()[:8]
        if token in identities:
            raise ValueError(f"API_TOKENS has the same token twice ({name!r})")
        identities[token] = name
    return identities


def identify(token: str | None, identities: Mapping[str, str]) -> str | None:
    """The caller a token belongs to, else None. Constant-time against every configured
    token (no early exit, so the time taken does not tell which token, or how much of one,
    matched)."""
    if not token:
        return None
    given = token.encode()
    found: str | None = None
    for expected, name in identities.items():
        if hmac.compare_digest(given, expected.encode()):
            found = name
    return found


def token_is_valid(token: str | None, tokens: Sequence[str]) -> bool:
    """Whether ``token`` is one of the API_TOKENS entries ``tokens``."""
    return identify(token, token_identities(tokens)) is not None


def caller_of(scope: Scope) -> str | None:
    """The authenticated caller's name, when auth is on and the request carried a token."""
    user = scope.get("user")
    return user.username if isinstance(user, SimpleUser) else None


class BearerAuthMiddleware:
    """Refuses requests to protected paths that lack a valid bearer token."""

    def __init__(self, app: ASGIApp, tokens: Sequence[str]) -> None:
        self.app = app
        self.identities = token_identities(tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"),
            None,
        )
        token = bearer_token(header)
        caller = identify(token, self.identities)
        if caller is not None:
            # The caller's identity for everything downstream: the A2A task owner (a2a-sdk
            # reads request.user), the access log, per-caller limits.
            scope["user"] = SimpleUser(caller)
            scope["auth"] = AuthCredentials(["authenticated"])
            token_of_caller = guard_caller.set(caller)  # the guard's per-caller share
            try:
                await self.app(scope, receive, send)
            finally:
                guard_caller.reset(token_of_caller)
            return
        if is_open(scope.get("path", "")):
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
    identities = token_identities(settings.api_tokens)  # a malformed list fails at start
    app.add_middleware(BearerAuthMiddleware, tokens=settings.api_tokens)
    document_bearer(app)
    logger.info("bearer-token auth on", extra={"callers": sorted(identities.values())})


def document_bearer(app: FastAPI) -> None:
    """Declare the bearer scheme in ``app.openapi()`` and require it on every operation
    whose path is not open (call it after every other change to the document)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        components = schema.setdefault("components", {})
        schemes = components.setdefault("securitySchemes", {})
        if SECURITY_SCHEME not in schemes:
            schemes[SECURITY_SCHEME] = {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the API_TOKENS (Authorization: Bearer <token>).",
            }
            for path, item in schema.get("paths", {}).items():
                if is_open(path):
                    continue
                for operation in item.values():
                    if isinstance(operation, dict) and "responses" in operation:
                        operation["security"] = [{SECURITY_SCHEME: []}]
        return schema

    # FastAPI's documented way to extend the schema.
    app.openapi = openapi  # type: ignore[method-assign]
