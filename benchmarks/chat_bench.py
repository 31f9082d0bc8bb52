"""Guarded chat benchmark (``make bench-chat``): what the hold-back costs a streamed reply.

    python -m benchmarks.chat_bench [--runs 5] [--tokens 120] [--token-ms 20] [--guard-ms 30]
                                      [--chunks 8,24,48] [--out benchmarks/results/chat.md]

(run from the checkout: the Ollama double it drives lives under tests/)

The Ollama test double (tests/ollama_double.py) generates a reply of ``--tokens`` tokens at a
fixed rate (``--token-ms`` between tokens) and answers every guard screen after
``--guard-ms``. In one run, for each chunk size, it measures

- unscreened: the same generation read directly through the service's chat model client
  (``ChatModel.generate``: the real ``ollama`` client, no guard);
- guarded: ``GuardedPipeline.chat`` (input screen, hold-back, chunk screens overlapping
  generation, release), with the real Llama Guard client;

and reports the medians over ``--runs`` replies of time to the first piece and total time,
their ratios, and the guard calls per reply against the goal ceil(tokens / chunk) + 2.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from service.chat.model import ChatModel
from service.chat.types import ChatDelta, ChatEnd, ChatMessage
from service.config import Settings
from service.core.pipeline import GuardedPipeline
from service.guard.llama_guard import LlamaGuard
from service.models.registry import ModelRegistry
from tests.ollama_double import OllamaDouble

REPO = Path(__file__).resolve().parents[1]

ASK = [ChatMessage("user", "Tell me how to bake bread.")]


@dataclass
class Sample:
    first_s: float  # to the first piece the caller receives
    total_s: float  # to the end of the reply
    guard_calls: int  # screens for this reply, input included
    first_token_s: float  # when the model's first token was generated


def _settings(url: str, chunk: int, tokens: int) -> Settings:
    return Settings(
        _env_file=None,
        ollama_host=url,
        guard_cache_size=0,  # every screen is a real call, as for a new conversation
        guard_retries=0,
        guard_concurrency=8,
        chat_model="llama3.2:1b",
        chat_chunk_tokens=chunk,
        chat_max_tokens=tokens,
        default_model="sentiment-cnn-int8",
        models=["sentiment-cnn-int8"],
    )


async def unscreened(chat: ChatModel, tokens: int) -> Sample:
    started = time.monotonic()
    first = None
    async for piece in chat.generate(ASK, max_tokens=tokens, temperature=None):
        if isinstance(piece, str) and first is None:
            first = time.monotonic() - started
    return Sample(first or 0.0, time.monotonic() - started, 0, first or 0.0)


async def guarded(
    pipeline: GuardedPipeline, double: OllamaDouble, tokens: int, token_s: float
) -> Sample:
    screens_before = len(double.chat_requests)
    started = time.monotonic()  # the double stamps requests with the same clock
    first = None
    _, reply = await pipeline.chat(ASK, max_tokens=tokens)
    async for event in reply:
        if isinstance(event, ChatDelta) and first is None:
            first = time.monotonic() - started
        if isinstance(event, ChatEnd):
            assert event.finish_reason in ("stop", "length"), event
    total = time.monotonic() - started
    # The double sleeps one token interval before sending each token.
    first_token = double.generation_requests[-1].at - started + token_s
    return Sample(first or 0.0, total, len(double.chat_requests) - screens_before, first_token)


async def measure(args: argparse.Namespace) -> list[dict[str, float]]:
    words = " ".join(f"word{i}" for i in range(args.tokens))
    rows = []
    registry = ModelRegistry.load(names=["sentiment-cnn-int8"])
    with OllamaDouble() as double:
        double.set_replies(None, default=words)
        double.set_token_delay(args.token_ms / 1000)
        double.set_latency(args.guard_ms / 1000)  # the guard's path only
        for chunk in args.chunks:
            settings = _settings(double.url, chunk, args.tokens)
            guard = LlamaGuard(settings)
            chat = ChatModel(settings)
            pipeline = GuardedPipeline(registry, guard, settings, chat)
            plain, screened = [], []
            for run in range(args.runs + 1):  # the first run of each kind warms up
                p = await unscreened(chat, args.tokens)
                g = await guarded(pipeline, double, args.tokens, args.token_ms / 1000)
                if run:
                    plain.append(p)
                    screened.append(g)
            await pipeline.aclose()
            await guard.aclose()
            first_plain = statistics.median(s.first_s for s in plain)
            total_plain = statistics.median(s.total_s for s in plain)
            first_guarded = statistics.median(s.first_s for s in screened)
            total_guarded = statistics.median(s.total_s for s in screened)
            rows.append(
                {
                    "chunk": chunk,
                    "first_plain": first_plain,
                    "first_guarded": first_guarded,
                    # One chunk plus one screen after the guarded stream's own first token
                    # (which comes after the input screen).
                    "first_budget": statistics.median(s.first_token_s for s in screened)
                    + (chunk * args.token_ms + args.guard_ms) / 1000,
                    "total_plain": total_plain,
                    "total_guarded": total_guarded,
                    "ratio": total_guarded / total_plain,
                    "calls": statistics.median(s.guard_calls for s in screened),
                    "calls_goal": math.ceil(args.tokens / chunk) + 2,
                }
            )
            print(f"chunk {chunk}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def render(args: argparse.Namespace, rows: list[dict[str, float]]) -> str:
    lines = [
        "# Guarded chat: the hold-back's cost",
        "",
        f"Command: `python -m benchmarks.chat_bench --runs {args.runs} --tokens {args.tokens} "
        f"--token-ms {args.token_ms:g} --guard-ms {args.guard_ms:g} "
        f"--chunks {','.join(map(str, args.chunks))}`",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'CPU'}, Python "
        f"{platform.python_version()}. Medians of {args.runs} replies per row, after one "
        "warm-up reply; the Ollama test double generates "
        f"{args.tokens} tokens, one every {args.token_ms:g} ms, and answers each guard "
        f"screen after {args.guard_ms:g} ms. *Unscreened* reads the same generation through "
        "the service's chat model client without any screen; *guarded* is "
        "`GuardedPipeline.chat`: the input screen, then chunks held back and released after "
        "the screen of the reply so far (which runs while the next chunk generates).",
        "",
        "| chunk (tokens) | first piece: unscreened | guarded | budget (its first token + "
        "chunk + screen) | total: unscreened | guarded | guarded / unscreened | guard calls "
        "per reply | goal ceil(n/chunk)+2 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['chunk']:.0f} | {row['first_plain'] * 1000:.0f} ms | "
            f"{row['first_guarded'] * 1000:.0f} ms | {row['first_budget'] * 1000:.0f} ms | "
            f"{row['total_plain']:.2f} s | {row['total_guarded']:.2f} s | "
            f"{row['ratio']:.3f} | {row['calls']:.0f} | {row['calls_goal']:.0f} |"
        )
    lines += [
        "",
        "Goals: total at most 1.2x the unscreened generation; the first released piece at "
        "most one chunk plus one screen after the first token (the budget column: the "
        "guarded stream's first token comes one input screen later than the unscreened "
        "one, since the conversation is screened before generation starts); at most "
        "ceil(tokens/chunk) + 2 guard calls per reply (the input screen and one per chunk).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=120)
    parser.add_argument("--token-ms", type=float, default=20.0)
    parser.add_argument("--guard-ms", type=float, default=30.0)
    parser.add_argument(
        "--chunks", type=lambda v: [int(x) for x in v.split(",")], default=[8, 24, 48]
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "chat.md")
    args = parser.parse_args()
    rows = asyncio.run(measure(args))
    args.out.write_text(render(args, rows))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
