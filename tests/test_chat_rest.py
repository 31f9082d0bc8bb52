"""The OpenAI-compatible REST API (POST /v1/chat/completions, POST /v1/moderations, the OpenAI
fields of GET /v1/models) over HTTP/2, served by the real Hypercorn process, with the guard
and the chat model on the Ollama double, and the official ``openai`` package as the client
(on an httpx client that speaks only HTTP/2)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest

from service.guard.taxonomy import HAZARDS
from service.rest.openai import (
    CHAT_COMPLETIONS,
    LLAMA_GUARD_TO_OPENAI,
    MODERATIONS,
    OPENAI_CATEGORIES,
    OPENAI_COMPATIBLE_PATHS,
)
from tests.helpers import ServerProcess, curl, h2_client, judge_failing_past, running_server
from tests.ollama_double import OllamaDouble

CHAT = "llama3.2:1b"
REPLY = (
    "Sourdough needs a starter. Feed it flour and water daily. Mix the dough, let it rise "
    "overnight, shape it, and bake it hot. FORBIDDEN words come later in this reply, after "
    "the first chunks. The crust should be dark and crisp."
)
SAFE_REPLY = REPLY.replace("FORBIDDEN", "Fine")
LONG_REPLY = " ".join(f"word{i}" for i in range(80))
ASK = [
    {"role": "system", "content": "You are a baker."},
    {"role": "user", "content": "How do I bake bread?"},
]
# Every chat setting the tests depend on is pinned (the caller's environment cannot change it).
SERVER = {
    "models": "sentiment-cnn-int8",
    "chat_model": CHAT,
    "chat_chunk": "tokens",
    "chat_chunk_tokens": 4,
    "chat_max_tokens": 48,
    "chat_max_messages": 8,
    "chat_timeout": 30,
    "chat_concurrency": 4,
}

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(ollama_host=double.url, **SERVER) as running:
        yield running


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _openai(server) as made:
        yield made


def _openai(server: ServerProcess, api_key: str = "unused") -> openai.AsyncOpenAI:
    """The official client pointed at the service, over HTTP/2 only, without retries."""
    http = httpx.AsyncClient(http2=True, http1=False, timeout=30)
    return openai.AsyncOpenAI(
        base_url=f"{server.base_url}/v1", api_key=api_key, http_client=http, max_retries=0
    )


async def _stream(client: openai.AsyncOpenAI, **request: Any) -> list[Any]:
    stream = await client.chat.completions.create(
        model=CHAT, messages=request.pop("messages", ASK), stream=True, **request
    )
    return [chunk async for chunk in stream]


def _content(chunks: list[Any]) -> list[str]:
    """The content pieces of the chunks, in order (the role chunk's empty one left out)."""
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def _events(body: str) -> list[str]:
    """The data of each server-sent event of a raw body."""
    blocks = [block for block in body.replace("\r\n", "\n").split("\n\n") if block.strip()]
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks), blocks
    return [block.removeprefix("data: ") for block in blocks]


# --- completions --------------------------------------------------------------------------


async def test_a_plain_completion(client: openai.AsyncOpenAI, double: OllamaDouble) -> None:
    double.set_replies(None, default=SAFE_REPLY)
    raw = await client.chat.completions.with_raw_response.create(
        model=CHAT, messages=ASK, temperature=0.2, user="tester", seed=7, top_p=0.9
    )
    assert raw.http_response.http_version == "HTTP/2"
    completion = raw.parse()
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == CHAT and abs(completion.created - time.time()) < 60
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == SAFE_REPLY
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 41
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 41
    # One input screen of the conversation, one output screen of the whole reply.
    assert len(double.chat_requests) == 2
    (generation,) = double.generation_requests
    assert generation.body["options"]["temperature"] == 0.2
    assert generation.body["messages"][0] == {"role": "system", "content": "You are a baker."}


