"""Asking any A2A agent something, with the a2a-sdk client over HTTP/2.

:func:`ask` resolves the agent's card from ``<url>/.well-known/agent-card.json``, lets the
SDK's client factory pick the transport the card offers (JSON-RPC or HTTP+JSON, protocol
1.0 or 0.3), sends one text message, and reports every event (task, status updates,
artifacts) to a callback as it arrives. HTTP/2 throughout: negotiated by ALPN on https,
and with prior knowledge (h2c) on plain http unless ``http1=True``.

The bearer token goes only where it was given for: to requests whose origin (scheme, host,
port) is the origin of ``url``, plus the origins in ``send_token_to``; the URLs the remote
card names elsewhere get no ``Authorization`` header unless ``trust_card_urls=True``
(:class:`OriginBearerAuth`, applied per request).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass, field
from typing import Any

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.helpers import get_data_parts, get_text_parts
from a2a.types import (
    AgentCard,
    Artifact,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskState,
)
from a2a.utils.constants import TransportProtocol
from google.protobuf.json_format import MessageToDict

from service.a2a.sdk_compat import card_of
from service.config import Settings

# How long one answer may take: a non-streamed chat turn is answered whole, and the service
# allows it REQUEST_TIMEOUT + CHAT_TIMEOUT (150 s by default); a little more, so that the
# service's own deadline (a typed error) comes first. Connecting gets 10 s.
DEFAULT_TIMEOUT = (
    Settings.model_fields["request_timeout"].default
    + Settings.model_fields["chat_timeout"].default
    + 10.0
)

Printer = Callable[[str], None]

FINAL_STATES = {
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_REJECTED,
    TaskState.TASK_STATE_CANCELED,
}


@dataclass
class Answer:
    """What the agent answered: the last task seen (or a direct message) and its card."""

    card: AgentCard
    task: Task | None = None
    message: Message | None = None
    artifacts: list[Artifact] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.task is None:
            return "message" if self.message is not None else "none"
        return state_name(self.task.status.state)

    @property
    def ok(self) -> bool:
        """Answered: a message, a completed task, or a conversation waiting for the next turn
        (the chat skill's reply ends in input-required)."""
        return self.message is not None or (
            self.task is not None
            and self.task.status.state
            in (TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_INPUT_REQUIRED)
        )


def state_name(state: int) -> str:
    """``TASK_STATE_WORKING`` -> ``working``."""
    return TaskState.Name(state).removeprefix("TASK_STATE_").lower()


Origin = tuple[str, str, int]  # scheme, host, port
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str | httpx.URL) -> Origin:
    """The origin (scheme, host, port) of an http(s) URL, the default port filled in and the
    host in lower case. Raises ValueError for anything else."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a URL: {url!s}: {exc}") from None
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parsed.host:
        raise ValueError(f"not an http:// or https:// URL with a host: {url!s}")
    return scheme, parsed.host.lower(), parsed.port or _DEFAULT_PORTS[scheme]


def origin_text(origin: Origin) -> str:
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == _DEFAULT_PORTS[scheme] else f":{port}")


class OriginBearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>`` on each request to one of ``origins`` (every request
    when ``trust_any``); other requests go without it, and ``withheld`` is told once per
    origin so the user can see why such an agent may answer 401."""

    def __init__(
        self,
        token: str,
        origins: Collection[Origin],
        *,
        trust_any: bool = False,
        withheld: Printer | None = None,
    ) -> None:
        self._token = token
        self.origins = frozenset(origins)
        self.trust_any = trust_any
        self._withheld = withheld
        self._told: set[Origin] = set()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        origin = origin_of(request.url)
        if self.trust_any or origin in self.origins:
            request.headers["Authorization"] = f"Bearer {self._token}"
        elif self._withheld is not None and origin not in self._told:
            self._told.add(origin)
            self._withheld(
                f"note: not sending the token to {origin_text(origin)} (named by the agent's "
                "card, not the URL the token is for); allow it with --send-token-to "
                f"{origin_text(origin)} or --trust-card-urls"
            )
        yield request


def http_client(
    url: str,
    *,
    token: str | None = None,
    http1: bool = False,
    send_token_to: Collection[str] = (),
    trust_card_urls: bool = False,
    withheld: Printer | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> httpx.AsyncClient:
    """An HTTP/2 httpx client for ``url`` (h2c prior knowledge on http:// unless http1). The
    token, when given, is sent only to the origin of ``url`` and to ``send_token_to`` (or
    everywhere with ``trust_card_urls``); see :class:`OriginBearerAuth`."""
    auth = None
    if token:
        origins = {origin_of(url), *(origin_of(extra) for extra in send_token_to)}
        auth = OriginBearerAuth(token, origins, trust_any=trust_card_urls, withheld=withheld)
    prior_knowledge = url.startswith("http://") and not http1
    return httpx.AsyncClient(
        http2=True,
        http1=not prior_knowledge,
        auth=auth,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
    )


def user_message(text: str, skill: str | None = None) -> Message:
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=[Part(text=text)])
    if skill:
        message.metadata.update({"skill": skill})
    return message


