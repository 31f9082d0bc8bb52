"""Drift monitor cost (``make bench-drift``): what the monitor adds to the CPU time of a
classify request.

    python -m benchmarks.drift_bench [--runs 7] [--requests 2000] [--concurrency 8]
                                     [--out benchmarks/results/drift.md]

(run from the checkout: the Ollama double and the server helper live under tests/)

In one run it starts three services under Hypercorn (one worker, h2c, the int8 CNN, every
guard screen a real call to the Ollama double, which runs in this process so its CPU is not
counted), one with DRIFT_ENABLED=true and default drift settings, two with it false (the
second is a control: its difference from the first is the measurement's noise), new
processes for each run. Each run sends ``--requests`` single-review classify requests over
HTTP/2 to all three at the same time (so whatever else runs on the machine disturbs them
alike) and reads each server process's CPU time (user + system, /proc) before and after.
The cost is the median over the runs of (CPU per request on - off) / off.

It also times the monitor's two parts directly, in this process: ``observe`` per text (on
the request path) and one check of a full window (off it, once per DRIFT_CHECK_EVERY texts),
and gives their sum per request against the classify request's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

from service.config import Settings
from service.drift.monitor import DriftMonitor
from service.drift.profile import MAX_TOKENS
from service.models.artifacts import CARD, PACKAGE_ARTIFACTS
from tests.helpers import ServerProcess, h2_client, start_server
from tests.ollama_double import OllamaDouble

REPO = Path(__file__).resolve().parents[1]
MODEL = "sentiment-cnn-int8"
FIXTURE = REPO / "tests" / "fixtures" / "imdb_test_sample.jsonl.gz"


def _texts() -> list[str]:
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _load(server: ServerProcess, texts: list[str], requests: int, concurrency: int) -> float:
    """Server CPU seconds per request over ``requests`` classify calls."""
    async with h2_client(server, timeout=60) as http:
        queue = iter(range(requests))

        async def worker() -> None:
            for index in queue:
                body = {"text": texts[index % len(texts)], "model": MODEL}
                response = await http.post("/v1/classify", json=body)
                if response.status_code != 200 or "results" not in response.json():
                    raise RuntimeError(f"classify failed: {response.status_code} {response.text}")

        before = _cpu_seconds(server.proc.pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (_cpu_seconds(server.proc.pid) - before) / requests


def _direct(texts: list[str]) -> dict[str, float]:
    """observe() per text and one full-window check, CPU seconds, in this process."""
    settings = Settings(_env_file=None)
    card = json.loads((PACKAGE_ARTIFACTS / MODEL / CARD).read_text())
    monitor = DriftMonitor.for_models(settings, {MODEL: card}, PACKAGE_ARTIFACTS)
    started = time.process_time()
    rounds = max(1, 3 * settings.drift_window // len(texts))
    for _ in range(rounds):
        for text in texts:
            monitor.observe(MODEL, [text], [0.5])
    observe = (time.process_time() - started) / (rounds * len(texts))
    checks = []
    for _ in range(5):
        monitor.observe(MODEL, texts[:1], [0.5])  # a changed window is checked again
        started = time.process_time()
        monitor.check()
        checks.append(time.process_time() - started)
    check = statistics.median(checks)
    return {
        "observe_s": observe,
        "check_s": check,
        "check_every": settings.drift_check_every,
        "window": settings.drift_window,
        "per_request_s": observe + check / settings.drift_check_every,
    }


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs; Linux {platform.release()}; Python "
        f"{platform.python_version()}; GLIBC_TUNABLES "
        f"{'set' if os.environ.get('GLIBC_TUNABLES') else 'unset'}"
    )


async def main_async(args: argparse.Namespace) -> str:
    texts = _texts()
    logging.getLogger("service.drift").setLevel(logging.ERROR)  # the direct run's verdicts
    direct = _direct(texts)
    samples: dict[str, list[float]] = {"on": [], "off": [], "control": []}
    with OllamaDouble() as double:
        env = {"ollama_host": double.url, "models": MODEL, "guard_cache_size": 0,
               "access_log": "false"}  # fmt: skip
        settings = {
            "on": {**env, "drift_enabled": "true", **dict(args.on_setting)},
            "off": {**env, "drift_enabled": "false"},
            "control": {**env, "drift_enabled": "false"},  # off again: the noise
        }
        for _ in range(args.runs):
            # New processes each run: a process's own layout (hash seed, addresses) moves
            # its CPU by about a percent, which the runs then average out.
            servers = {name: start_server(**values) for name, values in settings.items()}
            try:
                for server in servers.values():
                    server.wait_ready()
                    await _load(server, texts, 300, args.concurrency)  # warm up
                # All at once: whatever else runs on the machine disturbs them alike.
                cpus = await asyncio.gather(
                    *(_load(servers[n], texts, args.requests, args.concurrency) for n in samples)
                )
            finally:
                for server in servers.values():
                    server.stop()
            for name, cpu in zip(samples, cpus, strict=True):
                samples[name].append(cpu)
    on, off = statistics.median(samples["on"]), statistics.median(samples["off"])
    ratios = [a / b - 1 for a, b in zip(samples["on"], samples["off"], strict=True)]
    cost = statistics.median(ratios)
    controls = [a / b - 1 for a, b in zip(samples["control"], samples["off"], strict=True)]
    control = statistics.median(controls)
    direct_share = direct["per_request_s"] / off
    mean_chars = sum(map(len, texts)) / len(texts)
    lines = [
        "# Drift monitor cost",
        "",
        f"`make bench-drift` (`python -m benchmarks.drift_bench`), one run. Machine: {_machine()}.",
        "",
        f"Server: Hypercorn, 1 worker, h2c, `{MODEL}`, guard = the Ollama double (every screen "
        "a real call: GUARD_CACHE_SIZE=0), access log off. Load: "
        f"{args.requests} single-review classify requests per measurement over HTTP/2, "
        f"{args.concurrency} concurrent, reviews from tests/fixtures (mean {mean_chars:.0f} "
        f"characters). {args.runs} runs, each with three new server processes loaded at the same "
        "time; CPU = each "
        "server process's user + system time from /proc.",
        "",
        "| | CPU per classify request |",
        "|---|---|",
        f"| monitor off (DRIFT_ENABLED=false) | {off * 1e3:.3f} ms |",
        f"| monitor on (defaults: window {direct['window']}, check every "
        f"{direct['check_every']} texts) | {on * 1e3:.3f} ms |",
        f"| **cost, median of the per-run ratios** | **{cost:+.2%}** |",
        f"| control: a second server with the monitor off, against the first | {control:+.2%} |",
        "",
        "Per-run ratios (on/off - 1): " + ", ".join(f"{r:+.2%}" for r in ratios) + ".",
        "Control (off/off - 1): " + ", ".join(f"{r:+.2%}" for r in controls) + ".",
        "",
        "The monitor's parts timed directly (this process, CPU time):",
        "",
        "| part | CPU |",
        "|---|---|",
        f"| `observe`, per text (request path: tokenize, hash at most {MAX_TOKENS} tokens) | "
        f"{direct['observe_s'] * 1e6:.1f} us |",
        f"| one check of a full window of {direct['window']} texts (worker thread) | "
        f"{direct['check_s'] * 1e3:.2f} ms |",
        f"| per request: observe + check / {direct['check_every']} | "
        f"{direct['per_request_s'] * 1e6:.1f} us = **{direct_share:.2%}** of a request "
        "with the monitor off |",
        "",
        "The budget is 3%. The end-to-end figure moves with whatever else runs on the machine "
        "(the two cores are shared); the direct figure is the monitor's own work.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--on-setting",
        action="append",
        default=[],
        type=lambda item: tuple(item.split("=", 1)),
        help="NAME=VALUE for the monitored server only (e.g. drift_check_every=1000000)",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "drift.md"))
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    Path(args.out).write_text(report)
    print(report)


if __name__ == "__main__":
    main()