async def test_text_content_parts_are_joined_and_other_parts_refused(
    client: openai.AsyncOpenAI, double: OllamaDouble
) -> None:
    double.set_replies(None, default="Knead, rise, bake.")
    parts = [{"type": "text", "text": "How do I"}, {"type": "text", "text": "bake bread?"}]
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}]
    completion = await client.chat.completions.create(model=CHAT, messages=messages)
    assert completion.choices[0].message.content == "Knead, rise, bake."
    (generation,) = double.generation_requests
    assert generation.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How do I\nbake bread?"},
    ]
    image = {"type": "image_url", "image_url": {"url": "https://example.com/bread.png"}}
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": [image]}]
        )
    assert caught.value.code == "validation-error"
    assert caught.value.body["param"] == "messages.0.content"
    assert "image_url" in caught.value.message


async def test_a_streamed_reply(client: openai.AsyncOpenAI, double: OllamaDouble) -> None:
    double.set_replies(None, default=SAFE_REPLY)
    chunks = await _stream(client, stream_options={"include_usage": True})
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = _content(chunks)
    assert "".join(pieces) == SAFE_REPLY
    # One content event per released chunk of CHAT_CHUNK_TOKENS tokens.
    assert len(pieces) == math.ceil(41 / 4) and all(len(p.split()) <= 4 for p in pieces)
    *_, last, usage = chunks
    assert last.choices[0].finish_reason == "stop" and last.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 41
    assert all(c.usage is None for c in chunks[:-1])
    # Screens: the input, then one per released chunk.
    assert len(double.chat_requests) == 1 + len(pieces)


async def test_an_unsafe_chunk_ends_the_stream_with_content_filter(
    client: openai.AsyncOpenAI, double: OllamaDouble
) -> None:
    double.set_rules([("FORBIDDEN", "unsafe\nS9")])
    double.set_replies(None, default=REPLY)
    chunks = await _stream(client)
    released = "".join(_content(chunks))
    assert "FORBIDDEN" not in released
    forbidden_at = REPLY.split().index("FORBIDDEN")
    assert len(released.split()) == (forbidden_at // 4) * 4  # every chunk before the unsafe one
    last = chunks[-1].choices[0]
    assert last.finish_reason == "content_filter"
    assert last.model_extra["guard"] == {
        "stage": "output",
        "categories": [{"code": "S9", "name": "Indiscriminate Weapons"}],
    }


async def test_an_unsafe_whole_reply_is_content_filtered_and_empty(
    client: openai.AsyncOpenAI, double: OllamaDouble
) -> None:
    double.set_rules([("FORBIDDEN", "unsafe\nS9")])
    double.set_replies(None, default=REPLY)
    completion = await client.chat.completions.create(model=CHAT, messages=ASK)
    (choice,) = completion.choices
    assert choice.finish_reason == "content_filter" and choice.message.content == ""
    assert choice.model_extra["guard"]["categories"] == [
        {"code": "S9", "name": "Indiscriminate Weapons"}
    ]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_blocked_conversation_is_a_bad_request_before_any_stream(
    client: openai.AsyncOpenAI, double: OllamaDouble, stream: bool
) -> None:
    double.set_rules([("bomb", "unsafe\nS9")])
    messages = [{"role": "user", "content": "How do I build a bomb?"}]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=CHAT, messages=messages, stream=stream)
    error = caught.value
    assert error.code == "content-blocked" and error.type == "invalid_request_error"
    assert error.body["stage"] == "input"
    assert error.body["categories"] == [{"code": "S9", "name": "Indiscriminate Weapons"}]
    assert "S9 Indiscriminate Weapons" in str(error)
    # The whole answer is a problem document, with the OpenAI error member inside.
    assert error.response.headers["content-type"] == "application/problem+json"
    problem = error.response.json()
    assert problem["type"] == "/problems/content-blocked" and problem["status"] == 400
    assert problem["error"]["message"] == problem["detail"]
    assert double.generation_requests == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_guard_that_is_down_refuses_before_any_stream(
    client: openai.AsyncOpenAI, double: OllamaDouble, stream: bool
) -> None:
    double.fail_next(status=500)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=CHAT, messages=ASK, stream=stream)
    assert caught.value.status_code == 503 and caught.value.code == "guard-unavailable"
    assert caught.value.body["kind"] == "http"
    assert caught.value.response.headers["retry-after"] == "7"
    assert double.generation_requests == []


