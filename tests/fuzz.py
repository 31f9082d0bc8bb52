"""Fuzz the whole OpenAPI document of the real service with schemathesis (``make test-fuzz``).

Starts the Ollama double and the service (``tests/helpers.running_server``: Hypercorn in a
subprocess, an open agent), runs ``schemathesis run`` on ``/openapi.json`` with every check
plus ours (``tests/fuzz_hooks.py``: no JSON-RPC ``-32603`` or ``INTERNAL`` error event in a
200) and the per-operation expectations of ``tests/schemathesis.toml``, bounded by examples
per operation and a time limit, and prints what it found. It fails when schemathesis failed
(any check, any schema error), when the service logged a 5xx or an unhandled error, or when
the time limit was reached.

    python -m tests.fuzz [--max-examples 30] [--time-limit 900] [--seed N] [--phases ...]
                         [--max-time S]  # keep fuzzing for S seconds (longer, deeper runs)

Needs the ``fuzz`` extra (``pip install -e '.[fuzz]'``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.helpers import REPO, ServerProcess, running_server
from tests.ollama_double import OllamaDouble

CONFIG = REPO / "tests" / "schemathesis.toml"
HOOKS = "tests.fuzz_hooks"


def schemathesis_command(
    url: str,
    report_dir: Path,
    *,
    max_examples: int,
    seed: int | None = None,
    phases: str | None = None,
    max_time: float | None = None,
) -> list[str]:
    binary = Path(sys.executable).with_name("schemathesis")
    command = [
        str(binary), "--no-color", "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
        "--checks", "all", "--max-examples", str(max_examples), "--workers", "1",
        "--report", "json", "--report-dir", str(report_dir), "--suppress-health-check", "all",
    ]  # fmt: skip
    if seed is not None:
        command += ["--seed", str(seed)]
    if phases:
        command += ["--phases", phases]
    if max_time:
        command += ["--max-time", str(int(max_time))]  # fuzzing and stateful repeat until spent
    return command


def server_errors(server: ServerProcess) -> collections.Counter[tuple[str, str, int]]:
    """5xx answers in the service's access log, by method, route and status."""
    found: collections.Counter[tuple[str, str, int]] = collections.Counter()
    for entry in server.logs():
        status = entry.get("status")
        if entry.get("logger") == "service.access" and isinstance(status, int) and status >= 500:
            found[(str(entry.get("method")), str(entry.get("route")), status)] += 1
    return found


def unhandled(server: ServerProcess) -> int:
    return sum(
        1
        for entry in server.logs()
        if entry.get("level") in ("ERROR", "CRITICAL") and "unhandled" in entry.get("message", "")
    )


def _first(operations: list[str], count: int = 4) -> str:
    return ", ".join(operations[:count]) + (", ..." if len(operations) > count else "")


def summary(report: dict[str, Any]) -> str:
    operations, cases = report.get("operations", {}), report.get("test_cases", {})
    lines = [
        f"operations: {operations.get('tested')} tested of {operations.get('total')}",
        f"test cases: {cases.get('generated')} generated, {cases.get('with_failures')} failed, "
        f"{cases.get('unique_failures')} unique failures",
    ]
    lines += [
        f"  {failure['code']} {failure['title']}: {failure['count']} "
        f"({_first(failure['operations'])})"
        for failure in report.get("failures", [])
    ]
    lines += [f"  error: {error}" for error in report.get("errors", [])]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report_dir = Path(args.report_dir or tempfile.mkdtemp(prefix="fuzz-"))
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with OllamaDouble() as double, running_server(ollama_host=double.url) as server:
        command = schemathesis_command(
            server.base_url, report_dir, max_examples=args.max_examples, seed=args.seed,
            phases=args.phases, max_time=args.max_time,
        )  # fmt: skip
        print("$", " ".join(command), flush=True)
        try:
            # In the report directory: Hypothesis keeps its files (.hypothesis/) in the cwd.
            done = subprocess.run(
                command, cwd=report_dir, env=env, timeout=args.time_limit, check=False
            )
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
        errors, crashes = server_errors(server), unhandled(server)
    reports = sorted(report_dir.glob("*.json"))
    print("\n=== fuzz summary ===")
    if reports:
        print(summary(json.loads(reports[-1].read_text())))
        print(f"report: {reports[-1]}")
    print(f"5xx answers in the service's log: {sum(errors.values())}")
    for (method, route, status), count in errors.most_common():
        print(f"  {count} x {status} {method} {route}")
    print(f"unhandled errors in the service's log: {crashes}")
    if code is None:
        print(f"FAILED: the run did not end within {args.time_limit:.0f} s")
        return 1
    if code != 0 or errors or crashes:
        print(f"FAILED (schemathesis exit status {code})")
        return 1
    print("passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=30, help="per operation and phase")
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds for the run")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--phases", default=None, help="examples,coverage,fuzzing,stateful")
    parser.add_argument(
        "--max-time", type=float, default=None,
        help="schemathesis' budget: fuzzing and stateful testing repeat until it is spent",
    )  # fmt: skip
    parser.add_argument("--report-dir", default=None)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
