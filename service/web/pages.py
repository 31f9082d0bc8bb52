"""The service's own pages: the API docs (``/docs`` Swagger UI, ``/redoc`` ReDoc) and the
playground (``/ui``), with every asset served by the service itself, so they work offline and
behind a firewall (no CDN, no web fonts).

The Swagger UI and ReDoc bundles come from the ``fastapi-offline`` package (a maintained
PyPI package that ships swagger-ui-dist 5 and redoc 2 as files; only its static folder is
used, with FastAPI's own ``get_swagger_ui_html`` and ``get_redoc_html``). The playground is
plain HTML, CSS and JavaScript in ``service/web/static/`` (no build step, no inline script:
it is served with a Content-Security-Policy that allows only the service's own origin). It
calls the public REST API like any client, with the token typed into it as a bearer token.

Every asset is one route, ``/static/{name}``, over a fixed list of files (a bounded metrics
label; anything else is a 404). These paths are open like ``/docs``: the pages hold no data,
the API calls they make carry the token (see :mod:`service.web.auth`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

DOCS_PATH = "/docs"
DOCS_OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
REDOC_PATH = "/redoc"
UI_PATH = "/ui"
STATIC_PREFIX = "/static/"
PAGE_PATHS = frozenset({DOCS_PATH, DOCS_OAUTH2_REDIRECT_PATH, REDOC_PATH, UI_PATH})

UI_DIR = Path(__file__).parent / "static"
DOCS_DIR = Path(str(files("fastapi_offline") / "static"))

# name -> (file, media type, Cache-Control). The docs bundles change only with the package
# version; the playground's files are revalidated.
ASSETS: dict[str, tuple[Path, str, str]] = {
    "swagger-ui-bundle.js": (DOCS_DIR / "swagger-ui-bundle.js", "text/javascript", "max-age=86400"),
    "swagger-ui.css": (DOCS_DIR / "swagger-ui.css", "text/css", "max-age=86400"),
    "redoc.standalone.js": (DOCS_DIR / "redoc.standalone.js", "text/javascript", "max-age=86400"),
    "favicon.png": (DOCS_DIR / "favicon.png", "image/png", "max-age=86400"),
    "ui.js": (UI_DIR / "ui.js", "text/javascript", "no-cache"),
    "ui.css": (UI_DIR / "ui.css", "text/css", "no-cache"),
}
# The docs pages load images only from here: ReDoc shows its vendor's logo from a CDN, and
# this keeps the browser from asking for it (the bundles need no other CDN).
DOCS_CSP = "img-src 'self' data:"
# The playground loads only its own files and calls only its own origin.
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def install_pages(app: FastAPI) -> None:
    """Add the docs, the playground and their assets to ``app`` (created with
    ``docs_url=None, redoc_url=None``)."""
    openapi_url = app.openapi_url or "/openapi.json"
    ui_html = (UI_DIR / "ui.html").read_text(encoding="utf-8")

    def static(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{STATIC_PREFIX}{name}"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + DOCS_OAUTH2_REDIRECT_PATH,
            swagger_js_url=static(request, "swagger-ui-bundle.js"),
            swagger_css_url=static(request, "swagger-ui.css"),
            swagger_favicon_url=static(request, "favicon.png"),
            # No spec validator badge (it would send the document to swagger.io).
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get(DOCS_OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=request.scope.get("root_path", "") + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=static(request, "redoc.standalone.js"),
            redoc_favicon_url=static(request, "favicon.png"),
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get(UI_PATH, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(
            ui_html, headers={"Content-Security-Policy": UI_CSP, "Cache-Control": "no-cache"}
        )

    @app.get(STATIC_PREFIX + "{name}", include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        found = ASSETS.get(name)
        if found is None:
            raise HTTPException(404, f"no asset {name!r}")
        path, media_type, cache = found
        return FileResponse(
            path,
            media_type=media_type,
            headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"},
        )