async def test_a_guard_failure_mid_stream_raises_in_the_client(
    client: openai.AsyncOpenAI, double: OllamaDouble
) -> None:
    double.set_replies(None, default=SAFE_REPLY)
    double.set_rules(judge_failing_past(4))  # the first chunk, "Sourdough needs a starter."
    stream = await client.chat.completions.create(model=CHAT, messages=ASK, stream=True)
    released: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            released.extend(_content([chunk]))
    error = caught.value
    assert error.code == "guard-unavailable" and error.type == "server_error"
    assert error.body["kind"] == "unparseable"
    assert "could not judge" in error.message
    assert released == [" ".join(SAFE_REPLY.split()[:4]) + " "]  # the chunk whose screen passed


async def test_a_model_failure_mid_stream_raises_in_the_client(
    client: openai.AsyncOpenAI, double: OllamaDouble
) -> None:
    double.set_replies(None, default=SAFE_REPLY)
    double.break_stream_after(10)
    stream = await client.chat.completions.create(model=CHAT, messages=ASK, stream=True)
    released = ""
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            released += "".join(_content([chunk]))
    assert caught.value.code == "chat-unavailable"
    assert caught.value.body["kind"] == "connection"
    assert released == " ".join(SAFE_REPLY.split()[:8]) + " "  # two whole chunks of four


async def test_a_client_that_goes_away_stops_generation(
    server: ServerProcess, double: OllamaDouble
) -> None:
    double.set_replies(None, default=SAFE_REPLY)
    double.set_token_delay(0.05)  # about two seconds for the whole reply
    async with _openai(server) as client:
        stream = await client.chat.completions.create(model=CHAT, messages=ASK, stream=True)
        async for chunk in stream:
            if _content([chunk]):
                break
    # The client and its connection are closed mid-reply. (Closing only the response is not
    # enough: httpx over HTTP/2 then drops the stream's data without resetting the stream.)
    for _ in range(250):  # up to 5 s
        if double.client_disconnects:
            break
        await asyncio.sleep(0.02)
    # The service cancelled generation: Ollama (the double) saw its client go away before
    # the last token, and the rest of the reply was never screened.
    assert double.client_disconnects >= 1
    assert len(double.chat_requests) < 1 + math.ceil(41 / 4)


