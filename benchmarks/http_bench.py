"""HTTP/2 load benchmark of the running service (``make bench-http``).

    python benchmarks/http_bench.py [--duration 8] [--concurrency 1,16,64] [--models a,b]
                                    [--out benchmarks/results/http.md]

What it starts, all on 127.0.0.1:
- the Ollama test double (``python -m tests.ollama_double --all-safe``), answering "safe" with
  no added latency, so the guard costs only its HTTP round trips;
- the service (``python -m service.server``, one worker, access log off) with the glibc
  malloc tunables the Makefile's run command sets;
- the floor: a bare FastAPI app (``GET /healthz``, ``POST /echo``) under the same Hypercorn
  configuration, started from this file (``--floor-server``).

What it measures, each over h2c with one TCP connection carrying 1, 16 or 64 concurrent
streams:
- ``h2load`` (nghttp2-client) for the floor, /healthz and /v1/classify with a guard *cache
  hit*: the same body on every request, so after the first request both screens' verdicts
  come from the guard's verdict cache (the model still runs every time). Latency
  percentiles come from h2load's per-request log (``--log-file``).
- a small asyncio HTTP/2 client (``h2`` library, below) for /v1/classify with a guard *cache
  miss*: h2load sends a single body file, so unique texts need a client that builds each
  body. Every request carries a new text, so both screens call the double. This client
  checks every answer's body (label and both verdicts), not just the status. It also runs
  the /healthz case so its own ceiling can be compared with h2load's on the same endpoint.

The load generators share the machine's cores with the service and the double; the
numbers are what one box does end to end, not the service alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout: import the service from it
    sys.path.insert(0, str(REPO))
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=1073741824"
REVIEW = (
    "A beautifully shot, patient film with a wonderful central performance; the plot "
    "drags in the second hour, but the ending more than makes up for it."
)


# --- processes -----------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    env.update(extra)
    return env


@contextlib.contextmanager
def _process(
    args: list[str],
    env: dict[str, str],
    ready: re.Pattern[str],
    count: int = 1,
    cwd: Path = REPO,
) -> Iterator[str]:
    """Start a process (in ``cwd``) and wait for ``count`` lines (stdout or stderr) matching
    ``ready``; yield the match's first group; SIGTERM it at the end."""
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        seen = 0
        tail: list[str] = []
        for line in proc.stdout:
            tail = [*tail[-19:], line]
            match = ready.search(line)
            seen += bool(match)
            if match and seen >= count:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args} did not start")
        else:
            raise RuntimeError(f"{args} exited with {proc.wait()}:\n{''.join(tail)}")
        # Keep draining output so the process never blocks on a full pipe.
        drain = _Drain(proc)
        drain.start()
        yield match.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


