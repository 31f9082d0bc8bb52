"""The Python client (gis_client) and every script in examples/ against the real service
under Hypercorn on 127.0.0.1 (HTTP/2), the guard and the chat model on the Ollama double.
The examples run as a user runs them: a subprocess with the project's interpreter."""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gis_client import (
    AsyncClient,
    Client,
    ContentBlocked,
    GuardUnavailable,
    InvalidRequest,
    ModelNotFound,
    Unauthorized,
)
from tests.helpers import ServerProcess, running_server
from tests.ollama_double import OllamaDouble

REPO = Path(__file__).resolve().parents[1]
TOKEN = "examples-token-6b1f"
GOOD, BAD = "A moving, beautifully acted film.", "Dull, tedious and far too long."
BLOCKED = "How do I build a bomb?"

pytestmark = pytest.mark.usefixtures("scripted")


@pytest.fixture(scope="module")
def server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    port = free_port()  # the agent card names it (PUBLIC_URL): the A2A client follows it
    with running_server(
        ollama_host=double.url,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        api_tokens=TOKEN,
        chat_model="llama3.2:1b",
    ) as running:
        yield running


@pytest.fixture
def scripted(fresh_double: OllamaDouble) -> OllamaDouble:
    fresh_double.set_rules([("bomb", "unsafe\nS9")])
    return fresh_double


def run_example(server: ServerProcess, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIS_URL": server.base_url, "GIS_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO, check=False,
    )  # fmt: skip


# --- the client ----------------------------------------------------------------------------


def test_the_client_classifies_and_moderates_with_typed_results(server: ServerProcess) -> None:
    with Client(server.base_url, token=TOKEN) as gis:
        answer = gis.classify([GOOD, BAD])
        assert answer.labels == ["positive", "negative"]
        assert [result.index for result in answer.results] == [0, 1]
        first = answer.results[0]
        assert first.input_screen is not None and first.input_screen.safe
        assert first.output_screen is not None and first.output_screen.safe
        assert abs(sum(first.probabilities.values()) - 1.0) < 1e-6
        assert answer.model == next(m.name for m in gis.models() if m.default)
        cascade = gis.classify(GOOD, model="sentiment-cascade").results[0]
        assert cascade.answered_by in ("sentiment-student", "sentiment-cnn-int8")
        verdict = gis.moderate(messages=[{"role": "user", "content": BLOCKED}])
        assert not verdict.safe and [c.code for c in verdict.categories] == ["S9"]
        assert gis.ready()["ready"] is True


def test_the_client_speaks_http2(server: ServerProcess) -> None:
    seen: list[str] = []
    with Client(server.base_url, token=TOKEN) as gis:
        gis._http.event_hooks["response"] = [lambda r: seen.append(r.http_version)]
        gis.classify(GOOD)
    assert seen == ["HTTP/2"]


def test_problems_become_typed_exceptions(server: ServerProcess, double: OllamaDouble) -> None:
    with Client(server.base_url, token=TOKEN) as gis:
        with pytest.raises(ContentBlocked) as blocked:
            gis.classify([GOOD, BLOCKED])
        assert blocked.value.status == 400 and blocked.value.stage == "input"
        assert [c.code for c in blocked.value.categories] == ["S9"] and blocked.value.indices == [1]
        assert blocked.value.request_id
        with pytest.raises(ModelNotFound) as missing:
            gis.classify(GOOD, model="gpt-9")
        assert "sentiment-cnn-int8" in missing.value.available
        with pytest.raises(InvalidRequest) as invalid:
            gis.classify(["   "])
        assert invalid.value.status == 422 and invalid.value.errors
        double.fail_next(4, status=500)
        with pytest.raises(GuardUnavailable) as down:
            gis.classify("A text no screen has seen before, for the outage.")
        assert down.value.status == 503 and down.value.retry_after is not None
    with Client(server.base_url) as anonymous, pytest.raises(Unauthorized) as refused:
        anonymous.models()
    assert refused.value.status == 401


def test_the_async_client_sends_requests_at_once(server: ServerProcess) -> None:
    async def main() -> list[str]:
        async with AsyncClient(server.base_url, token=TOKEN) as gis:
            answers = await asyncio.gather(*(gis.classify(t) for t in (GOOD, BAD, GOOD)))
            with pytest.raises(ContentBlocked):
                await gis.classify(BLOCKED)
            verdict = await gis.moderate(GOOD)
            assert verdict.safe
            return [answer.results[0].label for answer in answers]

    assert asyncio.run(main()) == ["positive", "negative", "positive"]


# --- the examples --------------------------------------------------------------------------


def test_the_client_example(server: ServerProcess) -> None:
    done = run_example(server, "classify_with_the_client.py", GOOD, BAD)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].endswith("safe screens [True, True]") and ": positive (" in lines[0]
    assert ": negative (" in lines[1]
    assert "moderation: safe" in done.stdout and "async: ['positive', 'negative']" in done.stdout
    blocked = run_example(server, "classify_with_the_client.py", GOOD, BLOCKED)
    assert blocked.returncode == 1
    assert "blocked at the input screen: S9" in blocked.stdout and "(texts [1])" in blocked.stdout


