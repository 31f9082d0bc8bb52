"""CORS_ALLOW_ORIGINS: pages from the listed origins may call the API from a browser; other
origins get no CORS header at all; without the setting nobody does. Over HTTP/2 against the
real server, with API_TOKENS on (a preflight carries no token and must still be answered)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from service.config import Settings
from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

ALLOWED = "https://app.example"
OTHER_ALLOWED = "http://localhost:3000"
STRANGER = "https://evil.example"
TOKEN = "cors-test-token"

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(
        ollama_host=double.url,
        models="sentiment-cnn-int8",
        api_tokens=f"page:{TOKEN}",
        cors_allow_origins=f"{ALLOWED}/, {OTHER_ALLOWED}",  # a trailing slash is forgiven
    ) as running:
        yield running


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


def preflight(origin: str, method: str = "POST", headers: str = "authorization, content-type"):
    return {
        "origin": origin,
        "access-control-request-method": method,
        "access-control-request-headers": headers,
    }


@pytest.mark.parametrize("origin", [ALLOWED, OTHER_ALLOWED])
@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        ("/v1/classify", "POST", "authorization, content-type"),
        ("/v1/chat/completions", "POST", "authorization, content-type"),
        ("/v1/models", "GET", "authorization"),
        ("/", "POST", "authorization, content-type, a2a-version"),  # A2A JSON-RPC
    ],
)
async def test_a_preflight_from_an_allowed_origin_is_answered(
    server: ServerProcess, origin: str, path: str, method: str, headers: str
) -> None:
    async with h2_client(server) as http:
        response = await http.options(path, headers=preflight(origin, method, headers))
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200, response.text  # no token needed for a preflight
    assert response.headers["access-control-allow-origin"] == origin
    assert {"get", "head", "post", "delete"} <= listed(
        response.headers["access-control-allow-methods"]
    )
    allowed_headers = listed(response.headers["access-control-allow-headers"])
    assert {"authorization", "content-type", "a2a-version"} <= allowed_headers
    assert int(response.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in response.headers
    assert "origin" in listed(response.headers["vary"])


async def test_answers_to_an_allowed_origin_carry_the_cors_headers(server: ServerProcess) -> None:
    async with h2_client(server) as http:
        ok = await http.post(
            "/v1/classify",
            json={"text": "A warm, funny film."},
            headers={"origin": ALLOWED, "authorization": f"Bearer {TOKEN}"},
        )
        refused = await http.post(
            "/v1/classify", json={"text": "A warm, funny film."}, headers={"origin": ALLOWED}
        )
    assert ok.status_code == 200
    assert refused.status_code == 401  # the page can read why: the header is there too
    for response in (ok, refused):
        assert response.headers["access-control-allow-origin"] == ALLOWED
        exposed = listed(response.headers["access-control-expose-headers"])
        assert {"x-request-id", "retry-after"} <= exposed


@pytest.mark.parametrize(
    "headers",
    [preflight(STRANGER), {"origin": STRANGER}, {}, preflight("https://app.example.evil")],
    ids=["preflight", "request", "no-origin", "lookalike"],
)
async def test_other_origins_get_no_cors_header(server: ServerProcess, headers: dict) -> None:
    async with h2_client(server) as http:
        options = await http.options("/v1/classify", headers=headers)
        post = await http.post(
            "/v1/classify",
            json={"text": "A warm, funny film."},
            headers={**headers, "authorization": f"Bearer {TOKEN}"},
        )
    assert cors_headers(options) == {} and cors_headers(post) == {}
    assert options.status_code in (401, 405)  # not a CORS answer: the API's own
    assert post.status_code == 200  # CORS is the browser's business: the API still answers


async def test_without_the_setting_nobody_gets_cors_headers(ollama_double: OllamaDouble) -> None:
    with running_server(ollama_host=ollama_double.url, models="sentiment-cnn-int8") as server:
        async with h2_client(server) as http:
            options = await http.options("/v1/classify", headers=preflight(ALLOWED))
            post = await http.post(
                "/v1/classify", json={"text": "A fine film."}, headers={"origin": ALLOWED}
            )
    assert options.status_code == 405 and cors_headers(options) == {}
    assert post.status_code == 200 and cors_headers(post) == {}


def test_origins_are_checked_and_normalised() -> None:
    settings = Settings(_env_file=None, cors_allow_origins="HTTPS://App.Example/, *")
    assert settings.cors_allow_origins == ["https://app.example", "*"]
    assert Settings(_env_file=None).cors_allow_origins == []
    for bad in ("app.example", "https://app.example/path", "ftp://app.example", "https://"):
        with pytest.raises(ValidationError, match="not an origin"):
            Settings(_env_file=None, cors_allow_origins=bad)
