"""What a slow guard costs: /v1/classify with a guard that takes ``--latency`` seconds per
screen and a new text every request (no cached verdict).

1. Latency: the median of requests sent one at a time, in units of one screen. Screened one
   after the other, a request waits for two screens; with the output screen overlapping the
   input screen, for about one.
2. Throughput at scale: ``--streams`` concurrent streams over one HTTP/2 connection for
   ``--duration`` seconds each. No more than GUARD_CONCURRENCY screens run at once, so the
   service can answer at most GUARD_CONCURRENCY / (2 screens x latency) requests a second;
   the table gives the share of that bound reached, and the refusals (503) counted.

    python -m benchmarks.guard_latency_bench [--latency 0.03] [--requests 200]
        [--streams 16,64] [--duration 6] [--rounds 3] [--compare PATH]
        [--out benchmarks/results/guard_latency.md]

Every figure is the median of ``--rounds`` rounds (a fresh service each round; with
``--compare``, the checkouts take turns round by round); the table lists each round too.

It starts the Ollama test double with that latency and the service (one worker, h2c) on
127.0.0.1, checking every answer. ``--compare PATH`` also measures the service from another
checkout (e.g. a ``git worktree`` of an older commit), against the same double, in the same
run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.http_bench import RUNNING_ON, _env, _machine, _process
from service.config import Settings

REPO = Path(__file__).resolve().parents[1]
TEXT = "Review {i}: the cast is strong and the second half moves quickly."
# The setting's default, which the service under test runs with.
GUARD_CONCURRENCY: int = Settings.model_fields["guard_concurrency"].default


async def measure(url: str, requests: int) -> list[float]:
    """Client-side latency of each request, in seconds (after 10 warm-up requests)."""
    latencies = []
    async with httpx.AsyncClient(http1=False, http2=True, base_url=url, timeout=30) as client:
        for i in range(requests + 10):
            body = {"text": TEXT.format(i=f"{time.time_ns()}-{i}")}
            started = time.perf_counter()
            response = await client.post("/v1/classify", json=body)
            elapsed = time.perf_counter() - started
            answer = response.json()
            if response.status_code != 200 or not answer["results"][0]["screens"]["output"]:
                raise RuntimeError(f"unexpected answer {response.status_code}: {answer}")
            if i >= 10:
                latencies.append(elapsed)
    return latencies


async def measure_scale(url: str, streams: int, duration: float) -> dict[str, float]:
    """Requests answered (200) and refused (503) per second with ``streams`` concurrent
    streams over one connection, and the answered ones' median latency."""
    answered: list[float] = []
    refused = 0
    async with httpx.AsyncClient(
        http1=False, http2=True, base_url=url, timeout=30,
        limits=httpx.Limits(max_connections=1),
    ) as client:  # fmt: skip

        async def stream(index: int, until: float) -> None:
            nonlocal refused
            sent = 0
            while time.perf_counter() < until:
                body = {"text": TEXT.format(i=f"{time.time_ns()}-{index}-{sent}")}
                sent += 1
                started = time.perf_counter()
                response = await client.post("/v1/classify", json=body)
                if response.status_code == 503:
                    refused += 1
                elif response.status_code == 200:
                    answered.append(time.perf_counter() - started)
                else:
                    raise RuntimeError(f"unexpected answer {response.status_code}")

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(stream(i, warm) for i in range(streams)))
        answered.clear()
        refused = 0
        started = time.perf_counter()
        await asyncio.gather(*(stream(i, started + duration) for i in range(streams)))
        elapsed = time.perf_counter() - started
    return {
        "rps": len(answered) / elapsed,
        "refused_ps": refused / elapsed,
        "p50_ms": statistics.median(answered) * 1e3 if answered else float("nan"),
    }


def run(
    checkout: Path, double_url: str, requests: int, streams: list[int], duration: float
) -> dict[str, Any]:
    env = _env(
        OLLAMA_HOST=double_url,
        PORT="0",
        HOST="127.0.0.1",
        WORKERS="1",
        ACCESS_LOG="false",
        GUARD_RETRIES="0",
        GUARD_CACHE_SIZE="0",
        CHAT_MODEL="",
    )
    env["PYTHONPATH"] = str(checkout) + os.pathsep + env.get("PYTHONPATH", "")
    with _process([sys.executable, "-m", "service.server"], env, RUNNING_ON, cwd=checkout) as port:
        url = f"http://127.0.0.1:{port}"
        latencies = asyncio.run(measure(url, requests))
        scale = {n: asyncio.run(measure_scale(url, n, duration)) for n in streams}
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p90_ms": latencies[int(0.9 * (len(latencies) - 1))] * 1e3,
        "scale": scale,
    }


