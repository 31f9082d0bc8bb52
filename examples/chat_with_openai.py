"""Chat with the service's guarded chat model through the official ``openai`` package.

    python examples/chat_with_openai.py "Which films are worth watching twice?"
        [--url http://127.0.0.1:8080] [--token T] [--model llama3.2:1b]

The reply streams as it is released: each piece only after the guard passed the text that
covers it. A reply the guard stops ends with finish_reason "content_filter"; a question it
blocks is refused before anything is generated (openai.BadRequestError, exit status 1).
"""

from __future__ import annotations

import argparse
import os
import sys

import openai


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--url", default=os.environ.get("GIS_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("GIS_TOKEN") or "unused")
    parser.add_argument("--model", default=os.environ.get("CHAT_MODEL", "llama3.2:1b"))
    args = parser.parse_args()
    client = openai.OpenAI(base_url=f"{args.url}/v1", api_key=args.token)
    try:
        stream = client.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": args.question}],
            stream=True,
        )
        finish = None
        for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            print(choice.delta.content or "", end="", flush=True)
            finish = choice.finish_reason or finish
    except openai.BadRequestError as refused:
        print(f"refused: {refused.message}")
        return 1
    except openai.AuthenticationError as error:
        hint = "" if args.token != "unused" else " (no token given: --token or GIS_TOKEN)"
        print(f"failed: {error.message}{hint}", file=sys.stderr)
        return 2
    except openai.APIError as error:
        print(f"failed: {error.message}", file=sys.stderr)
        return 2
    print(f"\n[finish_reason: {finish}]")
    return 0 if finish == "stop" else 1


if __name__ == "__main__":
    sys.exit(main())
