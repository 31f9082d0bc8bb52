"""What a slow guard costs one request: median latency of /v1/classify with a guard that
takes ``--latency`` seconds per screen and a new text every request (no cached verdict), in
units of one screen. Screened one after the other, a request waits for two screens; with
the output screen overlapping the input screen, for about one.

    python -m benchmarks.guard_latency_bench [--latency 0.03] [--requests 200]
        [--compare PATH] [--out benchmarks/results/guard_latency.md]

It starts the Ollama test double with that latency and the service (one worker, h2c) on
127.0.0.1, and sends the requests one at a time over one HTTP/2 connection, checking every
answer. ``--compare PATH`` also measures the service from another checkout (e.g. a
``git worktree`` of an older commit), against the same double, in the same run.
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

import httpx

from benchmarks.http_bench import RUNNING_ON, _env, _machine, _process

REPO = Path(__file__).resolve().parents[1]
TEXT = "Review {i}: the cast is strong and the second half moves quickly."


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


def run(checkout: Path, double_url: str, requests: int) -> dict[str, float]:
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
        latencies = asyncio.run(measure(f"http://127.0.0.1:{port}", requests))
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p90_ms": latencies[int(0.9 * (len(latencies) - 1))] * 1e3,
    }


def _commit(checkout: Path) -> str:
    """The checkout's commit, with "+changes" when its work tree differs from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.03)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--compare", type=Path, help="another checkout, measured first")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/guard_latency.md")
    args = parser.parse_args()
    double = [sys.executable, "-m", "tests.ollama_double", "--port", "0", "--all-safe"]
    ready = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
    rows = []
    with _process([*double, "--latency", str(args.latency)], _env(), ready) as double_url:
        checkouts = [args.compare] if args.compare else []
        for checkout in [*checkouts, REPO]:
            label = f"{'this checkout' if checkout == REPO else checkout} ({_commit(checkout)})"
            result = run(checkout, double_url, args.requests)
            rows.append((label, result))
            print(f"{label}: p50 {result['p50_ms']:.1f} ms", file=sys.stderr)
    screen_ms = args.latency * 1e3
    lines = [
        "# Guard latency benchmark",
        "",
        f"Machine: {_machine()}.",
        "",
        f"Produced by `python -m benchmarks.guard_latency_bench --latency {args.latency}"
        f"{' --compare ' + str(args.compare) if args.compare else ''}` on "
        f"{time.strftime('%Y-%m-%d')}: {args.requests} requests one at a time over one h2c "
        f"connection, a new text each (every screen calls the guard), the guard stand-in "
        f"(the Ollama test double) adding {screen_ms:.0f} ms to every screen; one worker. "
        "Latency is measured by the client; one screen = the added guard latency.",
        "",
        "| service | p50 ms | p90 ms | p50 in screens |",
        "|---|---:|---:|---:|",
    ]
    for label, result in rows:
        lines.append(
            f"| {label} | {result['p50_ms']:.1f} | {result['p90_ms']:.1f} | "
            f"{result['p50_ms'] / screen_ms:.2f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