def _median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds, and the rounds' own figures."""
    scale = {
        n: {key: statistics.median(r["scale"][n][key] for r in results)
            for key in ("rps", "refused_ps", "p50_ms")}
        for n in results[0]["scale"]
    }  # fmt: skip
    return {
        "p50_ms": statistics.median(r["p50_ms"] for r in results),
        "p90_ms": statistics.median(r["p90_ms"] for r in results),
        "scale": scale,
        "rounds": {
            "p50_ms": [r["p50_ms"] for r in results],
            "scale": {n: [r["scale"][n]["rps"] for r in results] for n in scale},
        },
    }


def _commit(checkout: Path) -> str:
    """The checkout's commit, with "+changes" when its work tree differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True)
        return done.stdout.strip()

    # No optional locks: a status never takes the index lock from a commit running beside it.
    dirty = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.03)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--streams", default="16,64", help="concurrent streams at scale")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per scale run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument("--compare", type=Path, help="another checkout, measured first")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/guard_latency.md")
    args = parser.parse_args()
    double = [sys.executable, "-m", "tests.ollama_double", "--port", "0", "--all-safe"]
    ready = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
    checkouts = [*([args.compare] if args.compare else []), REPO]
    labels = {c: f"{'this checkout' if c == REPO else c} ({_commit(c)})" for c in checkouts}
    streams = [int(n) for n in args.streams.split(",") if n]
    rounds: dict[Path, list[dict[str, Any]]] = {c: [] for c in checkouts}
    with _process([*double, "--latency", str(args.latency)], _env(), ready) as double_url:
        for index in range(args.rounds):
            for checkout in checkouts:
                result = run(checkout, double_url, args.requests, streams, args.duration)
                rounds[checkout].append(result)
                print(f"round {index + 1} {labels[checkout]}: p50 {result['p50_ms']:.1f} ms, "
                      + ", ".join(f"{n} streams {r['rps']:.1f}/s"
                                  for n, r in result["scale"].items()),
                      file=sys.stderr)  # fmt: skip
    rows = [(labels[c], _median_of(rounds[c])) for c in checkouts]
    screen_ms = args.latency * 1e3
    lines = [
        "# Guard latency benchmark",
        "",
        f"Machine: {_machine()}.",
        "",
        f"Produced by `python -m benchmarks.guard_latency_bench --latency {args.latency}"
        f"{' --compare ' + str(args.compare) if args.compare else ''}` on "
        f"{time.strftime('%Y-%m-%d')}, {args.rounds} round(s), each figure the median over "
        f"the rounds: {args.requests} requests one at a time over one h2c "
        f"connection, a new text each (every screen calls the guard), the guard stand-in "
        f"(the Ollama test double) adding {screen_ms:.0f} ms to every screen; one worker. "
        "Latency is measured by the client; one screen = the added guard latency.",
        "",
        "| service | p50 ms | p90 ms | p50 in screens | p50 per round (ms) |",
        "|---|---:|---:|---:|---|",
    ]
    for label, result in rows:
        lines.append(
            f"| {label} | {result['p50_ms']:.1f} | {result['p90_ms']:.1f} | "
            f"{result['p50_ms'] / screen_ms:.2f} | "
            + " / ".join(f"{v:.1f}" for v in result["rounds"]["p50_ms"])
            + " |"
        )
    concurrency = GUARD_CONCURRENCY
    bound = concurrency / (2 * args.latency)
    lines += [
        "",
        "## Throughput at scale",
        "",
        f"Concurrent streams over one h2c connection, {args.duration:g} s each after 1 s of "
        f"warm-up, a new text every request. GUARD_CONCURRENCY={concurrency} (the default) "
        f"allows at most {concurrency} / (2 screens x {screen_ms:.0f} ms) = {bound:.0f} "
        "requests/s.",
        "",
        "| service | streams | answered/s | share of the bound | refused (503)/s | p50 ms "
        "| answered/s per round |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, result in rows:
        for streams_n, scale in result["scale"].items():
            per_round = " / ".join(f"{v:.1f}" for v in result["rounds"]["scale"][streams_n])
            lines.append(
                f"| {label} | {streams_n} | {scale['rps']:.1f} | {scale['rps'] / bound:.0%} | "
                f"{scale['refused_ps']:.1f} | {scale['p50_ms']:.1f} | {per_round} |"
            )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
