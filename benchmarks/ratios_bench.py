"""The service's overhead goals as ratios (``make bench-ratios``, part of ``make bench``).

    python -m benchmarks.ratios_bench [--runs 3] [--duration 5] [--rows floor,batch,...]
                                      [--out benchmarks/results/ratios.md]

Every row is the ratio of two things measured back to back in the same round, on the same
machine, so that other work on the machine weighs on both sides alike; ``--runs`` rounds
(default 3), and the report gives each round's ratio and their median against the goal. The
order of the two sides alternates from round to round (A then B, B then A, ...), so a load
that drifts during a round does not always favour the same side.

What it starts, all on 127.0.0.1 and under the service's Hypercorn configuration (h2c, one
process unless said otherwise), once for the whole run:

- the Ollama test double answering "safe" at once (``tests/ollama_double.py``);
- the service (``python -m service.server``, ``WORKERS=1``, access log off, ``TORCH_THREADS``
  as ``--torch-threads``), and the same with ``WORKERS=2`` for the workers row;
- the floor app of ``http_bench`` (a bare FastAPI ``POST /echo`` of the JSON body);
- a2a-sdk's hello-world agent (``benchmarks/a2a_hello_agent.py``), answering a fixed text
  message, and the same agent answering with a completed task (``--task``, informational).

Rows (``--rows`` picks some; the ids are the first word):

1. ``floor``: /v1/classify int8, guard cache hit (the same body every request), against the
   floor's ``POST /echo`` of the same body; ``--connections`` x ``--streams`` (4 x 16) with
   h2load; req/s. Goal >= 0.6.
2. ``batch``: /v1/classify with 32 different texts per request (cache hit), texts/s, with
   ``--batch-connections`` x ``--batch-streams`` (1 x 4: 128 texts in flight, enough to
   keep the model busy without a queue of seconds), against the int8 model's own batch-32
   throughput in this process with the server's thread count: the registry's ``predict``
   of the same 32 texts (tokenization and forward, what the service's model step runs;
   loaded as ``models_bench`` loads it, timed with its ``time_call``). Goal >= 0.8. The
   report also gives the ratio to the forward alone on token ids (``models_bench``'s
   ``time_model``, tokenization excluded), which HTTP cannot reach by construction.
3. ``a2a``: JSON-RPC 1.0 ``SendMessage`` on /a2a/jsonrpc with one text (a guarded
   classification, cache hit) against the hello-world agent's ``SendMessage``; same load,
   same body; req/s. Goal >= 1.0. ``a2a-task``: the same against the hello-world agent that
   answers with a task (no goal).
4. ``guard``: ``guard_latency_bench``'s latency row: the median of ``--guard-requests``
   requests sent one at a time, a new text each, the double adding ``--guard-latency``
   (30 ms) to every screen, in screens. Goal <= 1.2.
5. ``workers``: /v1/classify int8 (cache hit) over 8 connections x 8 streams, ``WORKERS=2``
   against ``WORKERS=1``; req/s. Goal >= 1.6.
6. ``chat``: ``chat_bench``'s measurement (``GuardedPipeline.chat`` against the same
   generation read unscreened, the double generating ``--chat-tokens`` tokens at
   ``--chat-token-ms`` and screening in ``--chat-guard-ms``), chunk ``--chat-chunk``:
   ``chat-first`` the first released piece, guarded / unscreened (no goal: the hold-back
   waits one chunk by design), ``chat-budget`` the first piece against its budget (the
   guarded stream's first token + one chunk + one screen; goal <= 1.0), ``chat-total``
   the whole reply, guarded / unscreened (goal <= 1.2).

Every h2load run against the service is checked on the service's /metrics: the classify
calls that succeeded grew by at least h2load's 200 answers, no guard screen failed, and no
pipeline call failed beyond the requests h2load left in flight when it stopped (counted as
abandoned by their client); h2load cannot read bodies, and JSON-RPC errors come in a 200.
Each endpoint's answer is also checked once before the load. A failed check is listed in
the report, and the command then exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from benchmarks import chat_bench, guard_latency_bench, models_bench
from benchmarks.http_bench import (
    GLIBC_TUNABLES,
    REVIEW,
    RUNNING_ON,
    Result,
    _classify_ok,
    _env,
    _load,
    _machine,
    _process,
    h2load,
    start_double,
    start_floor,
    start_service,
)
from service.config import Settings
from service.models.registry import LoadedModel, ModelRegistry

REPO = Path(__file__).resolve().parents[1]
MODEL = "sentiment-cnn-int8"
BATCH = 32
A2A_HEADERS = ("a2a-version: 1.0",)
DEFAULT_TORCH_THREADS: int = Settings.model_fields["torch_threads"].default
DEFAULT_CHUNK: int = Settings.model_fields["chat_chunk_tokens"].default


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    numerator: str
    denominator: str
    goal: tuple[str, float] | None  # (">=" or "<=", value)

    def met(self, value: float) -> bool | None:
        if self.goal is None:
            return None
        op, bound = self.goal
        return value >= bound if op == ">=" else value <= bound

    @property
    def goal_text(self) -> str:
        return f"{self.goal[0]} {self.goal[1]:g}" if self.goal else "none"


ROWS = [
    Row("floor", "/v1/classify int8 vs bare FastAPI echo", "classify req/s", "floor req/s",
        (">=", 0.6)),
    Row("batch", "32 texts per request vs the model in-process", "HTTP texts/s",
        "in-process batch-32 texts/s", (">=", 0.8)),
    Row("a2a", "A2A SendMessage vs a2a-sdk hello-world (message)", "service req/s",
        "hello-world req/s", (">=", 1.0)),
    Row("a2a-task", "A2A SendMessage vs a2a-sdk hello-world (task)", "service req/s",
        "hello-world (task) req/s", None),
    Row("guard", "one text, new each request, 30 ms per screen: median latency",
        "p50 ms", "one screen ms", ("<=", 1.2)),
    Row("workers", "WORKERS=2 vs WORKERS=1, 8 connections x 8 streams", "2 workers req/s",
        "1 worker req/s", (">=", 1.6)),
    Row("chat-first", "streamed chat: first released piece, guarded vs unscreened",
        "guarded ms", "unscreened ms", None),
    Row("chat-budget", "streamed chat: first released piece vs its budget", "guarded ms",
        "budget ms", ("<=", 1.0)),
    Row("chat-total", "streamed chat: whole reply, guarded vs unscreened", "guarded s",
        "unscreened s", ("<=", 1.2)),
]  # fmt: skip
ROW_BY_KEY = {row.key: row for row in ROWS}
GROUPS = {  # --rows names -> the rows they produce
    "floor": ["floor"],
    "batch": ["batch"],
    "a2a": ["a2a", "a2a-task"],
    "guard": ["guard"],
    "workers": ["workers"],
    "chat": ["chat-first", "chat-budget", "chat-total"],
}


# --- checks --------------------------------------------------------------------------------


def _metrics(base: str) -> dict[str, float]:
    """Classify calls that succeeded, pipeline calls that did not, failed guard screens, and
    requests whose client went away, from the service's /metrics (summed over labels and,
    with several workers, processes)."""
    with httpx.Client(http1=False, http2=True, base_url=base, timeout=30) as client:
        text = client.get("/metrics").text
    counts = dict.fromkeys(("classify_ok", "pipeline_not_ok", "guard_errors", "abandoned"), 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if line.startswith("pipeline_requests_total{"):
            if 'outcome="ok"' not in name:
                counts["pipeline_not_ok"] += float(value)
            elif 'operation="classify"' in name:
                counts["classify_ok"] += float(value)
        elif line.startswith("guard_errors_total{"):
            counts["guard_errors"] += float(value)
        elif line.startswith("http_requests_abandoned_total "):
            counts["abandoned"] += float(value)
    return counts


class Checks:
    """What went wrong during the run: answers that failed a check, and h2load's other
    statuses. Not wrong: the requests still in flight when h2load stops (status 0), which
    the service counts as abandoned by their client and as failed pipeline calls."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def measured(self, label: str, service: str | None, run: Callable[[], Result]) -> Result:
        """``run`` (an h2load run), checked against the service's counters when ``service``
        is the service."""
        before = _metrics(service) if service else {}
        result = run()
        wrong = {status: n for status, n in result.other.items() if status != "0"}
        if wrong or not result.ok:
            self.problems.append(f"{label}: {result.ok} answers 200 of {result.requests}, {wrong}")
        if service:
            after = _metrics(service)
            delta = {key: after[key] - before[key] for key in after}
            if (
                delta["classify_ok"] < result.ok
                or delta["pipeline_not_ok"] > delta["abandoned"]
                or delta["guard_errors"]
            ):
                self.problems.append(
                    f"{label}: {result.ok} answers 200, but the service counted {delta}"
                )
        return result


