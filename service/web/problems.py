"""Errors as RFC 9457 problem documents (``application/problem+json``).

Every refusal the service makes has a problem type under ``/problems/<slug>`` (a relative URI
reference, resolved against the service's own URL), read from the one error table
(:data:`service.core.errors.ERRORS`; GET on a type returns its description). Plain HTTP errors
without extra meaning (unknown route, wrong method) use ``about:blank`` with the status
phrase as title, as the RFC recommends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.core.errors import ERRORS, InternalError, ServiceError, shown
from service.core.limits import LimitExceeded, Violation
from service.logging import get_request_id

MESSAGE_CHARS = 500  # of one validation error's message
LOC_CHARS = 100  # of one part of an error's location (a caller's key names it)
LISTED_ERRORS = 50  # validation errors listed in one answer (each unknown key makes one)

logger = logging.getLogger("service.web")

PROBLEM_JSON = "application/problem+json"

# Members a front end adds to the problem documents of some of its paths, whoever renders
# them (a route, the auth middleware, the body limit): path -> (member name, builder). The
# OpenAI-compatible routes add OpenAI's "error" object (service/rest/openai.py).
ProblemMember = Callable[[int, str | None, str, Mapping[str, Any]], dict[str, Any]]
_PATH_MEMBERS: dict[str, tuple[str, ProblemMember]] = {}


def add_problem_member(path: str, name: str, build: ProblemMember) -> None:
    """Give every problem document answered at ``path`` the member ``name``, built from the
    status, the problem type's slug, the detail and the extensions."""
    _PATH_MEMBERS[path] = (name, build)


def problem_response(
    request: Request | None,
    status: int,
    slug: str | None,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    path: str | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A problem+json response; ``slug=None`` means ``about:blank``."""
    if slug is None:
        type_uri, default_title = "about:blank", HTTPStatus(status).phrase
    else:
        spec = ERRORS[slug]
        type_uri, default_title = spec.uri, spec.title
    body: dict[str, Any] = {
        "type": type_uri,
        "title": title or default_title,
        "status": status,
        "detail": detail,
        "instance": path if path is not None else (request.url.path if request else ""),
    }
    request_id = get_request_id()
    if request_id:
        body["request_id"] = request_id
    body.update(extensions)
    member = _PATH_MEMBERS.get(body["instance"])
    if member is not None:
        name, build = member
        body[name] = build(status, slug, detail, extensions)
    return JSONResponse(
        jsonable_encoder(body), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def _clean_errors(errors: Any, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors without the echoed input (it can be megabytes) or the docs URL; a
    validator's own error is in ``msg`` once, not again in ``ctx``, and no value is repeated
    at length."""
    cleaned = []
    for error in errors[:LISTED_ERRORS]:
        location = [part if isinstance(part, int) else shown(part, LOC_CHARS)
                    for part in error.get("loc", ())]  # fmt: skip
        item: dict[str, Any] = {
            "loc": [*prefix, *location],
            "msg": shown(error.get("msg", ""), MESSAGE_CHARS),
            "type": error.get("type", ""),
        }
        context = {
            key: shown(value) for key, value in (error.get("ctx") or {}).items() if key != "error"
        }
        if context:
            item["ctx"] = context
        cleaned.append(item)
    return cleaned


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    errors = _clean_errors(found)
    if any(error["type"] == "json_invalid" for error in errors):
        detail = "the request body is not valid JSON"
    else:
        detail = f"{len(found)} problem(s) with the request"
        if len(found) > len(errors):
            detail += f"; the first {len(errors)} are listed"
    return problem_response(request, 422, "validation-error", detail, errors=errors)


def violation_errors(violations: tuple[Violation, ...]) -> list[dict[str, Any]]:
    """Limit violations in pydantic's error shape, located in the request body."""
    errors = []
    for violation in violations:
        error: dict[str, Any] = {
            "loc": ["body", *violation.item],
            "msg": violation.reason,
            "type": violation.code,
        }
        if violation.limit is not None:
            error["ctx"] = {"max_length": str(violation.limit)}
        errors.append(error)
    return errors


def service_error_response(request: Request | None, error: ServiceError, path: str) -> JSONResponse:
    """A core failure as its problem document, read from the one table."""
    spec = error.spec
    extensions = error.details()
    if isinstance(error, LimitExceeded):
        extensions = {"errors": violation_errors(error.violations)}
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    return problem_response(
        request, spec.status, spec.slug, error.message, headers=headers, path=path, **extensions
    )


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return service_error_response(request, exc, request.url.path)


FASTAPI_BODY_ERROR = "There was an error parsing the body"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 413:
        return problem_response(request, 413, "body-too-large", str(exc.detail), headers=headers)
    if exc.status_code == 408:
        return problem_response(request, 408, "body-timeout", str(exc.detail), headers=headers)
    if exc.status_code == 400 and exc.detail == FASTAPI_BODY_ERROR:
        # FastAPI's answer to a body json.loads raised other than JSONDecodeError on: not
        # UTF-8, nested past the recursion limit, an integer over the digit limit. The same
        # 422 as any other body that is not JSON.
        detail = "the request body is not valid JSON"
        error = {
            "loc": ["body"],
            "msg": f"{detail} (UTF-8, nesting, numbers)",
            "type": "json_invalid",
        }
        return problem_response(request, 422, "validation-error", detail, errors=[error])
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return problem_response(request, exc.status_code, None, detail, headers=headers)


def allowed_methods(request: Request) -> str:
    """The methods of the path template that matched. Starlette's 405 names those of the
    first route that matched only, and a template can have one route per method (the A2A
    SDK's routes do)."""
    methods: set[str] = set()
    template = None
    for route in getattr(request.app, "routes", ()):
        route_methods = getattr(route, "methods", None)
        if not route_methods or route.matches(request.scope)[0] is Match.NONE:
            continue
        template = template or getattr(route, "path", None)
        if getattr(route, "path", None) == template:
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    return internal_error_response(request.url.path)


def internal_error_response(path: str) -> JSONResponse:
    """The 500 answer: no stack trace, only the request id to find it in the log."""
    return service_error_response(None, InternalError(), path)


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
