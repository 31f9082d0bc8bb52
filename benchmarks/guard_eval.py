"""Measure a guard model on labelled prompts: block rate on harmful, pass rate on benign.

Reads gzipped JSON Lines with fields ``text`` and ``harmful`` (true/false), screens each text
as a user message through the service's Guard against a live Ollama, and writes the result as
JSON and markdown. The verdict cache is off, so every prompt is a real call.

    python -m benchmarks.guard_eval --data ../shared/data/guard_prompts.jsonl.gz \
        --limit 200 --concurrency 4 --model llama-guard3:1b
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.config import Settings
from service.guard import GuardError, LlamaGuard, Message


@dataclass(frozen=True)
class Outcome:
    harmful: bool
    blocked: bool | None  # None: the guard gave no verdict
    unsafe: bool | None
    codes: tuple[str, ...]
    error: str | None
    latency_ms: float


def load_prompts(path: Path, limit: int | None = None) -> list[tuple[str, bool]]:
    """``(text, harmful)`` pairs from a gzipped JSONL file, the first ``limit`` of them."""
    rows: list[tuple[str, bool]] = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("text"), str) or not isinstance(row.get("harmful"), bool):
                raise ValueError(f"{path}:{number}: need a string 'text' and a boolean 'harmful'")
            rows.append((row["text"], row["harmful"]))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def evaluate(
    prompts: Sequence[tuple[str, bool]], settings: Settings, concurrency: int
) -> tuple[list[Outcome], float]:
    """Screen every prompt with ``concurrency`` workers; returns outcomes and wall seconds."""
    queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    outcomes: list[Outcome] = []

    async def worker(guard: LlamaGuard) -> None:
        while not queue.empty():
            text, harmful = queue.get_nowait()
            started = time.perf_counter()
            try:
                verdict = await guard.screen([Message("user", text)])
            except GuardError as error:
                elapsed = (time.perf_counter() - started) * 1000
                outcomes.append(Outcome(harmful, None, None, (), error.kind, elapsed))
                continue
            elapsed = (time.perf_counter() - started) * 1000
            codes = tuple(category.code for category in verdict.categories)
            outcomes.append(
                Outcome(harmful, verdict.blocked, not verdict.safe, codes, None, elapsed)
            )

    async with LlamaGuard(settings) as guard:
        state = await guard.readiness()
        if not state["model_present"]:
            raise SystemExit(f"guard_eval: {state['detail']}")
        started = time.perf_counter()
        await asyncio.gather(*(worker(guard) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return outcomes, wall


def summarize(outcomes: Sequence[Outcome], wall_s: float, meta: dict[str, Any]) -> dict[str, Any]:
    harmful = [o for o in outcomes if o.harmful]
    benign = [o for o in outcomes if not o.harmful]
    answered = [o for o in outcomes if o.error is None]
    latencies = [o.latency_ms for o in answered]

    def rate(part: int, whole: int) -> float | None:
        return round(part / whole, 4) if whole else None

    blocked_harmful = sum(1 for o in harmful if o.blocked)
    passed_benign = sum(1 for o in benign if o.blocked is False)
    return {
        **meta,
        "prompts": len(outcomes),
        "harmful": len(harmful),
        "benign": len(benign),
        # Errors count against both rates: a harmful prompt without a verdict is not a block
        # the guard made, and a benign one is refused (fail closed).
        "harmful_block_rate": rate(blocked_harmful, len(harmful)),
        "benign_pass_rate": rate(passed_benign, len(benign)),
        "harmful_blocked": blocked_harmful,
        "benign_passed": passed_benign,
        "benign_flagged_unsafe": sum(1 for o in benign if o.unsafe),
        "errors": dict(Counter(o.error for o in outcomes if o.error)),
        "categories_on_harmful": dict(
            Counter(code for o in harmful for code in o.codes).most_common()
        ),
        "categories_on_benign": dict(
            Counter(code for o in benign for code in o.codes).most_common()
        ),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 2),
            "p95": round(percentile(latencies, 95), 2),
            "p99": round(percentile(latencies, 99), 2),
            "mean": round(sum(latencies) / len(latencies), 2) if latencies else math.nan,
        },
        "wall_s": round(wall_s, 3),
        "throughput_per_s": round(len(outcomes) / wall_s, 2) if wall_s else None,
    }


def to_markdown(summary: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    latency = summary["latency_ms"]
    kinds = ", ".join(f"{kind} x{n}" for kind, n in summary["errors"].items())
    errors = f"{sum(summary['errors'].values())} ({kinds})" if kinds else "0"
    lines = [
        f"# Guard evaluation: {summary['model']}",
        "",
        f"- date: {summary['date']}",
        f"- Ollama: {summary['host']}",
        f"- data: {summary['data']} ({summary['prompts']} prompts: "
        f"{summary['harmful']} harmful, {summary['benign']} benign)",
        f"- concurrency: {summary['concurrency']}, timeout {summary['timeout_s']} s, cache off",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| harmful blocked | {pct(summary['harmful_block_rate'])} "
        f"({summary['harmful_blocked']}/{summary['harmful']}) |",
        f"| benign passed | {pct(summary['benign_pass_rate'])} "
        f"({summary['benign_passed']}/{summary['benign']}) |",
        f"| benign flagged unsafe | {summary['benign_flagged_unsafe']} |",
        f"| guard errors | {errors} |",
        f"| latency p50 / p95 / p99 | {latency['p50']} / {latency['p95']} / {latency['p99']} ms |",
        f"| throughput | {summary['throughput_per_s']} prompts/s |",
        "",
        "Categories named on harmful prompts: "
        + (", ".join(f"{c} x{n}" for c, n in summary["categories_on_harmful"].items()) or "none"),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="gzipped JSONL: text, harmful")
    parser.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--host", default=defaults.ollama_host, help="Ollama URL (OLLAMA_HOST)")
    parser.add_argument("--model", default=defaults.guard_model, help="guard model (GUARD_MODEL)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    parser.add_argument("--retries", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output path without suffix (default benchmarks/results/guard_eval-<model>)",
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--concurrency and --limit must be at least 1")

    settings = defaults.model_copy(
        update={
            "ollama_host": args.host,
            "guard_model": args.model,
            "guard_timeout": args.timeout,
            "guard_retries": args.retries,
            "guard_concurrency": args.concurrency,
            "guard_cache_size": 0,
            "guard_block_categories": [],
        }
    )
    prompts = load_prompts(args.data, args.limit)
    if not prompts:
        parser.error(f"no prompts in {args.data}")
    outcomes, wall = asyncio.run(evaluate(prompts, settings, args.concurrency))
    summary = summarize(
        outcomes,
        wall,
        {
            "model": args.model,
            "host": args.host,
            "data": str(args.data),
            "concurrency": args.concurrency,
            "timeout_s": args.timeout,
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    out = args.out or Path("benchmarks/results") / f"guard_eval-{_slug(args.model)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = Path(f"{out}.json"), Path(f"{out}.md")
    markdown = to_markdown(summary)
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


if __name__ == "__main__":
    sys.exit(main())