def _post(base: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    with httpx.Client(http1=False, http2=True, base_url=base, timeout=60) as client:
        answer = client.post(path, json=body, headers=headers)
    if answer.status_code != 200:
        raise RuntimeError(f"{base}{path}: {answer.status_code} {answer.text[:500]}")
    return answer.json()


def _check_service(base: str, bodies: dict[str, dict[str, Any]]) -> None:
    """Each body's answer once (this also fills the verdict cache)."""
    single = _post(base, "/v1/classify", bodies["single"], {})
    if not _classify_ok(200, json.dumps(single).encode(), None):
        raise RuntimeError(f"classify: {single}")
    batch = _post(base, "/v1/classify", bodies["batch"], {})
    if len(batch["results"]) != BATCH or not all(
        r["screens"]["input"]["safe"] and r["screens"]["output"]["safe"] for r in batch["results"]
    ):
        raise RuntimeError(f"classify of {BATCH}: {str(batch)[:500]}")
    a2a = _post(base, "/a2a/jsonrpc", bodies["a2a"], {"a2a-version": "1.0"})
    task = a2a.get("result", {}).get("task", {})
    data = task.get("artifacts", [{}])[0].get("parts", [{}])[0].get("data", {})
    if task.get("status", {}).get("state") != "TASK_STATE_COMPLETED" or not data.get("results"):
        raise RuntimeError(f"A2A SendMessage: {str(a2a)[:500]}")


def _check_hello(base: str, body: dict[str, Any], task: bool) -> None:
    answer = _post(base, "/a2a/jsonrpc", body, {"a2a-version": "1.0"})
    result = answer.get("result", {})
    ok = (
        result.get("task", {}).get("status", {}).get("state") == "TASK_STATE_COMPLETED"
        if task
        else bool(result.get("message", {}).get("parts"))
    )
    if not ok:
        raise RuntimeError(f"hello-world agent: {str(answer)[:500]}")


# --- the bodies ----------------------------------------------------------------------------


def bodies() -> dict[str, dict[str, Any]]:
    texts = [f"Review {i}: {REVIEW}" for i in range(BATCH)]
    message = {"role": "ROLE_USER", "messageId": "ratios-1", "parts": [{"text": REVIEW}]}
    return {
        "single": {"text": REVIEW},  # the default model, int8
        "batch": {"texts": texts, "model": MODEL},
        "a2a": {"jsonrpc": "2.0", "id": "1", "method": "SendMessage",
                "params": {"message": message}},
    }  # fmt: skip


# --- one round -----------------------------------------------------------------------------


@dataclass
class Servers:
    floor: str
    service: str
    service2: str | None  # WORKERS=2
    hello: str
    hello_task: str
    guard_double: str | None  # the double with the screen latency


class Round:
    def __init__(
        self, index: int, args: argparse.Namespace, servers: Servers, checks: Checks
    ) -> None:
        self.index = index
        self.args = args
        self.servers = servers
        self.checks = checks
        self.bodies = {key: json.dumps(body).encode() for key, body in bodies().items()}
        self.values: dict[str, dict[str, Any]] = {}

    def pair(self, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
        """Both, in this order in even rounds and the other way round in odd ones."""
        if self.index % 2:
            b = second()
            return first(), b
        a = first()
        return a, second()

    def load(
        self,
        label: str,
        url: str,
        body: bytes,
        service: str | None,
        *,
        clients: int | None = None,
        streams: int | None = None,
        headers: tuple[str, ...] = (),
    ) -> Result:
        args = self.args
        return self.checks.measured(
            f"round {self.index + 1}, {label}",
            service,
            lambda: h2load(
                label,
                url,
                streams or args.streams,
                args.duration,
                body,
                clients=clients or args.connections,
                headers=headers,
            ),
        )

    def record(self, key: str, a: float, b: float, **detail: Any) -> None:
        self.values[key] = {"numerator": a, "denominator": b, "ratio": a / b, **detail}
        print(
            f"round {self.index + 1} {key:<12} {a:10.2f} / {b:10.2f} = {a / b:.3f}",
            file=sys.stderr,
            flush=True,
        )

    def floor(self) -> None:
        s = self.servers
        classify, floor = self.pair(
            lambda: self.load("classify int8", f"{s.service}/v1/classify", self.bodies["single"],
                              s.service),
            lambda: self.load("floor POST /echo", f"{s.floor}/echo", self.bodies["single"], None),
        )  # fmt: skip
        self.record("floor", classify.rps, floor.rps, **_detail(classify=classify, floor=floor))

    def batch(self) -> None:
        s = self.servers
        http, inproc = self.pair(
            lambda: self.load(f"classify {BATCH} texts", f"{s.service}/v1/classify",
                              self.bodies["batch"], s.service,
                              clients=self.args.batch_connections,
                              streams=self.args.batch_streams),
            lambda: in_process(self.args.model_repeats),
        )  # fmt: skip
        texts = http.rps * BATCH
        self.record(
            "batch", texts, inproc["predict_per_s"],
            http_req_per_s=http.rps, forward_per_s=inproc["forward_per_s"],
            vs_forward=texts / inproc["forward_per_s"],
            **_detail(http=http),
        )  # fmt: skip

    def a2a(self) -> None:
        s = self.servers
        url = "/a2a/jsonrpc"
        body = self.bodies["a2a"]

        def hello_world(key: str, base: str) -> Callable[[], Result]:
            return lambda: self.load(
                f"hello-world ({key})", base + url, body, None, headers=A2A_HEADERS
            )

        for key, base in (("a2a", s.hello), ("a2a-task", s.hello_task)):
            service, floor = self.pair(
                lambda: self.load(
                    "A2A SendMessage", s.service + url, body, s.service, headers=A2A_HEADERS
                ),
                hello_world(key, base),
            )
            self.record(key, service.rps, floor.rps, **_detail(service=service, hello=floor))

    def guard(self) -> None:
        assert self.servers.guard_double
        args = self.args
        result = guard_latency_bench.run(
            REPO, self.servers.guard_double, args.guard_requests, [], args.duration
        )
        self.record(
            "guard", result["p50_ms"], args.guard_latency * 1e3, p90_ms=result["p90_ms"],
            requests=args.guard_requests,
        )  # fmt: skip

    def workers(self) -> None:
        s = self.servers
        assert s.service2
        service2 = s.service2

        def run(base: str, workers: int) -> Result:
            return self.load(f"{workers} worker(s), 8 x 8", f"{base}/v1/classify",
                             self.bodies["single"], base, clients=8, streams=8)  # fmt: skip

        two, one = self.pair(lambda: run(service2, 2), lambda: run(s.service, 1))
        self.record("workers", two.rps, one.rps, **_detail(two=two, one=one))

    def chat(self) -> None:
        args = self.args
        namespace = argparse.Namespace(
            runs=args.chat_replies, tokens=args.chat_tokens, token_ms=args.chat_token_ms,
            guard_ms=args.chat_guard_ms, chunks=[args.chat_chunk],
        )  # fmt: skip
        [row] = asyncio.run(chat_bench.measure(namespace))
        calls = {"guard_calls": row["calls"], "guard_calls_goal": row["calls_goal"]}
        self.record("chat-first", row["first_guarded"] * 1e3, row["first_plain"] * 1e3, **calls)
        self.record("chat-budget", row["first_guarded"] * 1e3, row["first_budget"] * 1e3)
        self.record("chat-total", row["total_guarded"], row["total_plain"])


def _detail(**results: Result) -> dict[str, Any]:
    return {
        name: {"requests": r.requests, "ok": r.ok, "rps": r.rps, "p50_ms": r.percentile(0.5),
               "other": r.other}
        for name, r in results.items()
    }  # fmt: skip


@functools.cache
def _registry() -> ModelRegistry:
    return ModelRegistry.load(names=[MODEL])


def in_process(repeats: int) -> dict[str, float]:
    """The int8 model's batch-32 throughput in this process (at the thread count set in
    ``run``): the registry's predict of the request's 32 texts (tokenize + forward, what the
    service's model step runs), and the forward alone on token ids (models_bench's figure)."""
    registry = _registry()
    model = registry.get(MODEL)
    assert isinstance(model, LoadedModel)
    texts = bodies()["batch"]["texts"]
    predict = models_bench.time_call(lambda: registry.predict(MODEL, texts), BATCH, repeats)
    forward = models_bench.time_model(model, BATCH, repeats)
    return {"predict_per_s": predict["per_s"], "forward_per_s": forward["per_s"]}


# --- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> tuple[list[dict[str, dict[str, Any]]], list[str]]:
    import torch

    torch.set_num_threads(args.torch_threads)
    groups = [g for g in args.rows.split(",") if g]
    if unknown := set(groups) - set(GROUPS):
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {sorted(GROUPS)}")
    checks = Checks()
    rounds: list[dict[str, dict[str, Any]]] = []
    threads = str(args.torch_threads)
    needs_http = bool({"floor", "batch", "a2a", "workers"} & set(groups))
    with contextlib.ExitStack() as stack:

        def start(manager: contextlib.AbstractContextManager[str]) -> str:
            return stack.enter_context(manager)

        def hello(*extra: str) -> str:
            command = [sys.executable, "-m", "benchmarks.a2a_hello_agent", *extra]
            return "http://127.0.0.1:" + start(_process(command, _env(), RUNNING_ON))

        servers = Servers("", "", None, "", "", None)
        if needs_http:
            double = start(start_double())
            servers.service = "http://127.0.0.1:" + start(
                start_service(double, TORCH_THREADS=threads)
            )
            _check_service(servers.service, bodies())
        if "floor" in groups:
            servers.floor = "http://127.0.0.1:" + start(start_floor())
        if "a2a" in groups:
            servers.hello, servers.hello_task = hello(), hello("--task")
            _check_hello(servers.hello, bodies()["a2a"], task=False)
            _check_hello(servers.hello_task, bodies()["a2a"], task=True)
        if "workers" in groups:
            servers.service2 = "http://127.0.0.1:" + start(
                start_service(double, workers=2, TORCH_THREADS=threads)
            )
            _check_service(servers.service2, bodies())
        if "guard" in groups:
            servers.guard_double = start(start_double(args.guard_latency))
        for index in range(args.runs):
            started = time.monotonic()
            one = Round(index, args, servers, checks)
            for group in groups:
                getattr(one, group)()
            rounds.append(one.values)
            print(
                f"round {index + 1} took {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return rounds, checks.problems


# --- report --------------------------------------------------------------------------------


def _versions() -> str:
    names = ["torch", "a2a-sdk", "h2", "httpx", "ollama", "starlette"]
    found = []
    for name in names:
        with contextlib.suppress(Exception):
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for row in ROWS:
        values = [r[row.key] for r in rounds if row.key in r]
        if not values:
            continue
        median = statistics.median(v["ratio"] for v in values)
        summary[row.key] = {
            "title": row.title,
            "ratios": [v["ratio"] for v in values],
            "median": median,
            "numerator_median": statistics.median(v["numerator"] for v in values),
            "denominator_median": statistics.median(v["denominator"] for v in values),
            "goal": row.goal_text,
            "met": row.met(median),
        }
    return summary


def render(
    args: argparse.Namespace,
    command: str,
    summary: dict[str, dict[str, Any]],
    rounds: list[dict[str, dict[str, Any]]],
    problems: list[str],
    load: tuple[str, str],
    seconds: float,
) -> str:
    runs = len(rounds)
    lines = [
        "# Overhead goals as ratios",
        "",
        f"Machine: {_machine()}; {_versions()}; commit {guard_latency_bench._commit(REPO)}.",
        "",
        f"Command: `{command}` on {time.strftime('%Y-%m-%d')}; {runs} round(s), "
        f"{seconds / 60:.1f} min in all. Load average (1/5/15 min) before: {load[0]}; after: "
        f"{load[1]}.",
        "",
        "Each ratio divides two figures measured back to back in the same round (the order "
        "alternating between rounds); the median is over the rounds. h2c with prior "
        f"knowledge, h2load with {args.connections} connections x {args.streams} streams "
        f"(rows floor, a2a; batch: {args.batch_connections} x {args.batch_streams}; "
        f"workers: 8 x 8), {args.duration:g} s per measurement after 1 s of "
        "warm-up; the guard stand-in (the Ollama test double) answers `safe` at once and "
        f"verdicts are cached unless said otherwise; one worker unless said otherwise; "
        f"TORCH_THREADS={args.torch_threads} in the service and for the in-process model. "
        "The load generator, the servers and the stand-in share the machine's cores. "
        "`python -m benchmarks.ratios_bench --help` and the module's docstring describe "
        "each row.",
        "",
        "| row | numerator / denominator | "
        + " | ".join(f"round {i + 1}" for i in range(runs))
        + " | median | goal | met |",
        "|---|---|" + "---:|" * runs + "---:|---|---|",
    ]
    for key, s in summary.items():
        row = ROW_BY_KEY[key]
        met = {True: "yes", False: "**no**", None: "-"}[s["met"]]
        cells = " | ".join(f"{ratio:.3f}" for ratio in s["ratios"])
        lines.append(
            f"| {key}: {row.title} | {row.numerator} / {row.denominator} | {cells} | "
            f"**{s['median']:.3f}** | {s['goal']} | {met} |"
        )
    lines += [
        "",
        "The two sides' medians (absolute figures: they depend on the machine and on what "
        "else ran on it; the ratios are the result):",
        "",
        "| row | numerator (median) | denominator (median) |",
        "|---|---:|---:|",
    ]
    for key, s in summary.items():
        row = ROW_BY_KEY[key]
        lines.append(
            f"| {key} | {s['numerator_median']:,.1f} {row.numerator} | "
            f"{s['denominator_median']:,.1f} {row.denominator} |"
        )
    extra = [r["batch"] for r in rounds if "batch" in r]
    if extra:
        lines += [
            "",
            "batch: against the in-process forward alone on token ids (tokenization "
            "excluded, models_bench's figure: "
            + ", ".join(f"{v['forward_per_s']:,.0f}" for v in extra)
            + " texts/s) instead of the registry's predict, the ratio is "
            + ", ".join(f"{v['vs_forward']:.3f}" for v in extra)
            + f" (median {statistics.median(v['vs_forward'] for v in extra):.3f}).",
        ]
    lines += ["", "Checks: " + ("; ".join(problems) if problems else "every answer passed."), ""]
    return "\n".join(lines)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every option's default."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="rounds")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per h2load run")
    parser.add_argument("--connections", type=int, default=4, help="h2load connections")
    parser.add_argument("--streams", type=int, default=16, help="h2load streams each")
    parser.add_argument("--batch-connections", type=int, default=1, help="batch row")
    parser.add_argument("--batch-streams", type=int, default=4, help="batch row")
    parser.add_argument("--rows", default=",".join(GROUPS), help="rows to measure")
    parser.add_argument(
        "--torch-threads", type=int, default=DEFAULT_TORCH_THREADS,
        help="TORCH_THREADS of the services and the in-process model",
    )  # fmt: skip
    parser.add_argument("--model-repeats", type=int, default=300, help="in-process forwards")
    parser.add_argument("--guard-requests", type=int, default=100, help="guard row")
    parser.add_argument("--guard-latency", type=float, default=0.03, help="seconds per screen")
    parser.add_argument("--chat-replies", type=int, default=3, help="replies per side")
    parser.add_argument("--chat-tokens", type=int, default=120, help="tokens per reply")
    parser.add_argument("--chat-token-ms", type=float, default=20.0, help="between tokens")
    parser.add_argument("--chat-guard-ms", type=float, default=30.0, help="per chat screen")
    parser.add_argument("--chat-chunk", type=int, default=DEFAULT_CHUNK, help="tokens")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "ratios.md",
        help="the report; the JSON goes beside it (.json)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks.ratios_bench", *(argv or sys.argv[1:])])
    load_before = _load()
    started = time.monotonic()
    rounds, problems = run(args)
    seconds = time.monotonic() - started
    load = (load_before, _load())
    summary = summarize(rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args, command, summary, rounds, problems, load, seconds))
    raw = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": _machine(),
        "versions": _versions(),
        "commit": guard_latency_bench._commit(REPO),
        "load_before": load[0],
        "load_after": load[1],
        "seconds": seconds,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "summary": summary,
        "rounds": rounds,
        "problems": problems,
    }
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    print(args.out.read_text())
    return 1 if problems else 0


if __name__ == "__main__":
    if os.environ.get("GLIBC_TUNABLES") != GLIBC_TUNABLES:
        # The in-process model runs here: the same malloc tunables as the servers get
        # (make exports them; a plain `python -m` does not), set before the process starts.
        os.execve(
            sys.executable,
            [sys.executable, "-m", "benchmarks.ratios_bench", *sys.argv[1:]],
            _env(),
        )
    sys.exit(main())
