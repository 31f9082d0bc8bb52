"""Ask the service's A2A agent with a2a-sdk's own client (it reads the agent card, picks a
transport and protocol version the card offers, and sends one message).

    python examples/ask_the_a2a_agent.py [--url http://127.0.0.1:8080] [--token T]
        [--skill sentiment-cnn] "A moving, beautifully acted film."

Prints the task's final state and its artifacts' text and data parts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid

import httpx
from a2a.client import ClientConfig, ClientFactory
from a2a.types import Message, Part, Role, SendMessageRequest, TaskState
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct


async def ask(url: str, text: str, skill: str | None, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(http2=True, http1=False, headers=headers, timeout=60) as http:
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
        return 0 if task.status.state == TaskState.TASK_STATE_COMPLETED else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text")
    parser.add_argument("--url", default=os.environ.get("GIS_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("GIS_TOKEN"))
    parser.add_argument("--skill", help="e.g. sentiment-moe, moderation (default: sentiment-cnn)")
    args = parser.parse_args()
    return asyncio.run(ask(args.url, args.text, args.skill, args.token))


if __name__ == "__main__":
    sys.exit(main())
