"""REST request bodies are JSON, declared as such.

A route that reads a body answers a request whose ``Content-Type`` is missing or is not JSON
with 415 ``unsupported-media-type`` (problem+json naming the type it takes, and an ``Accept``
header as RFC 9110 section 15.5.16 suggests) before it reads the body. Without this, FastAPI
parses a body without a Content-Type as JSON anyway, and answers any other type with a 422
"not a valid dictionary" that does not say what was wrong: curl's ``-d`` sends
``application/x-www-form-urlencoded`` unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from service.web.problems import problem_response

JSON_MEDIA_TYPE = "application/json"


def is_json(content_type: str | None) -> bool:
    """``application/json`` or a ``+json`` type, parameters (charset) allowed."""
    if not content_type:
        return False
    media = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return media == JSON_MEDIA_TYPE or (kind == "application" and subtype.endswith("+json"))


def unsupported_media_type(request: Request, content_type: str | None) -> Response:
    sent = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    return problem_response(
        request,
        415,
        "unsupported-media-type",
        f"the request body must be sent as {JSON_MEDIA_TYPE} (Content-Type: {JSON_MEDIA_TYPE}); "
        f"this request has {sent}",
        headers={"Accept": JSON_MEDIA_TYPE},
        accepted=[JSON_MEDIA_TYPE],
    )


class JSONBodyRoute(APIRoute):
    """An APIRoute whose request body, when it takes one, must be declared JSON (415 else).
    Routes without a body are left as they are."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def json_body_only(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            if not is_json(content_type):
                return unsupported_media_type(request, content_type)
            return await handler(request)

        return json_body_only
