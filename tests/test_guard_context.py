"""Every screen fits the guard's context (GUARD_NUM_CTX): Ollama would cut a longer prompt and
the guard judge only part of it. Request limits refuse what might not fit (422, before any
model or guard call); the guard itself refuses (fails closed) what gets past them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest

from service.core.limits import LimitExceeded, Limits
from service.guard.budget import tokens_bound
from service.guard.scanner import Message
from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

CONTEXT = 1024
# 1024 - 16 for the verdict - 512 around the conversation - 2 turns x 8 - 64 for the reply.
TEXT_BYTES = 416
MARKER = "<|x|>"  # 5 bytes; neutralised, its two ASCII brackets become 3-byte ones: 9 bytes

pytestmark = pytest.mark.usefixtures("fresh_double")


# --- the limits, on their own ------------------------------------------------------------


def limits() -> Limits:
    return Limits(max_batch=8, max_text_chars=20_000, guard_num_ctx=CONTEXT, guard_num_predict=16)


def violation_of(texts: list[str]) -> LimitExceeded | None:
    try:
        limits().check_texts(texts)
    except LimitExceeded as exceeded:
        return exceeded
    return None


def test_a_text_may_hold_as_many_bytes_as_the_context_leaves() -> None:
    assert limits().max_text_bytes == TEXT_BYTES
    assert violation_of(["a" * TEXT_BYTES]) is None
    refused = violation_of(["fine", "a" * (TEXT_BYTES + 1)])
    assert refused is not None
    [violation] = refused.violations
    assert violation.item == ("texts", 1) and violation.code == "string_too_long"
    assert violation.limit == TEXT_BYTES and "GUARD_NUM_CTX" in violation.reason
    # A text's screens hold the text and its reply: together they fit what the guard reads.
    assert tokens_bound(["a" * TEXT_BYTES, "x" * 64]) <= CONTEXT - 16


def test_the_size_is_counted_in_utf8_bytes_as_the_guard_reads_them() -> None:
    assert violation_of(["é" * (TEXT_BYTES // 2)]) is None  # 2 bytes each
    assert violation_of(["é" * (TEXT_BYTES // 2 + 1)]) is not None
    markers = MARKER * 60  # 300 bytes as sent, 540 once neutralised
    assert len(markers.encode()) < TEXT_BYTES
    assert violation_of([markers]) is not None
    assert violation_of([MARKER * 46]) is None  # 414 bytes neutralised


def test_a_conversation_must_fit_as_a_whole() -> None:
    # Two messages and a reply: 1024 - 16 - 512 - 3 x 8 = 472 bytes in all.
    assert limits().max_conversation_bytes(2) == 472
    fits = [Message("user", "a" * 236), Message("assistant", "b" * 236)]
    limits().check_conversation(fits)
    with pytest.raises(LimitExceeded) as refused:
        limits().check_conversation([*fits[:1], Message("assistant", "b" * 237)])
    [violation] = refused.value.violations
    assert violation.item == ("messages",) and violation.code == "too_long"
    assert "GUARD_NUM_CTX" in violation.reason


def test_markers_are_counted_over_the_whole_conversation() -> None:
    # Each message alone is under a third of the 472 bytes, but neutralised they hold
    # 2 x 30 x 9 = 540 bytes: counted message by message they would seem to fit.
    marked = [Message("user", MARKER * 30), Message("assistant", MARKER * 30)]
    assert 3 * len((MARKER * 30).encode()) < 472
    with pytest.raises(LimitExceeded):
        limits().check_conversation(marked)


def test_without_a_context_only_the_character_limit_applies() -> None:
    Limits(max_batch=8, max_text_chars=20_000).check_texts(["a" * 20_000])


# --- over HTTP/2, against the server ------------------------------------------------------


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(
        ollama_host=double.url,
        models="sentiment-cnn-int8",
        chat_model="llama3.2:1b",
        guard_num_ctx=CONTEXT,
        guard_retries=0,
    ) as running:
        yield running


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as http:
        yield http


async def test_classify_refuses_a_text_the_guard_could_not_read_whole(
    client: httpx.AsyncClient, double: OllamaDouble
) -> None:
    response = await client.post("/v1/classify", json={"text": "a " * 300})  # 600 bytes
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "GUARD_NUM_CTX" in response.text
    assert double.chat_requests == []  # refused before any screen
    fits = await client.post("/v1/classify", json={"text": "a fine film " * 30})  # 360 bytes
    assert fits.status_code == 200, fits.text
    for request in double.chat_requests:
        assert request.body["options"]["num_ctx"] == CONTEXT


async def test_moderation_refuses_a_conversation_the_guard_could_not_read_whole(
    client: httpx.AsyncClient, double: OllamaDouble
) -> None:
    response = await client.post("/v1/moderations", json={"input": "a " * 300})
    assert response.status_code == 422, response.text
    assert "GUARD_NUM_CTX" in response.text
    assert double.chat_requests == []


async def test_chat_refuses_a_conversation_the_guard_could_not_read_whole(
    server: ServerProcess, double: OllamaDouble
) -> None:
    http = httpx.AsyncClient(http2=True, http1=False, timeout=30)
    async with openai.AsyncOpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", http_client=http, max_retries=0
    ) as chat:
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            await chat.chat.completions.create(
                model="llama3.2:1b",
                messages=[
                    {"role": "user", "content": "a " * 150},
                    {"role": "assistant", "content": "b " * 150},
                    {"role": "user", "content": "and so?"},
                ],
            )
    assert "GUARD_NUM_CTX" in str(refused.value)
    assert double.chat_requests == []


def _openai(server: ServerProcess) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(http2=True, http1=False, timeout=30)
    return openai.AsyncOpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", http_client=http, max_retries=0
    )


# One user message: 1024 - 48 for the verdict - 512 - 2 turns x 8 = 448 bytes for it and the
# reply together; max_tokens 20 keeps 4 x 20 = 80 of them for the reply.
ROOM = 448


async def test_chat_keeps_room_in_the_context_for_the_reply(
    server: ServerProcess, double: OllamaDouble
) -> None:
    double.set_replies(None, default="Fine.")
    async with _openai(server) as chat:
        ask = [{"role": "user", "content": "a" * (ROOM - 80)}]
        answer = await chat.chat.completions.create(
            model="llama3.2:1b", messages=ask, max_tokens=20
        )
        assert answer.choices[0].message.content == "Fine."
        for messages, max_tokens in (
            ([{"role": "user", "content": "a" * (ROOM - 79)}], 20),
            ([{"role": "user", "content": "Hello?"}], None),  # CHAT_MAX_TOKENS: 2048 bytes
        ):
            with pytest.raises(openai.UnprocessableEntityError) as refused:
                await chat.chat.completions.create(
                    model="llama3.2:1b", messages=messages, max_tokens=max_tokens
                )
            assert "to spare for the reply" in str(refused.value), refused.value


@pytest.mark.parametrize("stream", [False, True])
async def test_a_reply_that_would_outgrow_the_context_is_cut_where_it_ends(
    server: ServerProcess, double: OllamaDouble, stream: bool
) -> None:
    # 368 bytes asked leave 80 for the reply; each word of it is 10 bytes: 8 fit.
    double.set_replies(None, default="wonderful " * 19 + "end.")
    ask = [{"role": "user", "content": "a" * (ROOM - 80)}]
    async with _openai(server) as chat:
        if stream:
            chunks = await chat.chat.completions.create(
                model="llama3.2:1b", messages=ask, max_tokens=20, stream=True
            )
            events = [chunk async for chunk in chunks]
            text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
            finish = [e.choices[0].finish_reason for e in events if e.choices][-1]
        else:
            whole = await chat.chat.completions.create(
                model="llama3.2:1b", messages=ask, max_tokens=20
            )
            text, finish = whole.choices[0].message.content or "", whole.choices[0].finish_reason
    assert finish == "length"
    assert text == "wonderful " * 8
    screens = [r for r in double.chat_requests if r.body["messages"][-1]["role"] == "assistant"]
    assert screens and all(len(r.body["messages"][-1]["content"].encode()) <= 80 for r in screens)