class _Drain:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self._thread = threading.Thread(target=self._run, args=(proc,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    @staticmethod
    def _run(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            pass


RUNNING_ON = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")


def start_double(latency: float = 0.0) -> contextlib.AbstractContextManager[str]:
    """The Ollama test double answering "safe", after ``latency`` seconds per guard call."""
    latency_args = ["--latency", str(latency)] if latency else []
    return _process(
        [sys.executable, "-m", "tests.ollama_double", "--port", "0", "--all-safe", *latency_args],
        _env(),
        re.compile(r"listening on (http://127\.0\.0\.1:\d+)"),
    )


def start_service(
    ollama_url: str, workers: int = 1, **settings: str
) -> contextlib.AbstractContextManager[str]:
    env = _env(
        OLLAMA_HOST=ollama_url,
        PORT="0",
        HOST="127.0.0.1",
        WORKERS=str(workers),
        ACCESS_LOG="false",
        LOG_LEVEL="INFO",
        GUARD_RETRIES="0",
        GUARD_CONCURRENCY="64",
        **settings,
    )
    # Every worker logs "Running on" once it listens.
    return _process([sys.executable, "-m", "service.server"], env, RUNNING_ON, count=workers)


def start_floor() -> contextlib.AbstractContextManager[str]:
    return _process([sys.executable, __file__, "--floor-server"], _env(), RUNNING_ON)


def serve_floor() -> None:
    """The floor: a bare FastAPI app under the service's Hypercorn configuration."""
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse(await request.json())

    serve_asgi(app)


def serve_asgi(app: Any) -> None:
    """Serve ``app`` on a free 127.0.0.1 port under the service's Hypercorn configuration
    (default settings, the service's HTTP/2 patch) until SIGTERM; Hypercorn logs the port
    ("Running on ...", see ``RUNNING_ON``). benchmarks/a2a_hello_agent.py serves with it too."""
    from service.config import Settings
    from service.logging import configure_logging
    from service.server import bind_socket, build_config

    settings = Settings(_env_file=None, port=0)
    configure_logging("INFO")
    sock = bind_socket("127.0.0.1", 0)
    config = build_config(settings, fd=sock.detach())

    async def main() -> None:
        from hypercorn.asyncio import serve

        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await serve(app, config, shutdown_trigger=stop.wait, mode="asgi")

    asyncio.run(main())


# --- measurement ---------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    tool: str
    streams: int
    requests: int
    ok: int
    seconds: float
    latencies_ms: list[float]
    other: dict[str, int] = field(default_factory=dict)  # status -> count, for status != 200

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def h2load(
    scenario: str,
    url: str,
    streams: int,
    duration: float,
    body: bytes | None = None,
    clients: int = 1,
    headers: Sequence[str] = (),
) -> Result:
    """One h2load run: ``clients`` connections with ``streams`` concurrent streams each,
    prior-knowledge h2c; ``headers`` are extra request headers ("name: value")."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "requests.tsv"
        args = ["h2load", "-c", str(clients), "-m", str(streams),
                "-D", f"{int(duration * 1000)}ms",
                "--warm-up-time", "1", "--log-file", str(log)]  # fmt: skip
        if body is not None:
            data = Path(tmp) / "body.json"
            data.write_bytes(body)
            args += ["-d", str(data), "-H", "content-type: application/json"]
        for header in headers:
            args += ["-H", header]
        run = subprocess.run([*args, url], capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"h2load failed: {run.stdout[-2000:]} {run.stderr[-2000:]}")
        out = run.stdout
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    finished = re.search(r"finished in ([\d.]+)s", out)
    seconds = float(finished.group(1)) if finished else duration
    latencies = [int(row[2]) / 1000.0 for row in rows]
    ok = sum(1 for row in rows if row[1] == "200")
    other: dict[str, int] = {}
    for row in rows:
        if row[1] != "200":
            other[row[1]] = other.get(row[1], 0) + 1
    return Result(scenario, "h2load", streams * clients, len(rows), ok, seconds, latencies, other)


async def _h2_client(
    host: str,
    port: int,
    path: str,
    method: str,
    bodies: Iterator[bytes] | None,
    streams: int,
    duration: float,
    check: Any,
) -> tuple[int, int, float, list[float]]:
    """A minimal HTTP/2 client: one connection, ``streams`` concurrent requests for
    ``duration`` seconds; returns (requests, answers that pass ``check``, seconds, latencies)."""
    import h2.config
    import h2.connection
    import h2.events

    reader, writer = await asyncio.open_connection(host, port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.increment_flow_control_window(2**24)
    writer.write(conn.data_to_send())
    pending: dict[int, tuple[asyncio.Future[tuple[int, bytes]], list[bytes], list[int]]] = {}

    async def read() -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                    pending[event.stream_id][2].append(status)
                elif isinstance(event, h2.events.DataReceived):
                    pending[event.stream_id][1].append(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    future, chunks, status = pending.pop(event.stream_id)
                    future.set_result((status[0] if status else 0, b"".join(chunks)))
                elif isinstance(event, h2.events.StreamReset):
                    future, _, _ = pending.pop(event.stream_id)
                    future.set_result((0, b""))
            writer.write(conn.data_to_send())

    reader_task = asyncio.create_task(read())
    headers = [(":method", method), (":path", path), (":scheme", "http"),
               (":authority", f"{host}:{port}"), ("content-type", "application/json")]  # fmt: skip
    latencies: list[float] = []
    counts = {"sent": 0, "ok": 0}
    loop = asyncio.get_running_loop()
    measuring_from = time.perf_counter() + 1.0  # one second of warm-up, as with h2load
    stop_at = measuring_from + duration

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            body = next(bodies) if bodies is not None else None
            stream_id = conn.get_next_available_stream_id()
            future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
            pending[stream_id] = (future, [], [])
            started = time.perf_counter()
            conn.send_headers(stream_id, headers, end_stream=body is None)
            if body is not None:
                conn.send_data(stream_id, body, end_stream=True)
            writer.write(conn.data_to_send())
            status, payload = await future
            if started >= measuring_from:
                latencies.append((time.perf_counter() - started) * 1000.0)
                counts["sent"] += 1
                counts["ok"] += bool(check(status, payload, body))

    await asyncio.gather(*(worker() for _ in range(streams)))
    reader_task.cancel()
    writer.close()
    return counts["sent"], counts["ok"], duration, latencies


def _classify_ok(status: int, payload: bytes, body: bytes | None) -> bool:
    if status != 200:
        return False
    answer = json.loads(payload)
    [result] = answer["results"]
    return (
        result["label"] in result["probabilities"]  # the model's own labels (an adapter's too)
        and result["screens"]["input"]["safe"] is True
        and result["screens"]["output"]["safe"] is True
    )


def unique_bodies(model: str) -> Iterator[bytes]:
    n = 0
    while True:
        n += 1
        yield json.dumps({"text": f"Review {n}: {REVIEW}", "model": model}).encode()


def h2client(scenario: str, url: str, streams: int, duration: float, model: str | None) -> Result:
    match = re.match(r"http://([\d.]+):(\d+)(/.*)", url)
    assert match
    host, port, path = match.group(1), int(match.group(2)), match.group(3)
    if model is None:
        sent, ok, seconds, latencies = asyncio.run(
            _h2_client(
                host,
                port,
                path,
                "GET",
                None,
                streams,
                duration,
                lambda status, _p, _b: status == 200,
            )  # fmt: skip
        )
    else:
        sent, ok, seconds, latencies = asyncio.run(
            _h2_client(
                host, port, path, "POST", unique_bodies(model), streams, duration, _classify_ok
            )  # fmt: skip
        )
    return Result(scenario, "h2 client", streams, sent, ok, seconds, latencies)


# --- report --------------------------------------------------------------------------------


def _load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    h2load_version = subprocess.run(["h2load", "--version"], capture_output=True, text=True)
    import fastapi
    import hypercorn

    hypercorn_version = getattr(hypercorn, "__version__", None)
    if hypercorn_version is None:
        from importlib.metadata import version

        hypercorn_version = version("hypercorn")
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs{memory}; Linux {platform.release()}; "
        f"Python {platform.python_version()}; Hypercorn {hypercorn_version}; "
        f"FastAPI {fastapi.__version__}; {h2load_version.stdout.strip()}; "
        f"GLIBC_TUNABLES={GLIBC_TUNABLES}"
    )


def write_report(results: list[Result], out: Path, duration: float, load: tuple[str, str]) -> None:
    lines = [
        "# HTTP/2 load benchmark",
        "",
        f"Machine: {_machine()}.",
        "",
        f"Load average (1/5/15 min) before the run: {load[0]}; after: {load[1]}. Other work "
        "on the machine while the benchmark ran makes every number here lower than on an "
        "idle machine.",
        "",
        f"Produced by `python benchmarks/http_bench.py` on {time.strftime('%Y-%m-%d')}. "
        f"One worker process; h2c with prior knowledge; one TCP connection carrying the "
        f"given number of concurrent streams; {duration:g} s per run after 1 s of warm-up. "
        "The guard is the Ollama test double answering `safe` with no added latency. "
        "The service runs with ACCESS_LOG=false. The load generator, the service and the "
        "double share the machine's cores.",
        "",
        "- *floor*: a bare FastAPI endpoint under the same Hypercorn configuration.",
        "- *cache hit*: the same text every time; both screens' verdicts come from the "
        "guard's verdict cache, the model runs for every request.",
        "- *cache miss*: a new text every request; both screens call the guard. Sent by the "
        "asyncio `h2` client in this script, which checks every answer (label and both "
        "verdicts); h2load can only repeat one body.",
        "- *ok* counts answers with status 200 (h2load) or answers that passed the body check "
        "(h2 client); *other* lists any other status values h2load logged (0: a request "
        "still in flight when the run ended).",
        "- *N worker(s), 8 connections*: 8 connections with 8 streams each (64 in flight), "
        "served by one process or by two SO_REUSEPORT workers (`WORKERS=2`).",
        "",
        "| scenario | tool | streams | requests | ok | req/s | p50 ms | p99 ms | other |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        other = ", ".join(f"{n}x {status}" for status, n in sorted(r.other.items()))
        lines.append(
            f"| {r.scenario} | {r.tool} | {r.streams} | {r.requests} | {r.ok} | "
            f"{r.rps:,.0f} | {r.percentile(0.5):.2f} | {r.percentile(0.99):.2f} | {other} |"
        )
    lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    raw = [
        {"scenario": r.scenario, "tool": r.tool, "streams": r.streams, "requests": r.requests,
         "ok": r.ok, "other": r.other, "rps": r.rps, "p50_ms": r.percentile(0.5),
         "p99_ms": r.percentile(0.99),
         "mean_ms": statistics.fmean(r.latencies_ms) if r.latencies_ms else None}
        for r in results
    ]  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--concurrency", default="1,16,64", help="streams per connection")
    parser.add_argument("--models", default="", help="models to drive (default: all loaded)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "http.md")
    parser.add_argument(
        "--no-workers-compare",
        dest="workers_compare",
        action="store_false",
        help="skip the 1-vs-2 worker runs over 8 connections",
    )
    parser.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_server:
        serve_floor()
        return 0
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    levels = [int(n) for n in args.concurrency.split(",")]
    load_before = _load()
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        print(
            f"{result.scenario:<40} {result.tool:<9} streams={result.streams:<3} "
            f"{result.rps:8.0f} req/s  p50 {result.percentile(0.5):7.2f} ms  "
            f"p99 {result.percentile(0.99):7.2f} ms  ok {result.ok}/{result.requests}",
            flush=True,
        )

    with start_floor() as floor_port:
        for streams in levels:
            record(h2load("floor GET /healthz", f"http://127.0.0.1:{floor_port}/healthz",
                          streams, args.duration))  # fmt: skip
        echo = json.dumps({"text": REVIEW}).encode()
        for streams in levels:
            record(h2load("floor POST /echo", f"http://127.0.0.1:{floor_port}/echo",
                          streams, args.duration, echo))  # fmt: skip

    with start_double() as ollama_url, start_service(ollama_url) as port:
        base = f"http://127.0.0.1:{port}"
        import httpx

        with httpx.Client(http1=False, http2=True, base_url=base, timeout=60) as client:
            listing = client.get("/v1/models").json()
            models = [m for m in args.models.split(",") if m] or [
                m["name"] for m in listing["models"]
            ]
            default_model = listing["default"]
            for model in models:  # check the answer once, and warm the verdict cache
                answer = client.post("/v1/classify", json={"text": REVIEW, "model": model})
                assert _classify_ok(answer.status_code, answer.content, None), answer.text
        for streams in levels:
            record(h2load("GET /healthz", f"{base}/healthz", streams, args.duration))
        for streams in levels:
            record(h2client("GET /healthz", f"{base}/healthz", streams, args.duration, None))
        for model in models:
            body = json.dumps({"text": REVIEW, "model": model}).encode()
            for streams in levels:
                record(h2load(f"classify {model}, cache hit", f"{base}/v1/classify", streams,
                              args.duration, body))  # fmt: skip
            for streams in levels:
                record(h2client(f"classify {model}, cache miss", f"{base}/v1/classify",
                                streams, args.duration, model))  # fmt: skip

    if args.workers_compare:
        # Several connections, one vs two worker processes (SO_REUSEPORT, see service.server).
        for workers in (1, 2):
            with start_double() as ollama_url, start_service(ollama_url, workers) as port:
                base = f"http://127.0.0.1:{port}"
                body = json.dumps({"text": REVIEW}).encode()  # the default model
                name = f"{workers} worker(s), 8 connections:"
                record(h2load(f"{name} GET /healthz", f"{base}/healthz", 8, args.duration,
                              clients=8))  # fmt: skip
                record(h2load(f"{name} classify {default_model}, cache hit",
                              f"{base}/v1/classify", 8, args.duration, body,
                              clients=8))  # fmt: skip

    write_report(results, args.out, args.duration, (load_before, _load()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
