"""Ask the service's A2A agent with a2a-sdk's own client (it reads the agent card, picks a
transport and protocol version the card offers, and sends one message).

    python examples/ask_the_a2a_agent.py "A moving, beautifully acted film."
        [--url http://127.0.0.1:8080] [--token T] [--skill sentiment-cnn]

Prints the task's final state and its artifacts' text and data parts. Exit status 0 when the
task completed or (the chat skill) waits for the next turn, 1 when it ended otherwise, 2 when
the agent could not be reached or refused the request. The token is sent only to the origin
of --url, not to other hosts the agent's card may name.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Generator

import httpx
from a2a.client import A2AClientError, ClientConfig, ClientFactory
from a2a.types import Message, Part, Role, SendMessageRequest, TaskState
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

# A whole chat turn may take REQUEST_TIMEOUT + CHAT_TIMEOUT (150 s by default).
TIMEOUT = httpx.Timeout(160.0, connect=10.0)


class OriginToken(httpx.Auth):
    """The bearer token on requests to one origin only."""

    def __init__(self, token: str, url: str) -> None:
        self.token, self.origin = token, httpx.URL(url)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        same = (request.url.scheme, request.url.host, request.url.port) == (
            self.origin.scheme,
            self.origin.host,
            self.origin.port,
        )
        if same:
            request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


async def ask(url: str, text: str, skill: str | None, token: str | None) -> int:
    auth = OriginToken(token, url) if token else None
    async with httpx.AsyncClient(http2=True, http1=False, auth=auth, timeout=TIMEOUT) as http:
        client = await ClientFactory(
            ClientConfig(streaming=False, httpx_client=http)
        ).create_from_url(url)
        metadata = Struct()
        if skill:
            metadata.update({"skill": skill})
        message = Message(
            role=Role.ROLE_USER,
            message_id=uuid.uuid4().hex,
            parts=[Part(text=text)],
            metadata=metadata,
        )
        task = None
        async for event in client.send_message(SendMessageRequest(message=message)):
            task = event.task if event.HasField("task") else task
        if task is None:
            print("the agent answered no task", file=sys.stderr)
            return 2
        print(f"task {task.id}: {TaskState.Name(task.status.state)}")
        for artifact in task.artifacts:
            for part in artifact.parts:
                if part.HasField("text"):
                    print(f"{artifact.name}: {part.text}")
                elif part.HasField("data"):
                    print(f"{artifact.name}: {MessageToDict(part.data)}")
        answered = (TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_INPUT_REQUIRED)
        return 0 if task.status.state in answered else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text")
    parser.add_argument("--url", default=os.environ.get("GIS_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("GIS_TOKEN"))
    parser.add_argument("--skill", help="e.g. sentiment-moe, moderation (default: sentiment-cnn)")
    args = parser.parse_args()
    try:
        return asyncio.run(ask(args.url, args.text, args.skill, args.token))
    except (A2AClientError, httpx.HTTPError) as error:  # unreachable, 401, timeout, ...
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