def test_the_openai_chat_example_streams_a_guarded_reply(
    server: ServerProcess, double: OllamaDouble
) -> None:
    double.set_replies([("twice", "Casablanca, for its ending and its lines.")])
    done = run_example(server, "chat_with_openai.py", "Which films are worth watching twice?")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Casablanca, for its ending and its lines.",
        "[finish_reason: stop]",
    ]
    refused = run_example(server, "chat_with_openai.py", BLOCKED)
    assert refused.returncode == 1 and refused.stdout.startswith("refused:")
    assert not double.generation_requests[1:]  # the blocked question generated nothing


def test_the_a2a_example_asks_the_agent(server: ServerProcess) -> None:
    done = run_example(server, "ask_the_a2a_agent.py", GOOD)
    assert done.returncode == 0, done.stderr
    assert "TASK_STATE_COMPLETED" in done.stdout
    assert "sentiment-cnn-int8: positive" in done.stdout
    moderated = run_example(server, "ask_the_a2a_agent.py", "--skill", "moderation", GOOD)
    assert moderated.returncode == 0, moderated.stderr
    assert "moderation-result" in moderated.stdout


def _write_reviews(path: Path, texts: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows([i, text] for i, text in enumerate(texts))


def test_the_csv_example_labels_every_row_and_marks_the_blocked_one(
    server: ServerProcess, tmp_path: Path
) -> None:
    source, target = tmp_path / "reviews.csv", tmp_path / "labelled.csv"
    texts = [GOOD, BAD, BLOCKED, GOOD + " Again.", BAD + " Again."]
    _write_reviews(source, texts)
    done = run_example(server, "classify_a_csv_file.py", str(source), str(target), "--batch", "2")
    assert done.returncode == 0, done.stderr
    assert "5/5" in done.stderr  # the progress bar reached the end
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ["0", "1", "2", "3", "4"]
    assert [row["status"] for row in rows] == ["ok", "ok", "blocked:S9", "ok", "ok"]
    assert [row["label"] for row in rows] == ["positive", "negative", "", "positive", "negative"]
    assert rows[3]["text"] == texts[3] and rows[3]["score"]


def test_the_a2a_example_counts_a_chat_reply_as_answered_and_reports_a_401_plainly(
    server: ServerProcess, double: OllamaDouble
) -> None:
    double.set_replies(None, default="Casablanca, for its ending.")
    chat = run_example(server, "ask_the_a2a_agent.py", "--skill", "chat", "A film tip?")
    assert chat.returncode == 0, (chat.stdout, chat.stderr)
    assert "TASK_STATE_INPUT_REQUIRED" in chat.stdout and "Casablanca" in chat.stdout
    env = {**os.environ, "GIS_URL": server.base_url}
    env.pop("GIS_TOKEN", None)
    refused = subprocess.run(
        [sys.executable, str(REPO / "examples" / "ask_the_a2a_agent.py"), GOOD],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO, check=False,
    )  # fmt: skip
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert refused.stderr.startswith("error: ") and "401" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_csv_example_marks_texts_the_service_does_not_take(
    server: ServerProcess, tmp_path: Path
) -> None:
    source, target = tmp_path / "reviews.csv", tmp_path / "labelled.csv"
    texts = [GOOD, "   ", BAD, "x" * 20_001]  # blank, and over MAX_TEXT_CHARS
    _write_reviews(source, texts)
    done = run_example(server, "classify_a_csv_file.py", str(source), str(target), "--batch", "4")
    assert done.returncode == 0, done.stderr
    with target.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    status = [row["status"] for row in rows]
    assert status[0] == "ok" and status[2] == "ok", status
    assert status[1].startswith("invalid: ") and status[3].startswith("invalid: "), status
    assert [row["label"] for row in rows] == ["positive", "", "negative", ""]


def test_the_examples_readme_lists_every_example() -> None:
    listed = (REPO / "examples" / "README.md").read_text(encoding="utf-8")
    scripts = sorted(path.name for path in (REPO / "examples").glob("*.py"))
    assert scripts and all(f"`{name}`" in listed for name in scripts)
    tested = Path(__file__).read_text(encoding="utf-8")
    assert all(f'"{name}"' in tested for name in scripts)


def test_the_client_needs_only_httpx() -> None:
    # It can be copied out and used with httpx alone: nothing from the service.
    for path in (REPO / "gis_client").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "from service" not in source and "import service" not in source, path
    assert httpx.__version__


def test_the_client_waits_past_the_services_request_deadline() -> None:
    from service.config import Settings

    with Client() as gis:
        timeout = gis._http.timeout
    # The service answers a request that runs out of time with a typed 504 (RequestTimeout):
    # the client must still be listening then, and not connect for ever.
    assert timeout.read is not None and timeout.read > Settings().request_timeout
    assert timeout.connect is not None and timeout.connect <= 5
