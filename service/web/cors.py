"""CORS for the browser origins in CORS_ALLOW_ORIGINS, and for no one else.

Starlette's CORSMiddleware does the work for a request whose ``Origin`` is allowed: it
answers the preflight (``OPTIONS`` with ``Access-Control-Request-Method``) itself, 200 with
the allowed methods and headers, and adds ``Access-Control-Allow-Origin`` to the answers of
the others, problem documents and 401s included, so a page can read why it was refused. A
request without an ``Origin``, or from an origin not in the list, goes past it untouched: it
gets no CORS header at all (Starlette alone would answer such a preflight 400 with the allowed
methods). No credentials mode: a page sends its bearer token in ``Authorization`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

# What the REST API and the A2A agent use: their methods and the request headers they read.
ALLOW_METHODS = ("GET", "HEAD", "POST", "DELETE")
ALLOW_HEADERS = ("Authorization", "Content-Type", "A2A-Version", "A2A-Extensions", "X-Request-ID")
# Response headers a page may read besides the CORS-safelisted ones.
EXPOSE_HEADERS = ("X-Request-ID", "Retry-After", "WWW-Authenticate")
MAX_AGE = 600  # seconds a browser may reuse a preflight's answer


class AllowedOriginsCORS:
    """CORS headers for ``origins`` (``*``: any origin) only."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=ALLOW_METHODS,
            allow_headers=ALLOW_HEADERS,
            expose_headers=EXPOSE_HEADERS,
            max_age=MAX_AGE,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._allowed(scope):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        for key, value in scope.get("headers", ()):
            if key == b"origin":
                return self.any_origin or value.decode("latin-1").lower() in self.origins
        return False