async def ask(
    url: str,
    text: str,
    *,
    skill: str | None = None,
    stream: bool = False,
    token: str | None = None,
    http1: bool = False,
    send_token_to: Collection[str] = (),
    trust_card_urls: bool = False,
    out: Printer = print,
    notice: Printer | None = None,
    answer_timeout: float = DEFAULT_TIMEOUT,
) -> Answer:
    """Send ``text`` to the agent at ``url``; report events to ``out``; return the answer.

    ``token`` goes only to the origin of ``url`` and to ``send_token_to`` (origins such as
    ``https://agent.example.com``), or to every URL the card names with ``trust_card_urls``;
    ``notice`` is told when it is withheld from an origin. ``answer_timeout``: seconds one answer
    (or, streaming, the wait for the next event) may take."""
    async with http_client(
        url,
        token=token,
        http1=http1,
        send_token_to=send_token_to,
        trust_card_urls=trust_card_urls,
        withheld=notice,
        timeout=answer_timeout,
    ) as http:
        config = ClientConfig(
            streaming=stream,
            httpx_client=http,
            supported_protocol_bindings=[TransportProtocol.JSONRPC, TransportProtocol.HTTP_JSON],
        )
        client = await ClientFactory(config).create_from_url(url.rstrip("/"))
        answer = Answer(card=card_of(client))  # the card the client was built from
        out(f"agent: {answer.card.name} {answer.card.version}".rstrip())
        request = SendMessageRequest(message=user_message(text, skill))
        async with client:
            async for event in client.send_message(request):
                _report(event, answer, out)
        return answer


def _report(event: StreamResponse, answer: Answer, out: Printer) -> None:
    if event.HasField("task"):
        answer.task = event.task
        out(f"task {event.task.id}: {state_name(event.task.status.state)}")
        _report_status_message(event.task.status.message, out)
        for artifact in event.task.artifacts:
            if not any(a.artifact_id == artifact.artifact_id for a in answer.artifacts):
                answer.artifacts.append(artifact)
                _report_artifact(artifact, out)
    elif event.HasField("status_update"):
        update = event.status_update
        if answer.task is not None:
            answer.task.status.CopyFrom(update.status)
        out(f"status: {state_name(update.status.state)}")
        _report_status_message(update.status.message, out)
    elif event.HasField("artifact_update"):
        artifact = event.artifact_update.artifact
        held = _held(answer.artifacts, artifact.artifact_id)
        if event.artifact_update.append and held is not None:
            # A chunk of an artifact already begun (a streamed chat reply): one artifact.
            _extend(held, artifact)
            if answer.task is not None:
                in_task = _held(answer.task.artifacts, artifact.artifact_id)
                if in_task is not None:
                    _extend(in_task, artifact)
            _report_parts(artifact, out)
            return
        answer.artifacts.append(artifact)
        if answer.task is not None:
            answer.task.artifacts.append(artifact)
        _report_artifact(artifact, out)
    elif event.HasField("message"):
        answer.message = event.message
        for line in get_text_parts(event.message.parts):
            out(f"message: {line}")


def _report_status_message(message: Message, out: Printer) -> None:
    for line in get_text_parts(message.parts):
        out(f"  {line}")
    for data in get_data_parts(message.parts):
        out("  " + json.dumps(data, sort_keys=True))


def _held(artifacts: Any, artifact_id: str) -> Artifact | None:
    return next((a for a in artifacts if a.artifact_id == artifact_id), None)


def _extend(held: Artifact, chunk: Artifact) -> None:
    """Add an appended chunk's parts and metadata to the artifact it continues."""
    held.parts.extend(chunk.parts)
    held.metadata.update(chunk.metadata)


def _report_artifact(artifact: Artifact, out: Printer) -> None:
    out(f"artifact {artifact.name or artifact.artifact_id}:")
    _report_parts(artifact, out)


def _report_parts(artifact: Artifact, out: Printer) -> None:
    for line in get_text_parts(artifact.parts):
        out(f"  {line}")
    for data in get_data_parts(artifact.parts):
        out("  " + json.dumps(data, sort_keys=True))


def answer_json(answer: Answer) -> dict[str, Any]:
    """The final task (or message) as protocol JSON."""
    if answer.task is not None:
        return MessageToDict(answer.task)
    if answer.message is not None:
        return MessageToDict(answer.message)
    return {}
