"""A2A push notifications: webhook configs kept with the tasks, task updates POSTed to them.

Off unless ``A2A_PUSH_ALLOWED_HOSTS`` names at least one host: a webhook URL is a request the
service makes on a caller's behalf, so only hosts the operator lists are ever called.

- **Configs** (``CreateTaskPushNotificationConfig`` and the 0.3 / HTTP+JSON forms, or a
  ``SendMessage``'s ``configuration``) live in a2a-sdk's config store beside the tasks: in
  memory, or in the task store's SQL database (``DatabasePushNotificationConfigStore`` on the
  same engine), so they outlive a restart and every replica sees them. Each is checked when it
  is set (:class:`CheckedPushConfigStore`): an http(s) URL without credentials in it, whose
  host is allowed, and a token and authentication this agent can send; at most
  :data:`MAX_CONFIGS_PER_TASK` per task. A caller sees and changes only the configs of its own
  tasks (the SDK's owner scope, as for tasks).
- **Delivery** (:class:`PushSender`, a2a-sdk's ``BasePushNotificationSender`` made to): every
  task update is queued and sent off the request path, in order per task, as the JSON of a
  1.0 ``StreamResponse`` (``{"task": ...}``, ``{"statusUpdate": ...}`` or
  ``{"artifactUpdate": ...}``), with the config's ``token`` as ``X-A2A-Notification-Token``
  and its ``authentication`` as the scheme asks (:func:`auth_headers`). Each call is bounded
  by ``A2A_PUSH_TIMEOUT``, never follows a redirect, and is retried ``A2A_PUSH_RETRIES``
  times with exponential backoff after a timeout, a connection failure, 408, 425, 429 or a
  5xx. Before each call the host is resolved again and checked (:class:`PushPolicy`), and the
  connection goes to the address that was checked (guarding against DNS rebinding). A
  config whose last update was given up gets one call per update, no retries, until a call
  succeeds again; at most :data:`MAX_PENDING_PER_TASK` updates of a task wait (and
  :data:`MAX_PENDING` of all tasks), more are dropped.
- **Hosts**: an entry naming a host exactly (``hooks.internal:8443``, ``127.0.0.1:9000``)
  allows it whatever it resolves to; a host matched only by ``*.domain`` or ``*`` must resolve
  to public addresses only (no loopback, link-local, private, shared, multicast, unspecified
  or reserved address).

Failures are logged (task, config id, host; never the URL's path or query, the token or the
credentials) and counted in ``a2a_push_notifications_total{outcome}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import json
import logging
import re
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
from a2a.server.context import ServerCallContext
from a2a.server.tasks import (
    BasePushNotificationSender,
    DatabasePushNotificationConfigStore,
    InMemoryPushNotificationConfigStore,
    PushNotificationConfigStore,
    PushNotificationEvent,
)
from a2a.types import (
    StreamResponse,
    Task,
    TaskArtifactUpdateEvent,
    TaskPushNotificationConfig,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import InvalidParamsError
from google.protobuf.json_format import MessageToDict
from prometheus_client import Counter

from service.a2a.store import TaskStorage
from service.config import Settings, parse_push_host

logger = logging.getLogger("service.a2a.push")

# outcome: sent | rejected (the webhook answered 4xx) | redirected (3xx, not followed) |
# failed (every attempt timed out, could not connect or got 408/425/429/5xx) | refused (the
# destination is not allowed when sending) | dropped (queue full, or the service stopped).
PUSH_NOTIFICATIONS = Counter(
    "a2a_push_notifications_total",
    "A2A push notifications (one per task update and webhook) by outcome.",
    ["outcome"],
)
PUSH_RETRIES = Counter("a2a_push_retries_total", "Webhook calls retried after a failure.")

TOKEN_HEADER = "X-A2A-Notification-Token"
API_KEY_HEADER = "X-API-Key"
SCHEMES = ("Bearer", "Basic", "ApiKey")  # authentication.scheme, case-insensitive
MAX_CONFIGS_PER_TASK = 10
MAX_URL_CHARS = 2048
MAX_SECRET_CHARS = 4096
MAX_ID_CHARS = 256
MAX_BACKOFF = 30.0
MAX_PENDING = 10_000  # task updates waiting to be sent, all tasks together
# ... and of one task: a task whose webhook is slow cannot take the whole pool.
MAX_PENDING_PER_TASK = 256
RETRY_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "guarded-inference-service (A2A push notifications)"

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
# A header value: visible ASCII and spaces, no control characters.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")


class Refused(Exception):
    """A destination, or a config, this agent will not send to (``reason`` says why)."""

    def __init__(self, reason: str, field: str = "url") -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class Unresolved(Exception):
    """The webhook's host did not resolve (maybe for now: a send tries again)."""


