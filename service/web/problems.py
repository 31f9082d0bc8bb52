"""Errors as RFC 9457 problem documents (``application/problem+json``).

Every refusal the service makes has a problem type under ``/problems/<slug>`` (a relative URI
reference, resolved against the service's own URL; GET on it returns the description below).
Plain HTTP errors without extra meaning (unknown route, wrong method) use ``about:blank``
with the status phrase as title, as the RFC recommends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.guard.types import GuardError
from service.logging import get_request_id
from service.models.registry import UnknownModelError
from service.core.pipeline import ContentBlocked, InputLimitError, RequestTimeout

logger = logging.getLogger("service.api")

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "/problems/"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    title: str
    status: int
    description: str

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.slug


PROBLEM_TYPES: dict[str, ProblemType] = {
    p.slug: p
    for p in (
        ProblemType(
            "content-blocked",
            "Content blocked by the guard",
            400,
            "Llama Guard judged the input text (stage 'input') or the model's reply to it "
            "(stage 'output') unsafe under the service's policy. 'categories' names the "
            "hazards; 'indices' says which texts of the request were blocked.",
        ),
        ProblemType(
            "validation-error",
            "Request validation failed",
            422,
            "The body is not valid JSON or does not match the schema, or a text or batch "
            "breaks a size limit. 'errors' lists each problem with its location.",
        ),
        ProblemType(
            "body-too-large",
            "Request body too large",
            413,
            "The request body exceeds MAX_BODY_BYTES; the body was not read beyond the limit.",
        ),
        ProblemType(
            "model-not-found",
            "Unknown model",
            404,
            "No model of that name is loaded; 'available' lists the loaded ones.",
        ),
        ProblemType(
            "guard-unavailable",
            "Guard unavailable",
            503,
            "The guard could not give a verdict (unreachable, timed out, error status, or an "
            "answer that is not a verdict). The service fails closed: retry after "
            "'Retry-After' seconds.",
        ),
        ProblemType(
            "request-timeout",
            "Request timed out",
            504,
            "The request was not answered within REQUEST_TIMEOUT seconds.",
        ),
        ProblemType(
            "not-ready",
            "Service not ready",
            503,
            "A readiness check failed; 'checks' says which.",
        ),
        ProblemType(
            "internal-error",
            "Internal server error",
            500,
            "An unexpected error; the log line with this request id has the details.",
        ),
    )
}


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
        kind = PROBLEM_TYPES[slug]
        type_uri, default_title = kind.uri, kind.title
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
    return JSONResponse(
        jsonable_encoder(body), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def _clean_errors(errors: Any, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors without the echoed input (it can be megabytes) or the docs URL."""
    cleaned = []
    for error in errors:
        item: dict[str, Any] = {
            "loc": [*prefix, *error.get("loc", ())],
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        if error.get("ctx"):
            item["ctx"] = {key: str(value) for key, value in error["ctx"].items()}
        cleaned.append(item)
    return cleaned


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _clean_errors(exc.errors())
    if any(error["type"] == "json_invalid" for error in errors):
        detail = "the request body is not valid JSON"
    else:
        detail = f"{len(errors)} problem(s) with the request"
    return problem_response(request, 422, "validation-error", detail, errors=errors)


async def _input_limit(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputLimitError)
    errors = _clean_errors(exc.errors, prefix=("body",))
    return problem_response(request, 422, "validation-error", str(exc), errors=errors)


async def _content_blocked(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ContentBlocked)
    names = ", ".join(f"{c.code} {c.name}" for c in exc.categories)
    what = "the input" if exc.stage == "input" else "the model's reply"
    return problem_response(
        request,
        400,
        "content-blocked",
        f"the guard judged {what} unsafe: {names}",
        stage=exc.stage,
        categories=[{"code": c.code, "name": c.name} for c in exc.categories],
        indices=list(exc.indices),
    )


async def _guard_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GuardError)
    logger.warning("guard unavailable", extra={"kind": exc.kind, "detail": exc.detail})
    return problem_response(
        request,
        503,
        "guard-unavailable",
        f"the guard could not judge the request ({exc.kind}); refusing rather than "
        "answering unscreened",
        headers={"Retry-After": str(exc.retry_after)},
        kind=exc.kind,
        retry_after=exc.retry_after,
    )


async def _unknown_model(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnknownModelError)
    available = sorted(getattr(exc, "available", ()) or ())
    return problem_response(
        request,
        404,
        "model-not-found",
        f"no model named {getattr(exc, 'name', '')!r}; available: {', '.join(available)}",
        model=getattr(exc, "name", None),
        available=available,
    )


async def _timeout(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestTimeout)
    logger.warning("request timed out", extra={"timeout_s": exc.seconds})
    return problem_response(request, 504, "request-timeout", str(exc), headers={"Retry-After": "1"})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 413:
        return problem_response(request, 413, "body-too-large", str(exc.detail), headers=headers)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(request, exc.status_code, None, detail, headers=headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    return internal_error_response(request.url.path)


def internal_error_response(path: str) -> JSONResponse:
    """The 500 answer: no stack trace, only the request id to find it in the log."""
    return problem_response(
        None, 500, "internal-error", "unexpected error while handling the request", path=path
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InputLimitError, _input_limit)
    app.add_exception_handler(ContentBlocked, _content_blocked)
    app.add_exception_handler(GuardError, _guard_error)
    app.add_exception_handler(UnknownModelError, _unknown_model)
    app.add_exception_handler(RequestTimeout, _timeout)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
