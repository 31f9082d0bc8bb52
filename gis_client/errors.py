"""The service's problem documents (RFC 9457, ``application/problem+json``) as exceptions,
one class per problem type (see docs/errors.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gis_client.types import Category, categories_of


class ServiceError(Exception):
    """An error answer of the service. ``problem`` is the document as sent; ``slug`` the
    last part of its ``type`` (``content-blocked``), empty for ``about:blank``."""

    def __init__(self, status: int, problem: Mapping[str, Any], retry_after: float | None) -> None:
        self.status = status
        self.problem = problem
        self.type = str(problem.get("type", "about:blank"))
        self.slug = self.type.rsplit("/problems/", 1)[1] if "/problems/" in self.type else ""
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", ""))
        self.request_id = problem.get("request_id")
        self.retry_after = retry_after
        super().__init__(f"{status} {self.title}: {self.detail}".strip())


class ContentBlocked(ServiceError):
    """The guard judged a text (``stage == "input"``) or the model's answer
    (``"output"``) unsafe; nothing was returned for any text of the request."""

    @property
    def stage(self) -> str:
        return str(self.problem.get("stage", ""))

    @property
    def categories(self) -> tuple[Category, ...]:
        return categories_of(self.problem.get("categories"))

    @property
    def indices(self) -> list[int]:
        return [int(index) for index in self.problem.get("indices", ())]


class Unauthorized(ServiceError):
    """The bearer token is missing or wrong (the service runs with API_TOKENS)."""


class NotFound(ServiceError):
    """No such route, or (``ModelNotFound``) no such model."""


class ModelNotFound(NotFound):
    @property
    def available(self) -> list[str]:
        return [str(name) for name in self.problem.get("available", ())]


class BodyTooLarge(ServiceError):
    """The request body is over the service's MAX_BODY_BYTES."""


class UnsupportedMediaType(ServiceError):
    """The request was not sent as JSON."""


class InvalidRequest(ServiceError):
    """The request does not fit the schema or breaks a limit (too many texts, too long)."""

    @property
    def errors(self) -> list[Mapping[str, Any]]:
        return list(self.problem.get("errors", ()))


class Unavailable(ServiceError):
    """The guard, the chat model or the service is not available now; retry after
    ``retry_after`` seconds (None: the service named no time)."""

    @property
    def kind(self) -> str:
        return str(self.problem.get("kind", ""))


class GuardUnavailable(Unavailable):
    """The guard gave no verdict (Ollama down, a timeout, an answer that is not a verdict):
    the service fails closed."""


class ChatUnavailable(Unavailable):
    """The chat model could not answer, or chat is off."""


class RequestTimeout(Unavailable):
    """The request took longer than the service's REQUEST_TIMEOUT."""


_BY_SLUG: dict[str, type[ServiceError]] = {
    "content-blocked": ContentBlocked,
    "model-not-found": ModelNotFound,
    "body-too-large": BodyTooLarge,
    "unsupported-media-type": UnsupportedMediaType,
    "validation-error": InvalidRequest,
    "guard-unavailable": GuardUnavailable,
    "chat-unavailable": ChatUnavailable,
    "not-ready": Unavailable,
    "request-timeout": RequestTimeout,
}
_BY_STATUS: dict[int, type[ServiceError]] = {
    401: Unauthorized,
    404: NotFound,
    413: BodyTooLarge,
    415: UnsupportedMediaType,
    422: InvalidRequest,
    503: Unavailable,
    504: RequestTimeout,
}


def error_for(status: int, body: Any, retry_after_header: str | None) -> ServiceError:
    """The exception for an error answer: by its problem type, else by its status."""
    problem: Mapping[str, Any] = body if isinstance(body, Mapping) else {"detail": str(body)}
    slug = str(problem.get("type", "")).rsplit("/problems/", 1)[-1]
    kind = _BY_SLUG.get(slug) or _BY_STATUS.get(status, ServiceError)
    return kind(status, problem, _seconds(retry_after_header, problem.get("retry_after")))


def _seconds(header: str | None, member: Any) -> float | None:
    for value in (header, member):
        if value is None:
            continue
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None
