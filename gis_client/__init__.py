"""A small Python client for the Guarded Inference Service's REST API (HTTP/2, sync and
async, typed results, problem documents as typed exceptions).

    from gis_client import Client, ContentBlocked

    with Client("http://127.0.0.1:8080", token="...") as gis:
        try:
            print(gis.classify(["Loved it.", "Dull."]).labels)
        except ContentBlocked as refused:
            print(refused.stage, [c.code for c in refused.categories])

For chat, use the ``openai`` package against ``/v1``; for A2A, a2a-sdk's client (see
``examples/``).
"""

from gis_client.client import AsyncClient, Client
from gis_client.errors import (
    BodyTooLarge,
    ChatUnavailable,
    ContentBlocked,
    GuardUnavailable,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    RequestTimeout,
    ServiceError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from gis_client.types import Category, Classification, ModelInfo, TextResult, Verdict

__all__ = [
    "AsyncClient",
    "BodyTooLarge",
    "Category",
    "ChatUnavailable",
    "Classification",
    "Client",
    "ContentBlocked",
    "GuardUnavailable",
    "InvalidRequest",
    "ModelInfo",
    "ModelNotFound",
    "NotFound",
    "RequestTimeout",
    "ServiceError",
    "TextResult",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "Verdict",
]
