"""What a caller sends cannot grow /metrics: invented methods and unknown paths fold into one
label value each. Real Hypercorn process over HTTP/2."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(ollama_host=double.url, models="sentiment-cnn-int8") as running:
        yield running


async def test_invented_methods_and_paths_do_not_mint_series(server: ServerProcess) -> None:
    async with h2_client(server) as http:
        before = (await http.get("/metrics")).text
        for i in range(40):
            response = await http.request(f"BREW{i}", f"/coffee/{i}")
            assert response.status_code in (404, 405)
            await http.request(f"FROB{i}", "/healthz")
        after = (await http.get("/metrics")).text
    assert "BREW" not in after and "FROB" not in after and "/coffee" not in after
    assert 'method="other"' in after and 'route="unmatched"' in after
    series = [line for line in after.splitlines() if line.startswith("http_requests_total{")]
    assert (
        len(series)
        <= len([line for line in before.splitlines() if line.startswith("http_requests_total{")])
        + 4
    )  # other x {unmatched, /healthz} x their statuses


async def test_the_api_docs_have_their_own_route_label(server: ServerProcess) -> None:
    async with h2_client(server) as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await http.get(path)).status_code == 200
        text = (await http.get("/metrics")).text
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert f'route="{path}",status="200"' in text
