"""Command line: ``python -m agents ask URL "text" [--skill S] [--stream] [--token T]``.

The token is sent only to the origin of URL; ``--send-token-to ORIGIN`` (repeatable) or
``--trust-card-urls`` let it go to other URLs the agent's card names.

Asks any A2A agent (this service, or another) one question over HTTP/2 and prints the
events as they arrive, then the final result. Exit status: 0 when the task completed (or,
for a conversation, waits for the next message), 1 when it ended otherwise (rejected,
failed, canceled), 2 when the agent could not be reached or refused the request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from service.cli_help import plain


def _origin(value: str) -> str:
    """An argparse type: an http(s) origin (a path, if any, is ignored)."""
    from service.a2a.client import origin_of

    try:
        origin_of(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _seconds(value: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {value!r}")
    return seconds


# The second and third paragraphs of the module docstring, as --help shows them.
ASK_DESCRIPTION = plain("\n\n".join((__doc__ or "").split("\n\n")[1:3]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agents", description=plain((__doc__ or "").split("\n")[0])
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ask_cmd = commands.add_parser(
        "ask", help="send one text message to an A2A agent", description=ASK_DESCRIPTION
    )
    add_ask_arguments(ask_cmd)
    return parser


def add_ask_arguments(ask_cmd: argparse.ArgumentParser) -> None:
    """The arguments of ``ask`` (``gis ask`` has the same)."""
    ask_cmd.add_argument("url", help="the agent's base URL (its card is at /.well-known/...)")
    ask_cmd.add_argument("text", help="the text to send")
    ask_cmd.add_argument("--skill", help="skill id, sent as the message metadata 'skill'")
    ask_cmd.add_argument("--stream", action="store_true", help="stream status updates (SSE)")
    ask_cmd.add_argument(
        "--token",
        default=os.environ.get("A2A_TOKEN"),
        help="bearer token, sent only to the origin of URL (default: $A2A_TOKEN)",
    )
    ask_cmd.add_argument(
        "--send-token-to",
        action="append",
        default=[],
        type=_origin,
        metavar="ORIGIN",
        help="also send the token to this origin (scheme://host[:port]) when the agent's card "
        "names it; repeatable (default: only the origin of URL gets the token)",
    )
    ask_cmd.add_argument(
        "--trust-card-urls",
        action="store_true",
        help="send the token to every URL the agent's card names, whatever its origin",
    )
    ask_cmd.add_argument(
        "--http1",
        action="store_true",
        help="allow HTTP/1.1 on plain http:// (default: HTTP/2 with prior knowledge)",
    )
    ask_cmd.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds an answer (streaming: the next event) may take (default: the "
        "service's default REQUEST_TIMEOUT + CHAT_TIMEOUT, plus 10)",
    )
    ask_cmd.add_argument("--json", action="store_true", help="end with the final task as JSON")


def main(argv: list[str] | None = None) -> int:
    return run_ask(build_parser().parse_args(argv))


def run_ask(args: argparse.Namespace) -> int:
    """Ask, print, and return the exit status (see the module docstring)."""
    from service.a2a.client import DEFAULT_TIMEOUT, answer_json, ask

    try:
        answer = asyncio.run(
            ask(
                args.url,
                args.text,
                skill=args.skill,
                stream=args.stream,
                token=args.token,
                http1=args.http1,
                send_token_to=args.send_token_to,
                trust_card_urls=args.trust_card_urls,
                out=lambda line: print(line, flush=True),
                notice=lambda line: print(line, file=sys.stderr, flush=True),
                answer_timeout=args.timeout or DEFAULT_TIMEOUT,
            )
        )
    except Exception as exc:  # unreachable agent, bad card, refused request (A2AError), ...
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"result: {answer.state}")
    if args.json:
        print(json.dumps(answer_json(answer), indent=2))
    return 0 if answer.ok else 1


if __name__ == "__main__":
    sys.exit(main())
