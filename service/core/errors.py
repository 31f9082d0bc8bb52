"""One error vocabulary: every failure a caller can be answered with, described once.

:data:`ERRORS` is the table both front ends read. A row names the problem type (a slug under
``/problems/``) with its title, HTTP status and description (REST), and the A2A outcome:
``rejected`` or ``failed`` (the task ends in that state, its status message carrying the
text and the details) or ``invalid-params`` (the request is refused with the protocol's
error before any task exists).

Core failures are :class:`ServiceError` subclasses. Each knows its row (``problem``), the
message a caller sees (``str(error)``) and its details (``details()``, plain JSON values);
front ends render those and restate nothing. Limit violations are the one exception to
"details are the same everywhere": each front end names its own fields (see
:mod:`service.core.limits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from service.guard.scanner import Category, ScanResult

A2AOutcome = Literal["rejected", "failed", "invalid-params"]


@dataclass(frozen=True)
class ErrorSpec:
    """What one kind of failure looks like to a caller, on every front end."""

    slug: str  # problem type: /problems/<slug>
    title: str
    status: int  # HTTP status over REST
    description: str  # what the problem type means (GET /problems/<slug>)
    a2a: A2AOutcome | None  # None: the failure cannot happen on an A2A call
    # The outcome label of pipeline_requests_total for a call that failed this way.
    metric_outcome: str = "error"
    # The text of the A2A task's status message; {message} is the error's message, other fields come
    # from the error's details().
    task_text: str = "{message}"
    a2a_only: bool = False  # never a REST answer (``status`` is then only the HTTP kin)

    @property
    def uri(self) -> str:
        return "/problems/" + self.slug


ERRORS: dict[str, ErrorSpec] = {
    spec.slug: spec
    for spec in (
        ErrorSpec(
            "content-blocked",
            "Content blocked by the guard",
            400,
            "Llama Guard judged the input text (stage 'input') or the model's reply to it "
            "(stage 'output') unsafe under the service's policy. 'categories' names the "
            "hazards; 'indices' says which texts of the request were blocked.",
            a2a="rejected",
            metric_outcome="blocked",
            task_text="rejected: {message}",
        ),
        ErrorSpec(
            "validation-error",
            "Request validation failed",
            422,
            "The body is not valid JSON or does not match the schema, or a text or batch "
            "breaks a size limit. 'errors' lists each problem with its location.",
            a2a="invalid-params",
            metric_outcome="invalid",
        ),
        ErrorSpec(
            "body-too-large",
            "Request body too large",
            413,
            "The request body exceeds MAX_BODY_BYTES; the body was not read beyond the limit.",
            a2a=None,
        ),
        ErrorSpec(
            "unsupported-media-type",
            "Unsupported media type",
            415,
            "The request body is not declared as JSON: its Content-Type is missing or is not "
            "application/json. 'accepted' names the media types the route takes.",
            a2a=None,
        ),
        ErrorSpec(
            "body-timeout",
            "Request body too slow",
            408,
            "The request body did not fully arrive within BODY_TIMEOUT seconds of the request's "
            "start; the request was not processed.",
            a2a=None,
        ),
        ErrorSpec(
            "model-not-found",
            "Unknown model",
            404,
            "No model of that name is loaded; 'available' lists the loaded ones.",
            a2a="invalid-params",
            metric_outcome="invalid",
        ),
        ErrorSpec(
            "guard-unavailable",
            "Guard unavailable",
            503,
            "The guard could not give a verdict (unreachable, timed out, error status, or an "
            "answer that is not a verdict). The service fails closed: retry after "
            "'Retry-After' seconds.",
            a2a="failed",
            metric_outcome="guard_error",
            task_text="{message}; retry after {retry_after} s",
        ),
        ErrorSpec(
            "chat-unavailable",
            "Chat model unavailable",
            503,
            "The chat model could not answer (Ollama unreachable, timed out, an error status, "
            "the model missing, or chat switched off). Nothing unscreened was sent: retry "
            "after 'Retry-After' seconds.",
            a2a="failed",
            metric_outcome="chat_error",
        ),
        ErrorSpec(
            "request-timeout",
            "Request timed out",
            504,
            "The request was not answered within REQUEST_TIMEOUT seconds.",
            a2a="failed",
            metric_outcome="timeout",
        ),
        ErrorSpec(
            "task-interrupted",
            "Task interrupted",
            503,
            "The process running an A2A task stopped before the task finished (a crash or a "
            "kill); the task was ended failed when the service noticed. Send the message "
            "again. Never a REST answer.",
            a2a="failed",
            a2a_only=True,
        ),
        ErrorSpec(
            "task-store-full",
            "Task store full",
            503,
            "The in-memory task store holds as many unfinished A2A tasks as it may (for this "
            "caller, or for all callers together: running tasks and conversations waiting "
            "for input are never forgotten to make room). The new task was ended failed at "
            "once: finish or cancel waiting conversations, or retry after 'Retry-After' "
            "seconds. Never a REST answer.",
            a2a="failed",
            task_text="{message}; retry after {retry_after} s",
            a2a_only=True,
        ),
        ErrorSpec(
            "not-ready",
            "Service not ready",
            503,
            "A readiness check failed; 'checks' says which.",
            a2a=None,
        ),
        ErrorSpec(
            "internal-error",
            "Internal server error",
            500,
            "An unexpected error; the log line with this request id has the details.",
            a2a="failed",
            task_text="internal error; the server log has the details",
        ),
    )
}


SHOWN_CHARS = 100


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A caller's value as an error message repeats it: at most ``limit`` characters (an
    error must not echo, nor the log keep, a megabyte of what it refuses)."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ServiceError(Exception):
    """A failure with a row in :data:`ERRORS`; ``message`` is what the caller is told."""

    problem: ClassVar[str]  # its row in ERRORS
    # Seconds a caller should wait before retrying (REST: the Retry-After header), if any.
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def spec(self) -> ErrorSpec:
        return ERRORS[self.problem]

    def metric_outcome(self) -> str:
        return self.spec.metric_outcome

    def task_text(self) -> str:
        """The A2A task status text for this failure (the table's template, filled in)."""
        return self.spec.task_text.format(message=self.message, **self.details())

    def details(self) -> dict[str, Any]:
        """What the caller is told besides the message (problem extensions over REST, the
        data part of the task's status message over A2A)."""
        return {}


Stage = Literal["input", "output"]


class ContentBlocked(ServiceError):
    """The guard judged an input text, or the reply to it, unsafe under the policy."""

    problem = "content-blocked"

    def __init__(self, stage: Stage, results: dict[int, ScanResult]) -> None:
        self.stage: Stage = stage
        self.results = results  # index of each blocked text -> its screen's result
        self.indices = tuple(sorted(results))
        seen: dict[str, Category] = {}
        for index in self.indices:
            for category in results[index].categories:
                seen.setdefault(category.code, category)
        self.categories: tuple[Category, ...] = tuple(seen.values())
        names = ", ".join(f"{c.code} {c.name}" for c in self.categories)
        what = "the input" if stage == "input" else "the model's reply"
        super().__init__(f"the guard judged {what} unsafe: {names}")

    def metric_outcome(self) -> str:
        return f"blocked_{self.stage}"

    def details(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "categories": [category.to_dict() for category in self.categories],
            "indices": list(self.indices),
        }


class RequestTimeout(ServiceError):
    """The whole call took longer than ``settings.request_timeout``."""

    problem = "request-timeout"
    retry_after = 1

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer within the request timeout of {seconds:g} s")
        self.seconds = seconds


class TaskInterrupted(ServiceError):
    """An A2A task whose process stopped before it finished."""

    problem = "task-interrupted"

    def __init__(self) -> None:
        super().__init__(
            "interrupted: the process running this task stopped before it finished; "
            "send the message again"
        )


class TaskStoreFull(ServiceError):
    """No room for another unfinished A2A task (see the in-memory task store)."""

    problem = "task-store-full"
    retry_after = 5

    def __init__(self, whose: str, limit: str) -> None:
        super().__init__(
            f"the task store holds as many unfinished tasks as it may {whose} ({limit})"
        )
        self.whose = whose
        self.limit = limit

    def details(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}


class ChatUnavailable(ServiceError):
    """The chat model gave no (complete) answer."""

    problem = "chat-unavailable"

    def __init__(self, kind: str, detail: str, *, retry_after: int | None = 5) -> None:
        super().__init__(f"the chat model could not answer ({kind})")
        self.args = (f"chat {kind}: {detail}",)  # str(): for logs; never sent to a caller
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after

    def details(self) -> dict[str, Any]:
        return {"kind": self.kind, "retry_after": self.retry_after}


class InternalError(ServiceError):
    """An unexpected failure; the message never includes its cause (the log has it)."""

    problem = "internal-error"

    def __init__(self) -> None:
        super().__init__("unexpected error while handling the request")