Trust = Literal["named", "pattern"]
Resolver = Callable[[str, int], Awaitable[list[str]]]  # host, port -> addresses


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (the event loop's resolver: never blocks it)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart: its host as it must be matched and resolved."""

    url: httpx.URL
    host: str  # lower case, IDNA-encoded, or an address in its canonical form
    port: int
    trust: Trust


@dataclass(frozen=True)
class Destination:
    """Where one webhook call goes: the checked address in place of the host name."""

    url: httpx.URL
    host_header: str
    sni: str | None  # https: the name the server's certificate must carry


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix: IPv4 in the last 32 bits


def _blocked(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is not a public unicast destination. An IPv6 address that carries
    an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64) is judged by that one too: the packets
    may end up there (2002:7f00:1:: is 127.0.0.1 by 6to4); 100.64.0.0/10 is not global."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _blocked(address.ipv4_mapped)
        carried = [address.sixtofour, *(address.teredo or ())]
        if address in _NAT64:
            carried.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(inner is not None and _blocked(inner) for inner in carried):
            return True
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


class PushPolicy:
    """Which webhook URLs this agent calls (the module docstring: Hosts)."""

    def __init__(
        self, allowed_hosts: Sequence[str], timeout: float, resolver: Resolver = resolve
    ) -> None:
        self.timeout = timeout
        self._resolve = resolver
        self._named: set[tuple[str, int | None]] = set()
        self._patterns: list[tuple[str, int | None]] = []
        for entry in allowed_hosts:
            host, port = parse_push_host(entry)
            if host == "*" or host.startswith("*."):
                self._patterns.append((host, port))
            else:
                self._named.add((host, port))

    @property
    def enabled(self) -> bool:
        return bool(self._named or self._patterns)

    def target(self, url: str) -> Target:
        """``url`` taken apart, or :class:`Refused` when it is no URL this agent calls."""
        if not url:
            raise Refused("url is required")
        if len(url) > MAX_URL_CHARS:
            raise Refused(f"url is longer than {MAX_URL_CHARS} characters")
        try:
            parsed = httpx.URL(url)
            raw_host = parsed.raw_host.decode("ascii")
            port = parsed.port
        except (httpx.InvalidURL, UnicodeError, ValueError, TypeError):
            raise Refused("url is not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise Refused("url must be an http or https URL")
        if parsed.userinfo:
            raise Refused("url must not hold credentials: send them as authentication")
        if port is not None and not 0 < port < 65536:
            raise Refused("url has no valid port")
        host = _host(raw_host)
        port = port or (443 if parsed.scheme == "https" else 80)
        trust = self._trust(host, port)
        if trust is None:
            raise Refused(
                f"url: {_shown(host, port)} is not a host this agent sends push notifications "
                "to (the operator lists them in A2A_PUSH_ALLOWED_HOSTS)"
            )
        return Target(parsed, host, port, trust)

    def _trust(self, host: str, port: int) -> Trust | None:
        if (host, port) in self._named or (host, None) in self._named:
            return "named"
        for pattern, allowed_port in self._patterns:
            if allowed_port not in (None, port):
                continue
            if pattern == "*" or host.endswith(pattern[1:]):
                return "pattern"
        return None

    async def check(self, url: str) -> None:
        """Refused unless ``url`` may be set as a webhook now (a host matched by a pattern
        must resolve to public addresses only)."""
        target = self.target(url)
        if target.trust == "pattern":
            try:
                await self._addresses(target)
            except Unresolved:
                raise Refused(f"url: {_shown(target.host, target.port)} does not resolve") from None

    async def destinations(self, url: str) -> list[Destination]:
        """Where a call to ``url`` may go now: the host checked again and resolved, each
        address it resolved to (every one of them allowed) in place of its name."""
        target = self.target(url)
        port = target.url.port
        named_host = f"[{target.host}]" if ":" in target.host else target.host
        sni = target.host if target.url.scheme == "https" and not _is_address(target.host) else None
        return [
            Destination(
                url=target.url.copy_with(host=str(address), port=target.port),
                host_header=named_host if port is None else f"{named_host}:{port}",
                sni=sni,
            )
            for address in await self._addresses(target)
        ]

    async def _addresses(
        self, target: Target
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        if _is_address(target.host):
            addresses = [ipaddress.ip_address(target.host)]
        else:
            try:
                async with asyncio.timeout(self.timeout):
                    resolved = await self._resolve(target.host, target.port)
            except (OSError, TimeoutError, UnicodeError):
                raise Unresolved(target.host) from None
            addresses = []
            for text in resolved:
                with contextlib.suppress(ValueError):
                    address = ipaddress.ip_address(text.split("%", 1)[0])
                    if address not in addresses:
                        addresses.append(address)
            if not addresses:
                raise Unresolved(target.host)
        if target.trust == "pattern" and any(_blocked(address) for address in addresses):
            raise Refused(
                f"url: {_shown(target.host, target.port)} resolves to an address that is not "
                "public (loopback, link-local, private, ...); only hosts named exactly in "
                "A2A_PUSH_ALLOWED_HOSTS may"
            )
        return addresses


def _host(raw: str) -> str:
    """A URL's host as matched against the allowlist (lower case, no trailing dot, an
    address in its canonical form)."""
    host = raw.lower().rstrip(".")
    if _is_address(host):
        return ipaddress.ip_address(host).compressed
    if not host or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise Refused("url has no valid host")
    return host


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- configs -------------------------------------------------------------------------------


def auth_headers(config: TaskPushNotificationConfig) -> dict[str, str]:
    """The headers a webhook call for ``config`` carries: the token as
    ``X-A2A-Notification-Token``, and the authentication as its scheme says: ``Bearer`` as
    ``Authorization: Bearer <credentials>``; ``Basic`` as ``Authorization: Basic`` and the
    credentials base64-encoded when they are ``user:password`` (as given when they are the
    base64 of it already); ``ApiKey`` as ``X-API-Key: <credentials>``. :class:`Refused` for
    anything this agent cannot send (another scheme, no credentials, control characters)."""
    headers: dict[str, str] = {}
    if config.token:
        if len(config.token) > MAX_SECRET_CHARS or not _HEADER_VALUE.fullmatch(config.token):
            raise Refused("token must be printable ASCII, at most 4096 characters", "token")
        headers[TOKEN_HEADER] = config.token
    if not config.HasField("authentication"):
        return headers
    auth = config.authentication
    scheme = auth.scheme.strip().lower()
    credentials = auth.credentials
    if not scheme and not credentials:
        return headers  # an empty authentication: nothing to send
    if scheme not in {name.lower() for name in SCHEMES}:
        raise Refused(
            f"authentication.scheme {auth.scheme!r} is not one this agent sends; "
            f"use one of {', '.join(SCHEMES)}",
            "authentication.scheme",
        )
    if not credentials:
        raise Refused(
            f"authentication.credentials are required for the {auth.scheme} scheme",
            "authentication.credentials",
        )
    if len(credentials) > MAX_SECRET_CHARS or not credentials.isprintable():
        raise Refused(
            "authentication.credentials must be printable, at most 4096 characters",
            "authentication.credentials",
        )
    if scheme == "basic":
        headers["Authorization"] = "Basic " + _basic(credentials)
        return headers
    if not _HEADER_VALUE.fullmatch(credentials):
        raise Refused(
            "authentication.credentials must be printable ASCII", "authentication.credentials"
        )
    if scheme == "bearer":
        headers["Authorization"] = f"Bearer {credentials}"
    else:
        headers[API_KEY_HEADER] = credentials
    return headers


def _basic(credentials: str) -> str:
    if ":" in credentials:  # user:password (base64 has no colon)
        return base64.b64encode(credentials.encode("utf-8")).decode("ascii")
    try:
        decoded = base64.b64decode(credentials, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if b":" not in decoded:
        raise Refused(
            "authentication.credentials for Basic are user:password, or its base64",
            "authentication.credentials",
        )
    return credentials


def config_refusal(config: TaskPushNotificationConfig, policy: PushPolicy) -> Refused | None:
    """Why ``config`` cannot be stored (its URL's host aside: see PushPolicy.check)."""
    if len(config.id) > MAX_ID_CHARS:
        return Refused(f"id is longer than {MAX_ID_CHARS} characters", "id")
    try:
        policy.target(config.url)
        auth_headers(config)
    except Refused as refusal:
        return refusal
    return None


def _invalid(refusal: Refused) -> InvalidParamsError:
    return InvalidParamsError(
        message=f"push notification config refused: {refusal.reason}",
        data={"errors": [{"field": refusal.field, "message": refusal.reason}]},
    )


class CheckedPushConfigStore(PushNotificationConfigStore):
    """A config store that refuses, with invalid params, a config this agent would not
    send to (see the module docstring), and more than :data:`MAX_CONFIGS_PER_TASK` per task."""

    def __init__(self, inner: PushNotificationConfigStore, policy: PushPolicy) -> None:
        self.inner = inner
        self._policy = policy

    async def set_info(
        self,
        task_id: str,
        notification_config: TaskPushNotificationConfig,
        context: ServerCallContext,
    ) -> TaskPushNotificationConfig | None:
        refusal = config_refusal(notification_config, self._policy)
        if refusal is None:
            try:
                await self._policy.check(notification_config.url)
            except Refused as exc:
                refusal = exc
        if refusal is not None:
            logger.warning(
                "push notification config refused",
                extra={"task_id": task_id, "field": refusal.field, "error": refusal.reason},
            )
            raise _invalid(refusal)
        config_id = notification_config.id or task_id  # the SDK's default
        existing = await self.inner.get_info(task_id, context)
        if len(existing) >= MAX_CONFIGS_PER_TASK and config_id not in {c.id for c in existing}:
            raise _invalid(
                Refused(f"a task takes at most {MAX_CONFIGS_PER_TASK} push configs", "id")
            )
        return await self.inner.set_info(task_id, notification_config, context)

    async def get_info(
        self, task_id: str, context: ServerCallContext
    ) -> list[TaskPushNotificationConfig]:
        return await self.inner.get_info(task_id, context)

    async def get_info_for_dispatch(self, task_id: str) -> list[TaskPushNotificationConfig]:
        return await self.inner.get_info_for_dispatch(task_id)

    async def delete_info(
        self, task_id: str, context: ServerCallContext, config_id: str | None = None
    ) -> None:
        await self.inner.delete_info(task_id, context, config_id)


# --- delivery ------------------------------------------------------------------------------

Outcome = Literal["sent", "rejected", "redirected", "failed", "refused", "dropped", "retry"]


def payload(event: PushNotificationEvent) -> bytes:
    """The body of a webhook call: the event as a 1.0 StreamResponse, in JSON."""
    response = StreamResponse()
    if isinstance(event, Task):
        response.task.CopyFrom(event)
    elif isinstance(event, TaskStatusUpdateEvent):
        response.status_update.CopyFrom(event)
    elif isinstance(event, TaskArtifactUpdateEvent):
        response.artifact_update.CopyFrom(event)
    return json.dumps(MessageToDict(response), separators=(",", ":")).encode("utf-8")


class PushSender(BasePushNotificationSender):
    """a2a-sdk's sender, made to queue each update and send it in the background (in order per
    task), with the config's token and authentication, a timeout, no redirects, retries with
    backoff, and the destination checked again before every call."""

    def __init__(
        self,
        config_store: PushNotificationConfigStore,
        policy: PushPolicy,
        *,
        retries: int,
        backoff: float,
        client: httpx.AsyncClient | None = None,
        max_pending: int = MAX_PENDING,
        max_pending_per_task: int = MAX_PENDING_PER_TASK,
    ) -> None:
        super().__init__(
            client
            or httpx.AsyncClient(
                timeout=policy.timeout,
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment: it would bypass the checks
                # Every call on its own connection, to the address just checked (a pooled one
                # may have been opened to another name on the same address).
                limits=httpx.Limits(max_keepalive_connections=0),
                headers={"User-Agent": USER_AGENT},
            ),
            config_store,
        )
        self._policy = policy
        self._retries = retries
        self._backoff = backoff
        self._max_pending = max_pending
        self._max_pending_per_task = max_pending_per_task
        # (task id, config id) of the configs whose last update was given up, oldest first
        # (a dict as an ordered set, at most MAX_PENDING entries).
        self._failing: dict[tuple[str, str], None] = {}
        self._queues: dict[str, deque[PushNotificationEvent]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._pending = 0
        self._closed = False

    async def send_notification(self, task_id: str, event: PushNotificationEvent) -> None:
        """Queue ``event`` (the SDK awaits this in the task's event loop: it must not wait)."""
        self.notify(task_id, event)

    def notify(self, task_id: str, event: PushNotificationEvent) -> None:
        """Queue ``event`` for every push config of ``task_id``; it is sent in the background."""
        queue = self._queues.get(task_id)
        why = (
            "stopping"
            if self._closed
            else "queue full"
            if self._pending >= self._max_pending
            else "task's queue full"
            if queue is not None and len(queue) >= self._max_pending_per_task
            else None
        )
        if why is not None:
            PUSH_NOTIFICATIONS.labels("dropped").inc()
            logger.warning("push notification dropped", extra={"task_id": task_id, "why": why})
            return
        copy = type(event)()
        copy.CopyFrom(event)
        if queue is None:
            queue = self._queues[task_id] = deque()
        queue.append(copy)
        self._pending += 1
        if task_id not in self._workers:
            worker = asyncio.create_task(self._drain(task_id), name=f"a2a-push:{task_id}")
            self._workers[task_id] = worker

    def notify_end(self, task: Task) -> None:
        """Queue the status of a task the store ended (interrupted, or idle too long)."""
        update = TaskStatusUpdateEvent(
            task_id=task.id, context_id=task.context_id, status=task.status
        )
        self.notify(task.id, update)

    async def _drain(self, task_id: str) -> None:
        """Send the queued updates of one task, in order, until none is left."""
        queue = self._queues[task_id]
        try:
            while queue:
                # One look-up of the task's configs for the updates queued so far.
                batch = len(queue)
                try:
                    configs = await self._config_store.get_info_for_dispatch(task_id)
                except Exception:
                    configs = None
                    logger.exception("reading push configs failed", extra={"task_id": task_id})
                for _ in range(batch):
                    event = queue.popleft()
                    self._pending -= 1
                    if configs is None:
                        PUSH_NOTIFICATIONS.labels("failed").inc()
                    elif configs:
                        body = payload(event)
                        await asyncio.gather(
                            *(self._deliver(task_id, body, config) for config in configs)
                        )
        finally:
            if queue:  # cancelled at shutdown
                PUSH_NOTIFICATIONS.labels("dropped").inc(len(queue))
                self._pending -= len(queue)
            self._queues.pop(task_id, None)
            self._workers.pop(task_id, None)

    async def _deliver(self, task_id: str, body: bytes, config: TaskPushNotificationConfig) -> None:
        attempts, detail, outcome = 0, "", "failed"
        key = (task_id, config.id)
        # A webhook that just failed every attempt is not retried until it answers again:
        # each update would otherwise hold the task's queue for all the retries.
        retries = 0 if key in self._failing else self._retries
        try:
            pause = 0.0
            for attempt in range(retries + 1):
                if attempt:
                    PUSH_RETRIES.inc()
                    await asyncio.sleep(pause)
                attempts += 1
                result, detail, retry_after = await self._attempt(config, body)
                if result != "retry":
                    outcome = result
                    break
                pause = min(self._backoff * 2**attempt, MAX_BACKOFF)
                if retry_after is not None:
                    pause = max(pause, min(retry_after, MAX_BACKOFF))
        except asyncio.CancelledError:
            PUSH_NOTIFICATIONS.labels("dropped").inc()
            raise
        except Exception as exc:  # never into the task's event loop
            outcome, detail = "failed", type(exc).__name__
            logger.exception("push notification failed", extra={"task_id": task_id})
        PUSH_NOTIFICATIONS.labels(outcome).inc()
        self._failing.pop(key, None)
        if outcome == "failed":
            self._failing[key] = None
            if len(self._failing) > self._max_pending:
                del self._failing[next(iter(self._failing))]
        extra = {
            "task_id": task_id,
            "push_config_id": config.id,
            "host": _safe_host(config.url),
            "outcome": outcome,
            "attempts": attempts,
            "detail": detail,
        }
        if outcome == "sent":
            logger.debug("push notification sent", extra=extra)
        else:
            logger.warning("push notification not delivered", extra=extra)

    async def _attempt(
        self, config: TaskPushNotificationConfig, body: bytes
    ) -> tuple[Outcome, str, float | None]:
        """One webhook call: its outcome ("retry" for one worth repeating), a detail for the
        log (a status or an error kind) and the Retry-After seconds the webhook asked for."""
        try:
            async with asyncio.timeout(self._policy.timeout):
                headers = {**auth_headers(config), "Content-Type": "application/json"}
                destinations = await self._policy.destinations(config.url)
                for index, destination in enumerate(destinations):
                    extensions = {"sni_hostname": destination.sni} if destination.sni else None
                    request = self._client.build_request(
                        "POST",
                        destination.url,
                        content=body,
                        headers={**headers, "Host": destination.host_header},
                        extensions=extensions,
                    )
                    try:
                        # The answer's body is not read: only its status counts.
                        response = await self._client.send(request, stream=True)
                    except httpx.ConnectError:
                        if index == len(destinations) - 1:
                            raise
                        continue  # the host's next address
                    await response.aclose()
                    break
        except Refused as exc:
            return "refused", exc.reason, None
        except Unresolved:
            return "retry", "host did not resolve", None
        except TimeoutError:
            return "retry", "timeout", None
        except httpx.TimeoutException:
            return "retry", "timeout", None
        except httpx.HTTPError as exc:
            return "retry", type(exc).__name__, None
        status = response.status_code
        if 200 <= status < 300:
            return "sent", str(status), None
        if 300 <= status < 400:
            return "redirected", f"{status} (redirects are not followed)", None
        if status in RETRY_STATUSES or status >= 500:
            return "retry", str(status), _retry_after(response.headers.get("retry-after"))
        return "rejected", str(status), None

    @property
    def pending(self) -> int:
        """Task updates queued and not yet taken up for sending."""
        return self._pending

    async def aclose(self, grace: float) -> None:
        """Stop taking updates; give those under way ``grace`` seconds, then drop the rest."""
        self._closed = True
        workers = list(self._workers.values())
        if workers:
            _, late = await asyncio.wait(workers, timeout=grace)
            if late:
                logger.warning(
                    "push notifications dropped at shutdown",
                    extra={"tasks": len(late), "updates": self._pending},
                )
            for worker in late:
                worker.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._client.aclose()


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdecimal():
        return float(value.strip())
    return None


def _safe_host(url: str) -> str:
    """The host of a webhook URL, for the log (never its path, query or user info)."""
    try:
        return httpx.URL(url).host or "?"
    except (httpx.InvalidURL, ValueError, TypeError):
        return "?"


# --- wiring --------------------------------------------------------------------------------


@dataclass
class PushNotifications:
    """The config store and the sender, for the request handler; None when push is off."""

    store: CheckedPushConfigStore
    sender: PushSender
    grace: float

    async def aclose(self) -> None:
        await self.sender.aclose(self.grace)


def create_push(settings: Settings, storage: TaskStorage) -> PushNotifications | None:
    """Push notifications as the settings ask (None when A2A_PUSH_ALLOWED_HOSTS is empty),
    their configs kept where ``storage`` keeps the tasks."""
    policy = PushPolicy(settings.a2a_push_allowed_hosts, settings.a2a_push_timeout)
    if not policy.enabled:
        return None
    inner: PushNotificationConfigStore
    if storage.engine is not None:
        inner = DatabasePushNotificationConfigStore(storage.engine)
    else:
        inner = InMemoryPushNotificationConfigStore()
    storage.attach_push_configs(inner)
    store = CheckedPushConfigStore(inner, policy)
    sender = PushSender(
        store,
        policy,
        retries=settings.a2a_push_retries,
        backoff=settings.a2a_push_retry_backoff,
    )
    storage.on_end = sender.notify_end
    return PushNotifications(store, sender, grace=settings.a2a_push_timeout)