async def test_max_tokens_ends_with_length_and_is_capped(
    client: openai.AsyncOpenAI, double: OllamaDouble
) -> None:
    double.set_replies(None, default=LONG_REPLY)
    short = await client.chat.completions.create(model=CHAT, messages=ASK, max_tokens=5)
    assert short.choices[0].finish_reason == "length"
    assert short.choices[0].message.content.split() == LONG_REPLY.split()[:5]
    chunks = await _stream(client, max_completion_tokens=1000)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert len("".join(_content(chunks)).split()) == 48  # CHAT_MAX_TOKENS
    assert [g.body["options"]["num_predict"] for g in double.generation_requests] == [5, 48]


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}] * 9}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 20_001}]}, "messages.0.content"),
        ({"messages": [ASK[1], {"role": "assistant", "content": "Hello"}]}, "messages.1.role"),
        ({"messages": ASK, "n": 2}, "n"),
        ({"messages": ASK, "max_tokens": 0}, "max_tokens"),
        ({"messages": ASK, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"messages": ASK, "stop": ["\n"]}, "stop"),
        ({"messages": [{"role": "tool", "content": "4", "tool_call_id": "c"}]}, "messages.0.role"),
    ],
)  # fmt: skip
async def test_limits_and_unsupported_requests_are_422(
    client: openai.AsyncOpenAI, double: OllamaDouble, request_: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await client.chat.completions.create(model=CHAT, **request_)
    assert caught.value.code == "validation-error"
    assert caught.value.body["param"] == param
    assert double.requests == []  # refused before the guard or the model was asked


async def test_a_refused_part_is_not_echoed_back_at_length(server: ServerProcess) -> None:
    huge = "A" * 300_000
    bodies = {
        "/v1/chat/completions": {
            "model": CHAT, "messages": [{"role": "user", "content": [{"type": huge}]}]
        },
        "/v1/moderations": {"input": [{"type": huge}]},
    }  # fmt: skip
    async with h2_client(server) as http:
        for path, body in bodies.items():
            response = await http.post(path, json=body)
            assert response.status_code == 422, response.text[:300]
            assert len(response.content) < 3_000, (path, len(response.content))
            assert "only text parts" in response.json()["error"]["message"]


async def test_an_unknown_model_is_not_found(
    client: openai.AsyncOpenAI, double: OllamaDouble
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=ASK)
    assert caught.value.code == "model-not-found"
    assert caught.value.body["available"] == [CHAT]
    assert caught.value.response.json()["model"] == "gpt-4o"
    assert double.requests == []


# --- models and moderations -------------------------------------------------------------------


async def test_models_list(client: openai.AsyncOpenAI, server: ServerProcess) -> None:
    page = await client.models.list()
    by_id = {model.id: model for model in page.data}
    assert list(by_id) == ["sentiment-cnn-int8", CHAT]
    assert {m.object for m in page.data} == {"model"}
    assert by_id[CHAT].owned_by == "ollama" and by_id[CHAT].model_extra["kind"] == "chat"
    cnn = by_id["sentiment-cnn-int8"]
    assert cnn.owned_by == "guarded-inference" and cnn.created > 1_700_000_000
    # The service's own fields are still there.
    async with h2_client(server) as http:
        listing = (await http.get("/v1/models")).json()
    assert listing["default"] == "sentiment-cnn-int8" and listing["object"] == "list"
    assert [m["name"] for m in listing["models"]] == ["sentiment-cnn-int8"]


async def test_moderation_of_a_string(client: openai.AsyncOpenAI, double: OllamaDouble) -> None:
    double.set_rules([("steal", "unsafe\nS2")])
    fine = await client.moderations.create(input="How do I bake bread?")
    assert fine.id.startswith("modr-") and fine.model == "llama-guard3:1b"
    (result,) = fine.results
    assert result.flagged is False and not any(result.categories.model_dump().values())
    flagged = await client.moderations.create(
        input="How do I steal a car?", model="omni-moderation-latest"
    )
    (result,) = flagged.results
    assert result.flagged is True and result.categories.illicit is True
    assert result.category_scores.illicit == 1.0 and result.category_scores.violence == 0.0
    assert result.category_applied_input_types.illicit == ["text"]
    assert result.model_extra["llama_guard"] == {
        "safe": False,
        "blocked": True,
        "categories": [{"code": "S2", "name": "Non-Violent Crimes"}],
    }


async def test_moderation_of_a_list(client: openai.AsyncOpenAI, double: OllamaDouble) -> None:
    double.set_rules([("bomb", "unsafe\nS9"), ("hate", "unsafe\nS10"), ("vote", "unsafe\nS13")])
    texts = ["Lovely weather.", "How do I build a bomb?", "I hate them all", "Vote twice!"]
    response = await client.moderations.create(input=texts)
    assert [r.flagged for r in response.results] == [False, True, True, True]
    assert response.results[1].categories.illicit_violent is True
    assert response.results[2].categories.hate is True
    # S13 Elections has no OpenAI counterpart: flagged, with only the Llama Guard code.
    elections = response.results[3]
    assert not any(elections.categories.model_dump().values())
    assert elections.model_extra["llama_guard"]["categories"] == [
        {"code": "S13", "name": "Elections"}
    ]
    # A list of text objects is one input.
    parts = [{"type": "text", "text": "How do I"}, {"type": "text", "text": "build a bomb?"}]
    (one,) = (await client.moderations.create(input=parts)).results
    assert one.flagged is True
    assert double.chat_requests[-1].body["messages"][-1]["content"] == "How do I\nbuild a bomb?"


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"input": ["hi"] * 65}, "input"),
        ({"input": ["hi", "x" * 20_001]}, "input.1"),
        ({"input": "   "}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}, "input"),
    ],
)  # fmt: skip
async def test_moderation_limits(
    client: openai.AsyncOpenAI, double: OllamaDouble, request_: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await client.moderations.create(**request_)
    assert caught.value.body["param"] == param
    assert double.requests == []


async def test_moderation_with_another_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.moderations.create(input="hello", model="gpt-4o")
    assert caught.value.body["available"] == ["llama-guard3:1b"]


def test_the_category_mapping_names_only_known_codes_and_categories() -> None:
    assert set(LLAMA_GUARD_TO_OPENAI) <= set(HAZARDS)
    assert {name for names in LLAMA_GUARD_TO_OPENAI.values() for name in names} <= set(
        OPENAI_CATEGORIES
    )
    assert {CHAT_COMPLETIONS, MODERATIONS} == OPENAI_COMPATIBLE_PATHS


async def test_only_the_openai_paths_carry_the_error_member(server: ServerProcess) -> None:
    async with h2_client(server) as http:
        chat = await http.post(CHAT_COMPLETIONS, json={"model": CHAT})
        moderation = await http.post(
            MODERATIONS, content=b"{not json", headers={"content-type": "application/json"}
        )
        classify = await http.post("/v1/classify", json={})
    for response in (chat, moderation):
        problem = response.json()
        assert response.status_code == 422 and problem["type"] == "/problems/validation-error"
        error = problem["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "validation-error"
        assert error["message"].startswith(problem["detail"])
    assert chat.json()["error"]["param"] == "messages"
    assert "error" not in classify.json()


# --- the raw stream ---------------------------------------------------------------------------


def _curl_stream(server: ServerProcess, body: dict[str, Any]) -> tuple[str, str]:
    result = curl(
        "--http2-prior-knowledge", "-N", "-i", f"{server.base_url}{CHAT_COMPLETIONS}",
        "-H", "content-type: application/json", "-d", json.dumps(body),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    head, _, rest = result.stdout.replace("\r\n", "\n").partition("\n\n")
    return head, rest


def test_curl_reads_the_raw_event_stream(server: ServerProcess, double: OllamaDouble) -> None:
    double.set_replies(None, default=SAFE_REPLY)
    request = {"model": CHAT, "messages": ASK, "stream": True}
    head, body = _curl_stream(server, {**request, "stream_options": {"include_usage": True}})
    assert head.startswith("HTTP/2 200")
    assert "content-type: text/event-stream" in head.lower()
    assert "cache-control: no-cache" in head.lower()
    events = _events(body)
    assert events[-1] == "[DONE]" and body.endswith("data: [DONE]\n\n")
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == SAFE_REPLY
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 41


def test_curl_sees_an_error_event_and_no_done(server: ServerProcess, double: OllamaDouble) -> None:
    double.set_replies(None, default=SAFE_REPLY)
    double.break_stream_after(6)
    _, body = _curl_stream(server, {"model": CHAT, "messages": ASK, "stream": True})
    events = _events(body)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert set(last) == {"error"}
    assert last["error"]["code"] == "chat-unavailable" and last["error"]["type"] == "server_error"
    assert last["error"]["kind"] == "connection" and last["error"]["message"]
    released = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    assert "".join(released) == " ".join(SAFE_REPLY.split()[:4]) + " "


# --- nothing before its screen, at the HTTP level ----------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
async def test_no_byte_reaches_the_client_before_the_screen_that_covers_it(
    double: OllamaDouble, chunk: int
) -> None:
    # Every screen is slow, and the guard records when it answered each reply-so-far; each
    # content event must arrive after the answer of a screen whose reply-so-far contains it.
    answered: list[tuple[str, float]] = []

    def judge(messages: list[dict[str, Any]]) -> str:
        time.sleep(0.03)
        last = messages[-1]
        if last["role"] == "assistant":
            answered.append((last["content"], time.monotonic()))
        return "unsafe\nS1" if "FORBIDDEN" in last["content"] else "safe"

    double.set_rules(judge)
    double.set_replies(None, default=REPLY)
    settings = {**SERVER, "chat_chunk_tokens": chunk}
    with running_server(ollama_host=double.url, **settings) as server:
        async with _openai(server) as client:
            stream = await client.chat.completions.create(model=CHAT, messages=ASK, stream=True)
            released = ""
            last = None
            async for event in stream:
                piece = event.choices[0].delta.content
                if piece:
                    now = time.monotonic()
                    released += piece
                    covering = [at for text, at in answered if text.startswith(released)]
                    assert covering and min(covering) <= now, f"{released!r} arrived unscreened"
                last = event
    assert last is not None and last.choices[0].finish_reason == "content_filter"
    assert "FORBIDDEN" not in released
    forbidden_at = REPLY.split().index("FORBIDDEN")
    assert len(released.split()) == (forbidden_at // chunk) * chunk


async def test_a_stream_ends_at_the_turn_deadline_even_when_each_screen_is_in_time(
    double: OllamaDouble,
) -> None:
    # One guard slot and 0.3 s per reply screen: about 20 chunk screens in a row take longer
    # than REQUEST_TIMEOUT + CHAT_TIMEOUT (2 s), though each is well within GUARD_TIMEOUT.
    def judge(messages: list[dict[str, Any]]) -> str:
        if messages[-1]["role"] == "assistant":
            time.sleep(0.3)
        return "safe"

    double.set_rules(judge)
    double.set_replies(None, default=LONG_REPLY)
    settings = {**SERVER, "guard_concurrency": 1, "request_timeout": 1, "chat_timeout": 1,
                "guard_timeout": 0.9, "guard_retries": 0}  # fmt: skip
    with running_server(ollama_host=double.url, **settings) as server:
        async with _openai(server) as client:
            stream = await client.chat.completions.create(model=CHAT, messages=ASK, stream=True)
            released = ""
            started = time.monotonic()
            with pytest.raises(openai.APIError) as caught:
                async for chunk in stream:
                    released += "".join(_content([chunk]))
            took = time.monotonic() - started
    assert caught.value.code == "request-timeout", caught.value
    assert "2 s" in caught.value.message
    assert 1.8 < took < 5, took
    assert released and LONG_REPLY.startswith(released) and released != LONG_REPLY


async def test_a_whole_reply_ends_at_the_turn_deadline_its_input_screen_included(
    double: OllamaDouble,
) -> None:
    # REQUEST_TIMEOUT 2 + CHAT_TIMEOUT 3 = 5 s for all of it: a 1.5 s input screen, 2.5 s
    # of generation and a 1.5 s output screen take 5.5 s, though each is within its bound.
    def judge(messages: list[dict[str, Any]]) -> str:
        time.sleep(1.5)
        return "safe"

    double.set_rules(judge)
    double.set_replies(None, default=" ".join(["word"] * 25))
    double.set_token_delay(0.1)
    settings = {**SERVER, "request_timeout": 2, "chat_timeout": 3, "guard_timeout": 1.9,
                "guard_retries": 0}  # fmt: skip
    with running_server(ollama_host=double.url, **settings) as server:
        async with _openai(server) as client:
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(model=CHAT, messages=ASK)
            took = time.monotonic() - started
    assert caught.value.status_code == 504 and caught.value.code == "request-timeout"
    assert "5 s" in caught.value.message
    assert 4.8 < took < 5.45, took


# --- chat switched off, tokens required -----------------------------------------------------


async def test_chat_off_and_the_api_key_as_bearer_token(double: OllamaDouble) -> None:
    settings = {**SERVER, "chat_model": "", "api_tokens": "tester:s3cret-token"}
    with running_server(ollama_host=double.url, **settings) as server:
        async with _openai(server, api_key="wrong") as stranger:
            with pytest.raises(openai.AuthenticationError) as caught:
                await stranger.chat.completions.create(model=CHAT, messages=ASK)
            assert caught.value.type == "authentication_error"
            assert caught.value.message.endswith("the bearer token is not valid")
        async with _openai(server, api_key="s3cret-token") as client:
            page = await client.models.list()
            assert [m.id for m in page.data] == ["sentiment-cnn-int8"]  # no chat model
            with pytest.raises(openai.InternalServerError) as off:
                await client.chat.completions.create(model=CHAT, messages=ASK)
            assert off.value.status_code == 503 and off.value.code == "chat-unavailable"
            assert off.value.body["kind"] == "disabled"
            assert "retry-after" not in off.value.response.headers
            fine = await client.moderations.create(input="hello")
            assert fine.results[0].flagged is False
    assert double.generation_requests == []
