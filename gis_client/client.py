"""Clients of the service's REST API over HTTP/2: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio), with the same methods. Both build each request and read
each answer with the same functions below; only the transport call differs.

Cleartext ``http://`` URLs speak HTTP/2 with prior knowledge (h2c), as the service does;
``https://`` negotiates HTTP/2 by ALPN. Error answers raise the
:mod:`gis_client.errors` exception of their problem type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx

from gis_client.errors import error_for
from gis_client.types import Classification, ModelInfo, Verdict

DEFAULT_URL = "http://127.0.0.1:8080"
# Seconds an answer may take: past the service's own REQUEST_TIMEOUT (30 s by default), so a
# slow request ends with the service's 504 (RequestTimeout), not the client's ReadTimeout.
DEFAULT_TIMEOUT = 35.0
CONNECT_TIMEOUT = 5.0
Conversation = Sequence[Mapping[str, str]]  # [{"role": "user"|"assistant", "content": ...}]


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    body: Any = None


def _classify(texts: str | Iterable[str], model: str | None) -> _Call:
    body: dict[str, Any] = {"text": texts} if isinstance(texts, str) else {"texts": list(texts)}
    if model is not None:
        body["model"] = model
    return _Call("POST", "/v1/classify", body)


def _moderate(text: str | None, messages: Conversation | None) -> _Call:
    if (text is None) == (messages is None):
        raise ValueError("give exactly one of text or messages")
    body = {"text": text} if text is not None else {"messages": [dict(m) for m in messages or ()]}
    return _Call("POST", "/v1/moderate", body)


def _read(response: httpx.Response) -> Any:
    """The answer's JSON, or the typed exception of its problem document."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if response.is_success:
        return body
    raise error_for(response.status_code, body, response.headers.get("retry-after"))


def _options(
    base_url: str, token: str | None, timeout: float, headers: Mapping[str, str] | None
) -> dict[str, Any]:
    sent = {"User-Agent": "gis-client", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    cleartext = base_url.startswith("http://")
    # h2c needs prior knowledge (no HTTP/1.1 upgrade dance); TLS negotiates h2 by ALPN.
    return {"base_url": base_url, "headers": sent, "http2": True, "http1": not cleartext,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT))}  # fmt: skip


class Client:
    """Blocking client: ``with Client(url, token=...) as gis: gis.classify("...")``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._http = httpx.Client(**_options(base_url, token, timeout, headers))

    def _send(self, call: _Call) -> Any:
        return _read(self._http.request(call.method, call.path, json=call.body))

    def classify(self, texts: str | Iterable[str], *, model: str | None = None) -> Classification:
        """Label one text or several (one request; at most the service's MAX_BATCH)."""
        return Classification.from_json(self._send(_classify(texts, model)))

    def moderate(self, text: str | None = None, *, messages: Conversation | None = None) -> Verdict:
        """Llama Guard's verdict on a text (as a user's message) or on a conversation."""
        return Verdict.from_json(self._send(_moderate(text, messages)))

    def models(self) -> list[ModelInfo]:
        return [ModelInfo.from_json(m) for m in self._send(_Call("GET", "/v1/models"))["models"]]

    def drift(self) -> dict[str, Any]:
        """The drift monitor's state (``GET /v1/drift``), as sent."""
        answer: dict[str, Any] = self._send(_Call("GET", "/v1/drift"))
        return answer

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``; raises :class:`gis_client.errors.Unavailable` when not ready."""
        answer: dict[str, Any] = self._send(_Call("GET", "/readyz"))
        return answer

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """asyncio client: ``async with AsyncClient(url) as gis: await gis.classify("...")``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(**_options(base_url, token, timeout, headers))

    async def _send(self, call: _Call) -> Any:
        return _read(await self._http.request(call.method, call.path, json=call.body))

    async def classify(
        self, texts: str | Iterable[str], *, model: str | None = None
    ) -> Classification:
        return Classification.from_json(await self._send(_classify(texts, model)))

    async def moderate(
        self, text: str | None = None, *, messages: Conversation | None = None
    ) -> Verdict:
        return Verdict.from_json(await self._send(_moderate(text, messages)))

    async def models(self) -> list[ModelInfo]:
        answer = await self._send(_Call("GET", "/v1/models"))
        return [ModelInfo.from_json(m) for m in answer["models"]]

    async def drift(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(_Call("GET", "/v1/drift"))
        return answer

    async def ready(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(_Call("GET", "/readyz"))
        return answer

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
