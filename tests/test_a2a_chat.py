"""The A2A chat skill over HTTP/2 on the real Hypercorn process, the guard and the chat model
on the Ollama double: a conversation is one task; each reply streams as artifact chunks, each
released only after its screen passed; the task waits in input-required between turns; a
follow-up with the task's id continues it from the store's history; CancelTask ends it.
Both protocol versions, both bindings (JSON-RPC and HTTP+JSON), and the a2a-sdk client."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import parse_agent_card
from a2a.helpers import get_text_parts
from a2a.types import AgentCard, Message, Part, Role, SendMessageRequest, TaskState

from service.a2a.card import extended_card, public_card
from service.a2a.skills import SKILLS
from service.config import Settings
from tests.a2a_wire import (
    API_IDS,
    APIS,
    V1,
    Api,
    ApiError,
    Event,
    history,
    reply_artifacts,
    state_of,
    status_data,
    status_text,
    task_id_of,
)
from tests.helpers import ServerProcess, h2_client, running_server, start_server
from tests.ollama_double import OllamaDouble

CHUNK_TOKENS = 4
MAX_MESSAGES = 4  # two turns and their replies... and a third message is one too many
REPLIES = [
    ("first", "Alpha one two three four five six seven eight nine ten eleven twelve."),
    ("second", "Beta one two three four five six seven eight."),
    ("poison", "Sure. Step one is easy. Step two needs poison from a shop. Step three."),
]
FIRST, SECOND = "My first question, please.", "And my second question?"
GOOD_REVIEW = "One of the best films I have ever seen: moving and beautifully acted."
UNSUPPORTED, INVALID, NOT_CANCELABLE = -32004, -32602, -32002

pytestmark = pytest.mark.usefixtures("fresh_double")


@pytest.fixture(scope="module")
def server(double: OllamaDouble, free_port: Callable[[], int]) -> Iterator[ServerProcess]:
    port = free_port()  # the card names it (PUBLIC_URL): the SDK client follows the card
    with running_server(
        ollama_host=double.url,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        chat_model="llama3.2:1b",
        chat_chunk_tokens=CHUNK_TOKENS,
        chat_max_messages=MAX_MESSAGES,
        chat_timeout=30,
    ) as running:
        yield running


@pytest.fixture
def double_replies(fresh_double: OllamaDouble) -> OllamaDouble:
    fresh_double.set_replies(REPLIES)
    return fresh_double


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with h2_client(server) as client:
        yield client


def generated(double: OllamaDouble) -> list[list[dict[str, Any]]]:
    """The conversations the chat model was asked to continue."""
    return [request.body["messages"] for request in double.generation_requests]


def reply_of(question: str) -> str:
    return next(reply for needle, reply in REPLIES if needle in question.lower())


# --- a conversation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_a_two_turn_conversation_is_one_task(
    http: httpx.AsyncClient, double_replies: OllamaDouble, binding: str, version: str
) -> None:
    api = Api(http, binding, version)
    first = await api.say(FIRST)
    assert state_of(first["status"]["state"]) == "input-required"
    assert status_text(first) == reply_of(FIRST)
    assert reply_artifacts(first) == {"chat-reply-1": reply_of(FIRST)}
    assert first["metadata"] == {"skill": "chat"}
    [artifact] = first["artifacts"]
    assert artifact["name"] == "chat-reply"
    assert artifact["metadata"]["finish_reason"] == "stop"
    assert set(artifact["metadata"]["usage"]) == {
        "prompt_tokens", "completion_tokens", "total_tokens",
    }  # fmt: skip
    assert history(first) == [("user", FIRST)]  # the reply waits as the status message

    # The follow-up names only the task; the conversation comes from the store.
    second = await api.say(SECOND, task_id=first["id"], skill=None)
    assert second["id"] == first["id"] and second["contextId"] == first["contextId"]
    assert state_of(second["status"]["state"]) == "input-required"
    assert status_text(second) == reply_of(SECOND)
    assert reply_artifacts(second) == {
        "chat-reply-1": reply_of(FIRST),
        "chat-reply-2": reply_of(SECOND),
    }
    # The history holds the users' messages and the agent's replies, no progress messages.
    assert history(second) == [("user", FIRST), ("agent", reply_of(FIRST)), ("user", SECOND)]
    assert all(
        m.get("contextId", first["contextId"]) == first["contextId"] for m in second["history"]
    )
    # The second generation carried the whole conversation: turn one and its reply.
    assert generated(double_replies) == [
        [{"role": "user", "content": FIRST}],
        [
            {"role": "user", "content": FIRST},
            {"role": "assistant", "content": reply_of(FIRST)},
            {"role": "user", "content": SECOND},
        ],
    ]
    got = await api.get(first["id"])
    assert history(got) == history(second) and status_text(got) == reply_of(SECOND)


async def test_each_turn_is_screened_as_the_whole_conversation(
    http: httpx.AsyncClient, double_replies: OllamaDouble
) -> None:
    api = Api(http, "jsonrpc", "1.0")
    first = await api.say(FIRST)
    double_replies.reset()
    double_replies.set_replies(REPLIES)
    await api.say(SECOND, task_id=first["id"], skill=None)
    screens = [request.body["messages"] for request in double_replies.chat_requests]
    conversation = [
        {"role": "user", "content": FIRST},
        {"role": "assistant", "content": reply_of(FIRST)},
        {"role": "user", "content": SECOND},
    ]
    assert screens[0] == conversation  # the input screen: the conversation so far
    reply = reply_of(SECOND)
    # Chunk screens overlap generation, so they may reach the guard out of order.
    outputs = sorted((screen[-1]["content"] for screen in screens[1:]), key=len)
    assert all(screen[:-1] == conversation for screen in screens[1:])
    assert outputs[-1] == reply and all(reply.startswith(text) for text in outputs)
    tokens = len(reply.split())
    assert len(outputs) == -(-tokens // CHUNK_TOKENS)  # one screen per chunk


# --- streaming -----------------------------------------------------------------------------------


@dataclass
class ScreenClock:
    """A guard judge that records when each screen of a reply was answered."""

    unsafe: str | None = None  # a word that makes a reply unsafe
    answered: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        last = messages[-1]
        if last["role"] != "assistant":
            return "safe"
        verdict = "unsafe\nS1" if self.unsafe and self.unsafe in last["content"] else "safe"
        with self.lock:  # the answer leaves right after the judge returns
            self.answered.append((time.monotonic(), last["content"]))
        return verdict


def assert_released_after_screens(chunks: list[Event], clock: ScreenClock) -> None:
    """Every chunk arrived after the screen of the reply up to and including it answered."""
    so_far = ""
    screens = dict((text, at) for at, text in clock.answered)
    for chunk in chunks:
        so_far += chunk.text
        assert so_far in screens, f"no screen covered {so_far!r}"
        assert screens[so_far] < chunk.at, f"{chunk.text!r} arrived before its screen answered"


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_streamed_replies_arrive_as_artifact_chunks_each_after_its_screen(
    http: httpx.AsyncClient, double_replies: OllamaDouble, binding: str, version: str
) -> None:
    clock = ScreenClock()
    double_replies.set_rules(clock)
    double_replies.set_latency(0.05)  # each screen takes a while: chunks would overtake it
    double_replies.set_token_delay(0.005)
    api = Api(http, binding, version)

    events = await api.stream(api.message(FIRST))
    assert [e.kind for e in events[:2]] == ["task", "status"]
    assert events[0].state == "submitted" and events[1].state == "working"
    assert events[1].raw["status"].get("message") is None  # progress is not conversation
    chunks = [e for e in events if e.kind == "artifact"]
    *pieces, closing = chunks
    reply = reply_of(FIRST)
    assert len(pieces) == -(-len(reply.split()) // CHUNK_TOKENS)  # one update per chunk
    assert "".join(p.text for p in pieces) == reply
    assert [p.raw.get("append", False) for p in pieces] == [False] + [True] * (len(pieces) - 1)
    assert not any(p.raw.get("lastChunk", False) for p in pieces)
    assert closing.raw["lastChunk"] is True and closing.raw["append"] is True
    assert closing.text == "" and closing.raw["artifact"]["metadata"]["finish_reason"] == "stop"
    assert {c.raw["artifact"]["artifactId"] for c in chunks} == {"chat-reply-1"}
    assert events[-1].kind == "status" and events[-1].state == "input-required"
    assert events[-1].text == reply
    assert_released_after_screens(pieces, clock)

    # The next turn streams too; a follow-up's stream starts with its working status.
    clock.answered.clear()
    events = await api.stream(api.message(SECOND, task_id=task_id_of(events), skill=None))
    assert events[0].kind == "status" and events[0].state == "working"
    *pieces, closing = [e for e in events if e.kind == "artifact"]
    assert "".join(p.text for p in pieces) == reply_of(SECOND)
    assert {p.raw["artifact"]["artifactId"] for p in pieces} == {"chat-reply-2"}
    assert closing.raw["lastChunk"] is True
    assert events[-1].state == "input-required"
    assert_released_after_screens(pieces, clock)


# --- the end of a conversation -------------------------------------------------------------------


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_cancel_ends_a_waiting_conversation(
    http: httpx.AsyncClient, double_replies: OllamaDouble, binding: str, version: str
) -> None:
    api = Api(http, binding, version)
    first = await api.say(FIRST)
    canceled = await api.cancel(first["id"])
    assert state_of(canceled["status"]["state"]) == "canceled"
    got = await api.get(first["id"])
    assert state_of(got["status"]["state"]) == "canceled"
    # The conversation so far stays on the task: the reply was released, it passed.
    assert reply_artifacts(got) == {"chat-reply-1": reply_of(FIRST)}
    assert ("agent", reply_of(FIRST)) in [*history(got), ("agent", status_text(got))]
    with pytest.raises(ApiError) as again:
        await api.cancel(first["id"])
    assert again.value.code in (NOT_CANCELABLE, 400)
    with pytest.raises(ApiError) as follow_up:
        await api.say(SECOND, task_id=first["id"], skill=None)
    assert follow_up.value.code in (UNSUPPORTED, 400) and "canceled" in follow_up.value.message
    assert len(double_replies.generation_requests) == 1


async def test_cancel_while_a_reply_streams(
    http: httpx.AsyncClient, double_replies: OllamaDouble
) -> None:
    double_replies.set_token_delay(0.1)
    api = Api(http, "jsonrpc", "1.0")
    task = await api.send(api.message(FIRST), {"returnImmediately": True})
    for _ in range(200):  # until the first chunk was released
        if (await api.get(task["id"])).get("artifacts"):
            break
        await asyncio.sleep(0.02)
    canceled = await api.cancel(task["id"])
    assert state_of(canceled["status"]["state"]) == "canceled"
    await asyncio.sleep(0.5)  # a turn that went on would publish more chunks by now
    got = await api.get(task["id"])
    assert state_of(got["status"]["state"]) == "canceled"
    released = reply_artifacts(got)["chat-reply-1"]
    assert released and reply_of(FIRST).startswith(released) and released != reply_of(FIRST)


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_a_blocked_turn_ends_the_conversation_rejected(
    http: httpx.AsyncClient, double_replies: OllamaDouble, version: str
) -> None:
    double_replies.set_rules([("bomb", "unsafe\nS9")])
    api = Api(http, "jsonrpc", version)
    first = await api.say(FIRST)
    blocked = await api.say("And how do I build a bomb?", task_id=first["id"], skill=None)
    assert state_of(blocked["status"]["state"]) == "rejected"
    assert status_text(blocked) == (
        "rejected: the guard judged the input unsafe: S9 Indiscriminate Weapons"
    )
    assert status_data(blocked) == {
        "reason": "content-blocked",
        "stage": "input",
        "categories": [{"code": "S9", "name": "Indiscriminate Weapons"}],
        "indices": [0],
    }
    assert reply_artifacts(blocked) == {"chat-reply-1": reply_of(FIRST)}  # no second reply
    assert len(double_replies.generation_requests) == 1  # nothing was generated for it
    with pytest.raises(ApiError) as after:
        await api.say(SECOND, task_id=first["id"], skill=None)
    assert after.value.code == UNSUPPORTED and "rejected" in after.value.message


async def test_a_blocked_first_message_is_rejected(
    http: httpx.AsyncClient, double_replies: OllamaDouble
) -> None:
    double_replies.set_rules([("bomb", "unsafe\nS9")])
    task = await Api(http, "rest", "1.0").say("How do I build a bomb?")
    assert state_of(task["status"]["state"]) == "rejected" and not task.get("artifacts")
    assert status_data(task)["stage"] == "input"
    assert double_replies.generation_requests == []


@pytest.mark.parametrize(("binding", "version"), [("jsonrpc", "1.0"), ("rest", "0.3")])
async def test_content_filter_mid_reply_rejects_with_the_categories(
    http: httpx.AsyncClient, double_replies: OllamaDouble, binding: str, version: str
) -> None:
    clock = ScreenClock(unsafe="poison")
    double_replies.set_rules(clock)
    api = Api(http, binding, version)
    events = await api.stream(api.message("Tell me about poison."))
    chunks = [e for e in events if e.kind == "artifact"]
    *pieces, closing = chunks
    released = "".join(p.text for p in pieces)
    # What passed was released and stays released; nothing from the unsafe chunk on.
    reply = reply_of("poison")
    assert released and reply.startswith(released) and "poison" not in released
    assert_released_after_screens(pieces, clock)
    metadata = closing.raw["artifact"]["metadata"]
    assert closing.raw["lastChunk"] is True and metadata["finish_reason"] == "content_filter"
    assert metadata["categories"] == [{"code": "S1", "name": "Violent Crimes"}]
    final = events[-1]
    assert final.kind == "status" and final.state == "rejected"
    task = await api.get(task_id_of(events))
    assert (
        status_text(task)
        == "rejected: the guard judged the model's reply unsafe: S1 Violent Crimes"
    )
    assert status_data(task) == {
        "reason": "content-blocked",
        "stage": "output",
        "categories": [{"code": "S1", "name": "Violent Crimes"}],
        "indices": [0],
    }
    assert reply_artifacts(task) == {"chat-reply-1": released}


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_a_guard_outage_before_the_reply_fails_the_turn(
    http: httpx.AsyncClient, double_replies: OllamaDouble, version: str
) -> None:
    api = Api(http, "jsonrpc", version)
    first = await api.say(FIRST)
    double_replies.fail_next(10, status=500)
    failed = await api.say(SECOND, task_id=first["id"], skill=None)
    assert state_of(failed["status"]["state"]) == "failed"
    assert status_data(failed) == {"reason": "guard-unavailable", "kind": "http", "retry_after": 7}
    assert "retry after 7 s" in status_text(failed)
    assert reply_artifacts(failed) == {"chat-reply-1": reply_of(FIRST)}
    assert len(double_replies.generation_requests) == 1


async def test_a_guard_failure_mid_reply_fails_and_sends_nothing_unscreened(
    http: httpx.AsyncClient, double_replies: OllamaDouble
) -> None:
    answered: list[str] = []

    def judge(messages: list[dict[str, Any]]) -> str:
        # By content, not by arrival order (chunk screens overlap): the screens of the first
        # two chunks pass, the third gets no verdict.
        if messages[-1]["role"] != "assistant":
            return "safe"
        answered.append(messages[-1]["content"])
        words = len(messages[-1]["content"].split())
        return "safe" if words <= 2 * CHUNK_TOKENS else "this is not a verdict"

    double_replies.set_rules(judge)
    api = Api(http, "jsonrpc", "1.0")
    events = await api.stream(api.message(FIRST))
    *pieces, closing = [e for e in events if e.kind == "artifact"]
    released = "".join(p.text for p in pieces)
    passed = [text for text in answered if len(text.split()) <= 2 * CHUNK_TOKENS]
    assert released == max(passed, key=len)  # the two screens that passed, no more
    assert len(released.split()) == 2 * CHUNK_TOKENS
    assert closing.raw["lastChunk"] is True
    assert closing.raw["artifact"]["metadata"]["finish_reason"] == "error"
    assert events[-1].state == "failed"
    task = await api.get(task_id_of(events))
    assert status_data(task)["reason"] == "guard-unavailable"


async def test_a_chat_model_failure_mid_reply_fails_the_turn(
    http: httpx.AsyncClient, double_replies: OllamaDouble
) -> None:
    double_replies.break_stream_after(6)
    api = Api(http, "rest", "1.0")
    events = await api.stream(api.message(FIRST))
    assert events[-1].kind == "status" and events[-1].state == "failed"
    task = await api.get(task_id_of(events))
    assert status_data(task)["reason"] == "chat-unavailable"
    released = reply_artifacts(task).get("chat-reply-1", "")
    assert len(released.split()) <= 4 and reply_of(FIRST).startswith(released)


# --- history length and subscriptions ------------------------------------------------------------


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_history_length_limits_the_history_returned(
    http: httpx.AsyncClient, double_replies: OllamaDouble, binding: str, version: str
) -> None:
    api = Api(http, binding, version)
    first = await api.say(FIRST)
    await api.say(SECOND, task_id=first["id"], skill=None)
    whole = await api.get(first["id"])
    assert len(whole["history"]) == 3
    last = await api.get(first["id"], history_length=1)
    assert history(last) == [("user", SECOND)]
    assert status_text(last) == reply_of(SECOND)  # the waiting reply is not history
    if version == "1.0":  # 0.3's historyLength 0 is "not given" (a plain proto3 int)
        assert not (await api.get(first["id"], history_length=0)).get("history")
    assert len((await api.get(first["id"]))["history"]) == 3  # the store keeps it all


@pytest.mark.parametrize("version", ["1.0", "0.3"])
async def test_send_history_length_limits_the_answer(
    http: httpx.AsyncClient, double_replies: OllamaDouble, version: str
) -> None:
    api = Api(http, "jsonrpc", version)
    first = await api.say(FIRST)
    second = await api.send(
        api.message(SECOND, task_id=first["id"], skill=None), {"historyLength": 2}
    )
    assert history(second) == [("agent", reply_of(FIRST)), ("user", SECOND)]
    assert len((await api.get(first["id"]))["history"]) == 3  # the store keeps it all


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_subscribing_to_a_live_turn_streams_its_remaining_events(
    server: ServerProcess, double_replies: OllamaDouble, binding: str, version: str
) -> None:
    double_replies.set_token_delay(0.05)
    # The subscription gets a connection of its own (see test_scale_out.py).
    async with h2_client(server) as calls, h2_client(server) as stream:
        api = Api(calls, binding, version)
        configuration = {"returnImmediately": True} if version == "1.0" else {"blocking": False}
        task = await api.send(api.message(FIRST), configuration)
        events = await asyncio.wait_for(Api(stream, binding, version).subscribe(task["id"]), 30)
        snapshot = events[0]
        assert snapshot.kind == "task" and snapshot.raw["id"] == task["id"]
        assert snapshot.state in ("submitted", "working")
        # The snapshot's chunks and the streamed ones make the reply, none twice or lost.
        before = reply_artifacts(snapshot.raw).get("chat-reply-1", "")
        streamed = "".join(e.text for e in events if e.kind == "artifact")
        assert before + streamed == reply_of(FIRST)
        # The stream ends where the turn does: the task waits for the next message.
        assert events[-1].kind == "status" and events[-1].state == "input-required"
        assert events[-1].text == reply_of(FIRST)

        # A waiting conversation runs nothing: its subscription is the snapshot alone.
        waiting = await asyncio.wait_for(Api(stream, binding, version).subscribe(task["id"]), 10)
        assert [e.kind for e in waiting] == ["task"] and waiting[0].state == "input-required"

        # On an ended conversation it is the protocol's error.
        await api.cancel(task["id"])
        with pytest.raises(ApiError) as ended:
            await Api(stream, binding, version).subscribe(task["id"])
        assert ended.value.code in (UNSUPPORTED, 400) and "terminal state" in ended.value.message


# --- refusals before anything runs ---------------------------------------------------------------


@pytest.mark.parametrize(("binding", "version"), APIS, ids=API_IDS)
async def test_a_follow_up_to_a_completed_classification_is_refused(
    http: httpx.AsyncClient, double: OllamaDouble, binding: str, version: str
) -> None:
    api = Api(http, binding, version)
    done = await api.say("A moving, beautifully acted film.", skill=None)
    assert state_of(done["status"]["state"]) == "completed"
    screens = len(double.chat_requests)
    with pytest.raises(ApiError) as refused:
        await api.say("And this one?", task_id=done["id"], skill=None)
    if binding == "jsonrpc":
        assert refused.value.code == UNSUPPORTED
    else:
        assert refused.value.code == 400 and refused.value.status == "FAILED_PRECONDITION"
    assert f"task {done['id']} is completed" in refused.value.message
    got = await api.get(done["id"])
    assert state_of(got["status"]["state"]) == "completed" and len(got["history"]) == len(
        done["history"]
    )
    assert len(double.chat_requests) == screens and double.generation_requests == []


async def test_a_follow_up_while_the_reply_streams_is_refused(
    http: httpx.AsyncClient, double_replies: OllamaDouble
) -> None:
    double_replies.set_token_delay(0.05)
    api = Api(http, "jsonrpc", "1.0")
    task = await api.send(api.message(FIRST), {"returnImmediately": True})
    with pytest.raises(ApiError) as refused:
        await api.say(SECOND, task_id=task["id"], skill=None)
    assert refused.value.code == UNSUPPORTED and "not finished" in refused.value.message
    for _ in range(200):
        got = await api.get(task["id"])
        if state_of(got["status"]["state"]) == "input-required":
            break
        await asyncio.sleep(0.05)
    assert history(got) == [("user", FIRST)] and len(double_replies.generation_requests) == 1


@pytest.mark.parametrize(("binding", "version"), [("jsonrpc", "1.0"), ("rest", "0.3")])
async def test_limits_refuse_a_turn_with_invalid_params(
    http: httpx.AsyncClient, double_replies: OllamaDouble, binding: str, version: str
) -> None:
    api = Api(http, binding, version)
    expected = INVALID if binding == "jsonrpc" else 400
    with pytest.raises(ApiError) as too_long:
        await api.say("x" * 20_001)  # MAX_TEXT_CHARS is 20000
    assert too_long.value.code == expected and "at most 20000" in too_long.value.message
    first = await api.say(FIRST)
    with pytest.raises(ApiError) as blank:
        await api.say("   ", task_id=first["id"], skill=None)
    assert blank.value.code == expected
    second = await api.say(SECOND, task_id=first["id"], skill=None)
    assert state_of(second["status"]["state"]) == "input-required"
    # A third message would make five messages; CHAT_MAX_MESSAGES is four.
    with pytest.raises(ApiError) as too_many:
        await api.say("A third question.", task_id=first["id"], skill=None)
    assert too_many.value.code == expected
    assert "5 messages long; at most 4 (CHAT_MAX_MESSAGES)" in too_many.value.message
    # Refused before anything ran: the conversation still waits, unchanged.
    got = await api.get(first["id"])
    assert state_of(got["status"]["state"]) == "input-required" and len(got["history"]) == 3
    assert len(double_replies.generation_requests) == 2


async def test_limit_errors_name_the_field(
    http: httpx.AsyncClient, double_replies: OllamaDouble
) -> None:
    params = {"message": Api(http, "jsonrpc", "1.0").message("x" * 20_001)}
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": params}
    error = (await http.post("/a2a/jsonrpc", json=body, headers=V1)).json()["error"]
    [bad] = [d for d in error["data"] if d["@type"].endswith("BadRequest")]
    assert [v["field"] for v in bad["fieldViolations"]] == ["message"]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"skill": "chat", "texts": ["a", "b"]}, "'texts' is not for the chat skill"),
        ({"skill": "chat", "text": "hi", "model": "x"}, "'model' is not for the chat skill"),
    ],
    ids=["texts", "model"],
)
async def test_chat_turns_take_one_message(
    http: httpx.AsyncClient, double: OllamaDouble, data: dict[str, Any], says: str
) -> None:
    message = {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "parts": [{"data": data}]}
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}}
    error = (await http.post("/a2a/jsonrpc", json=body, headers=V1)).json()["error"]
    assert error["code"] == INVALID and says in error["message"]


async def test_a_data_part_text_is_a_turn_and_a_follow_up_cannot_switch_skill(
    http: httpx.AsyncClient, double_replies: OllamaDouble
) -> None:
    api = Api(http, "jsonrpc", "1.0")
    message = {
        "role": "ROLE_USER",
        "messageId": uuid.uuid4().hex,
        "parts": [{"data": {"skill": "chat", "text": FIRST}}],
    }
    first = await api.send(message)
    assert status_text(first) == reply_of(FIRST)
    with pytest.raises(ApiError) as switched:
        await api.say(SECOND, task_id=first["id"], skill="moderation")
    assert switched.value.code == INVALID and "cannot name the skill 'moderation'" in str(
        switched.value
    )
    second = await api.say(SECOND, task_id=first["id"], skill="chat")  # naming it is fine
    assert status_text(second) == reply_of(SECOND)
    assert generated(double_replies)[1] == [
        {"role": "user", "content": FIRST},  # the data part's text, read from the history
        {"role": "assistant", "content": reply_of(FIRST)},
        {"role": "user", "content": SECOND},
    ]


# --- the a2a-sdk client --------------------------------------------------------------------------


def _card_with_only(card: AgentCard, index: int) -> AgentCard:
    only = AgentCard()
    only.CopyFrom(card)
    del only.supported_interfaces[:]
    only.supported_interfaces.append(card.supported_interfaces[index])
    return only


@pytest.mark.parametrize("stream", [False, True], ids=["send", "stream"])
@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=API_IDS)
async def test_the_sdk_client_holds_a_two_turn_chat(
    http: httpx.AsyncClient, double_replies: OllamaDouble, index: int, stream: bool
) -> None:
    card = parse_agent_card((await http.get("/.well-known/agent-card.json")).json())
    [chat] = [skill for skill in card.skills if skill.id == "chat"]
    assert chat.examples and list(chat.output_modes) == ["text/plain"]
    async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as sdk_http:
        config = ClientConfig(
            streaming=stream,
            httpx_client=sdk_http,
            supported_protocol_bindings=[card.supported_interfaces[index].protocol_binding],
        )
        client = ClientFactory(config).create(_card_with_only(card, index))
        first = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=FIRST)])
        first.metadata.update({"skill": "chat"})
        events = [e async for e in client.send_message(SendMessageRequest(message=first))]
        task = events[0].task
        assert task.id
        final = events[-1]
        if stream:
            assert final.status_update.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            reply = "".join(
                "".join(get_text_parts(e.artifact_update.artifact.parts))
                for e in events
                if e.HasField("artifact_update")
            )
        else:
            assert final.task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
            reply = "".join(get_text_parts(final.task.status.message.parts))
        assert reply == reply_of(FIRST)

        second = Message(
            role=Role.ROLE_USER,
            message_id=uuid.uuid4().hex,
            task_id=task.id,
            parts=[Part(text=SECOND)],
        )
        events = [e async for e in client.send_message(SendMessageRequest(message=second))]
        state = (
            events[-1].status_update.status
            if events[-1].HasField("status_update")
            else events[-1].task.status
        )
        assert state.state == TaskState.TASK_STATE_INPUT_REQUIRED
        assert "".join(get_text_parts(state.message.parts)) == reply_of(SECOND)
        await client.close()
    assert generated(double_replies)[1][1] == {"role": "assistant", "content": reply_of(FIRST)}


# --- the card ------------------------------------------------------------------------------------


def test_the_card_lists_chat_with_examples_only_while_chat_is_on() -> None:
    on = public_card(Settings(_env_file=None, chat_model="llama3.2:1b"), "1")
    assert [skill.id for skill in on.skills] == list(SKILLS)
    [chat] = [skill for skill in on.skills if skill.id == "chat"]
    assert chat.examples and "input-required" in chat.description
    assert "taskId" in chat.description
    off_settings = Settings(_env_file=None, chat_model="")
    off = public_card(off_settings, "1")
    assert "chat" not in [skill.id for skill in off.skills]
    assert "chat" not in [skill.id for skill in extended_card(off, off_settings, [], "m").skills]


async def test_chat_off_refuses_the_skill(double: OllamaDouble) -> None:
    with running_server(ollama_host=double.url, chat_model="", models="sentiment-cnn-int8") as off:
        async with h2_client(off) as client:
            with pytest.raises(ApiError) as refused:
                await Api(client, "jsonrpc", "1.0").say(FIRST)
    assert refused.value.code == INVALID and "CHAT_MODEL is empty" in refused.value.message


# --- replicas sharing a task store ---------------------------------------------------------------


@pytest.fixture
def replicas(ollama_double: OllamaDouble, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    url = os.environ.get("TEST_DATABASE_URL") or f"sqlite+aiosqlite:///{tmp_path}/tasks.db"
    settings = {
        "ollama_host": ollama_double.url,
        "task_store_url": url,
        "models": "sentiment-cnn-int8",
        "chat_chunk_tokens": CHUNK_TOKENS,
    }
    servers = [start_server(**settings) for _ in range(2)]
    try:
        for running in servers:
            running.wait_ready()
        yield servers
    finally:
        for running in servers:
            running.stop()


async def test_a_conversation_continues_on_another_replica_sharing_the_store(
    replicas: list[ServerProcess], ollama_double: OllamaDouble
) -> None:
    ollama_double.set_replies(REPLIES)
    a, b = replicas
    async with h2_client(a) as on_a, h2_client(b) as on_b, h2_client(a) as stream_a:
        first = await Api(on_a, "jsonrpc", "1.0").say(FIRST)
        assert state_of(first["status"]["state"]) == "input-required"
        # A person answers later than A releases its per-task object of turn one (a subscriber
        # on A within that moment would attach to A's own, idle, object).
        await asyncio.sleep(0.5)

        # Turn two on B, streamed slowly, while a subscriber on A (which does not run it)
        # follows it in the store.
        ollama_double.set_token_delay(0.05)
        b_api = Api(on_b, "rest", "1.0")
        turn = asyncio.create_task(
            b_api.stream(b_api.message(SECOND, task_id=first["id"], skill=None))
        )
        for _ in range(200):  # until B has started the turn
            got = await Api(on_a, "jsonrpc", "1.0").get(first["id"])
            if state_of(got["status"]["state"]) == "working":
                break
            await asyncio.sleep(0.02)
        followed = await asyncio.wait_for(
            Api(stream_a, "jsonrpc", "1.0").subscribe(first["id"]), 30
        )
        streamed = await asyncio.wait_for(turn, 30)
        assert streamed[-1].state == "input-required"
        assert followed[0].kind == "task" and followed[-1].state == "input-required"
        before = reply_artifacts(followed[0].raw).get("chat-reply-2", "")
        after = "".join(
            e.text for e in followed if e.kind == "artifact" and "chat-reply-2" in json.dumps(e.raw)
        )
        assert before + after == reply_of(SECOND)

        # B generated from the history A stored.
        assert generated(ollama_double)[-1] == [
            {"role": "user", "content": FIRST},
            {"role": "assistant", "content": reply_of(FIRST)},
            {"role": "user", "content": SECOND},
        ]
        # A sees the whole conversation, and ends it.
        got = await Api(on_a, "jsonrpc", "1.0").get(first["id"])
        assert history(got) == [("user", FIRST), ("agent", reply_of(FIRST)), ("user", SECOND)]
        assert status_text(got) == reply_of(SECOND)
        canceled = await Api(on_a, "jsonrpc", "1.0").cancel(first["id"])
        assert state_of(canceled["status"]["state"]) == "canceled"
        got = await Api(on_b, "jsonrpc", "0.3").get(first["id"])
        assert state_of(got["status"]["state"]) == "canceled"
        assert reply_artifacts(got) == {
            "chat-reply-1": reply_of(FIRST),
            "chat-reply-2": reply_of(SECOND),
        }


@pytest.mark.parametrize("binding", ["jsonrpc", "rest"])
async def test_a_full_in_memory_store_fails_new_tasks_and_keeps_the_waiting_ones(
    double: OllamaDouble, fresh_double: OllamaDouble, binding: str
) -> None:
    fresh_double.set_replies(REPLIES)
    # TASK_STORE_MAX_TASKS 4: one caller may hold one unfinished task (a quarter).
    with running_server(
        ollama_host=double.url, chat_model="llama3.2:1b", task_store_max_tasks=4
    ) as server:
        async with h2_client(server) as http:
            api = Api(http, binding, "1.0")
            waiting = await api.say(FIRST)
            assert state_of(waiting["status"]["state"]) == "input-required"
            for skill in ("chat", None):  # a new conversation, a one-shot classification
                refused = await api.say(GOOD_REVIEW, skill=skill)
                assert state_of(refused["status"]["state"]) == "failed", refused
                assert status_data(refused) == {"reason": "task-store-full", "retry_after": 5}
                assert "for one caller (1 task)" in status_text(refused)
            # The waiting conversation was kept and goes on; once it ends, there is room.
            second = await api.say(SECOND, task_id=waiting["id"], skill=None)
            assert state_of(second["status"]["state"]) == "input-required"
            await api.cancel(waiting["id"])
            classified = await api.say(GOOD_REVIEW, skill=None)
            assert state_of(classified["status"]["state"]) == "completed", classified
