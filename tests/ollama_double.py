"""An Ollama-protocol test double: a real HTTP/1.1 server on loopback.

It speaks the part of the Ollama API the service uses (POST /api/chat, POST /api/show, GET
/api/tags, GET /api/version, POST /api/pull streaming NDJSON) and is scripted per test:
verdict rules, latency, error statuses, malformed bodies, dropped connections and which
models are present. It records every request so tests can assert what was sent.

``/api/chat`` answers as the guard for the guard models, and *generates* for the chat models
(``CHAT_MODELS``): a reply chosen by ``set_replies`` rules, streamed token by token (one
word and its trailing space per NDJSON line) with ``set_token_delay`` between tokens,
honouring ``options.num_predict``; ``break_stream_after(n)`` drops the connection after n
tokens. Generation requests are recorded under the path ``/api/chat:generate`` (faults and
latency for it use that path too), so ``chat_requests`` stays the guard's calls.

It belongs to the tests; the product never imports it. Run it alone for demos and
benchmarks:  python -m tests.ollama_double --port 11434
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Judge = Callable[[list[dict[str, Any]]], str]
Rules = Sequence[tuple[str, str]] | Judge | None

DEFAULT_MODELS = ("llama-guard3:1b", "llama3.2:1b")
CHAT_MODELS = frozenset({"llama3.2:1b", "llama3.2:latest", "llama3.2:3b"})
GENERATE = "/api/chat:generate"  # how generation requests are recorded and scripted
MALFORMED_BODY = b'{"model": "llama-guard3:1b", "message": {"role": "assist'
# Keyword rules for standalone demos; tests script their own.
DEMO_RULES: list[tuple[str, str]] = [
    ("build a bomb", "unsafe\nS9"),
    ("make a bomb", "unsafe\nS9"),
    ("how to kill", "unsafe\nS1"),
    ("poison", "unsafe\nS1"),
    ("steal", "unsafe\nS2"),
    ("hack into", "unsafe\nS2"),
    ("suicide", "unsafe\nS11"),
]


# A guard verdict's tokens as Llama 3 splits them, near enough: "unsafe", "\n", "S", "1", ",".
_VERDICT_TOKEN = re.compile(r"[A-Za-z]+|\d+|\s|.")


def _predicted(answer: str, options: dict[str, Any]) -> tuple[str, str]:
    """The guard's answer as generated under ``options.num_predict``, and why it ended: cut
    to that many tokens ("length") as Ollama cuts it, or whole ("stop")."""
    limit = int(options.get("num_predict") or 0)
    tokens = _VERDICT_TOKEN.findall(answer)
    if limit > 0 and len(tokens) > limit:
        return "".join(tokens[:limit]), "length"
    return answer, "stop"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    body: Any  # the parsed JSON body, or None
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Fault:
    kind: str  # "status" | "malformed" | "drop" | "pull_error"
    status: int = 500
    body: bytes | str | None = None


def _canonical(name: str) -> str:
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


class OllamaDouble:
    """The scripted server. ``start()`` binds a free port (or the one given) on 127.0.0.1."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        models: Iterable[str] = DEFAULT_MODELS,
        rules: Rules = None,
        default: str = "safe",
    ) -> None:
        self._initial_models = tuple(models)
        self._initial_rules = rules
        self._initial_default = default
        self._lock = threading.Lock()
        self._server = _Server((host, port), _Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._server.request_queue_size = 128
        self._server.double = self
        self._thread: threading.Thread | None = None
        self.reset()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OllamaDouble:
        self._server.server_bind()
        self._server.server_activate()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OllamaDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- scripting ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the initial state: no requests, faults or latency; initial rules and models.
        Waits (at most 1 s) for requests still being answered, e.g. a screen the service
        started for a request that was refused meanwhile, so they are not counted later."""
        deadline = time.monotonic() + 1.0
        while getattr(self, "_in_flight", 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self._requests: list[RecordedRequest] = []
            self._faults: dict[str, deque[_Fault]] = {}
            self._latency: dict[str, float] = {}
            self._models: list[str] = list(self._initial_models)
            self._in_flight = 0
            self._max_in_flight = 0
            self._client_disconnects = 0
            self._token_delay = 0.0
            self._break_after: deque[int] = deque()
        self.set_rules(self._initial_rules, default=self._initial_default)
        self.set_replies(None)

    def set_rules(self, rules: Rules = None, *, default: str = "safe") -> None:
        """How /api/chat answers: a function of the messages, or (substring, answer) pairs
        matched case-insensitively against the last message's content (first match wins);
        ``default`` when nothing matches."""
        if callable(rules):
            judge: Judge = rules
        else:
            pairs = [(needle.lower(), answer) for needle, answer in rules or ()]

            def judge(messages: list[dict[str, Any]]) -> str:
                last = str(messages[-1].get("content", "")).lower() if messages else ""
                return next((answer for needle, answer in pairs if needle in last), default)

        with self._lock:
            self._judge = judge

    def set_replies(
        self, rules: Sequence[tuple[str, str]] | None, *, default: str | None = None
    ) -> None:
        """What the chat model answers: (substring, reply) pairs matched case-insensitively
        against the last user message (first match wins), else ``default``, else a reply
        that quotes the message."""
        pairs = [(needle.lower(), reply) for needle, reply in rules or ()]

        def reply(messages: list[dict[str, Any]]) -> str:
            last = str(messages[-1].get("content", "")) if messages else ""
            found = next((r for needle, r in pairs if needle in last.lower()), None)
            if found is not None:
                return found
            if default is not None:
                return default
            return (
                f"You asked about {last[:60].strip()}. Here is a short answer in a few "
                "sentences. It is generated by the test double, one word at a time. "
                "That is all."
            )

        with self._lock:
            self._reply = reply

    def set_token_delay(self, seconds: float) -> None:
        """Seconds between two streamed tokens of a generated reply."""
        with self._lock:
            self._token_delay = seconds

    def break_stream_after(self, tokens: int) -> None:
        """Drop the connection of the next generation after ``tokens`` tokens."""
        with self._lock:
            self._break_after.append(tokens)

    def set_latency(self, seconds: float, path: str = "/api/chat") -> None:
        """Answer every request on ``path`` no sooner than ``seconds`` after it arrived."""
        with self._lock:
            self._latency[path] = seconds

    def fail_next(
        self, n: int = 1, *, status: int = 500, path: str = "/api/chat", error: str | None = None
    ) -> None:
        """Answer the next ``n`` requests on ``path`` with an HTTP error (Ollama's JSON shape)."""
        self._add_faults(path, n, _Fault("status", status, error))

    def malform_next(
        self, n: int = 1, *, path: str = "/api/chat", body: bytes = MALFORMED_BODY
    ) -> None:
        """Answer the next ``n`` requests on ``path`` with 200 and a body that is not JSON."""
        self._add_faults(path, n, _Fault("malformed", 200, body))

    def drop_next(self, n: int = 1, *, path: str = "/api/chat") -> None:
        """Close the connection without any response on the next ``n`` requests on ``path``."""
        self._add_faults(path, n, _Fault("drop"))

    def fail_pull(self, error: str = "pull model manifest: file does not exist") -> None:
        """Make the next pull stream an error line, as Ollama does for an unknown model."""
        self._add_faults("/api/pull", 1, _Fault("pull_error", 200, error))

    def set_models(self, names: Iterable[str]) -> None:
        with self._lock:
            self._models = list(names)

    def _add_faults(self, path: str, n: int, fault: _Fault) -> None:
        with self._lock:
            self._faults.setdefault(path, deque()).extend([fault] * n)

    # --- what happened -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == path]

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The guard's calls (generation requests are under ``GENERATE``)."""
        return self.requests_to("/api/chat")

    @property
    def generation_requests(self) -> list[RecordedRequest]:
        return self.requests_to(GENERATE)

    @property
    def models(self) -> list[str]:
        with self._lock:
            return list(self._models)

    @property
    def max_in_flight(self) -> int:
        """The most requests the double was handling at the same moment."""
        with self._lock:
            return self._max_in_flight

    @property
    def client_disconnects(self) -> int:
        """How many connections the client closed or reset while the double still used them."""
        with self._lock:
            return self._client_disconnects

    # --- serving (called from handler threads) -------------------------------------------------

    def _client_gone(self) -> None:
        with self._lock:
            self._client_disconnects += 1

    def _has_model(self, name: str) -> bool:
        with self._lock:
            return any(_canonical(name) == _canonical(model) for model in self._models)

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        if len(raw) < length:  # the client went away mid-request: Ollama would not answer
            self._client_gone()
            handler.close_connection = True
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = urlsplit(handler.path).path
        if path == "/api/chat" and isinstance(body, dict) and str(body.get("model")) in CHAT_MODELS:
            path = GENERATE
        with self._lock:
            self._requests.append(RecordedRequest(handler.command, path, body))
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            queue = self._faults.get(path)
            fault = queue.popleft() if queue else None
            latency = self._latency.get(path, 0.0)
        try:
            if latency:
                # Counted from the request's arrival, as a guard's answer time is: reading
                # and parsing the request here must not add to it.
                time.sleep(max(0.0, latency - (time.perf_counter() - handler.arrived)))
            route = _ROUTES.get((handler.command, path))
            if fault is not None and fault.kind != "pull_error":
                response = _fault_response(fault)
            elif route is None:
                response = _Response(404, b"404 page not found", "text/plain")
            else:
                response = route(self, body if isinstance(body, dict) else {}, fault)
        finally:
            # Counted down before the answer leaves, so a client's next request can never
            # overlap this one in the count.
            with self._lock:
                self._in_flight -= 1
        response.send(handler)

    def _chat(self, body: dict[str, Any], _fault: _Fault | None) -> _Response:
        model = str(body.get("model", ""))
        if not self._has_model(model):
            return _Response.json(404, {"error": f"model '{model}' not found"})
        messages = body.get("messages") or []
        with self._lock:
            judge = self._judge
        started = time.perf_counter_ns()
        answer, reason = _predicted(judge(messages), body.get("options") or {})
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
        return _Response.json(
            200,
            {
                "model": model,
                "created_at": _now(),
                "message": {"role": "assistant", "content": answer},
                "done_reason": reason,
                "done": True,
                "total_duration": time.perf_counter_ns() - started,
                "load_duration": 0,
                "prompt_eval_count": max(1, prompt_chars // 4),
                "prompt_eval_duration": 1000,
                "eval_count": max(1, len(answer.split())),
                "eval_duration": 1000,
            },
        )

    def _generate(self, body: dict[str, Any], _fault: _Fault | None) -> _Response:
        model = str(body.get("model", ""))
        if not self._has_model(model):
            return _Response.json(404, {"error": f"model '{model}' not found"})
        messages = body.get("messages") or []
        options = body.get("options") or {}
        with self._lock:
            reply = self._reply(messages)
            delay = self._token_delay
            break_after = self._break_after.popleft() if self._break_after else None
        tokens = re.findall(r"\S+\s*", reply) or [reply]
        limit = int(options.get("num_predict") or 0)
        reason = "stop"
        if limit > 0 and len(tokens) > limit:
            tokens, reason = tokens[:limit], "length"
        prompt = max(1, sum(len(str(m.get("content", ""))) for m in messages) // 4)
        if body.get("stream") is False:
            return _Response.json(
                200,
                {
                    "model": model,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": "".join(tokens)},
                    "done": True,
                    "done_reason": reason,
                    "prompt_eval_count": prompt,
                    "eval_count": len(tokens),
                },
            )

        def lines() -> Iterator[bytes | None]:
            for index, token in enumerate(tokens):
                if break_after is not None and index >= break_after:
                    yield None  # drop the connection mid-stream
                    return
                if delay:
                    time.sleep(delay)
                part = {
                    "model": model,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": token},
                    "done": False,
                }
                yield json.dumps(part).encode() + b"\n"
            final = {
                "model": model,
                "created_at": _now(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
                "prompt_eval_count": prompt,
                "eval_count": len(tokens),
            }
            yield json.dumps(final).encode() + b"\n"

        return _Response(200, lines(), "application/x-ndjson")

    def _show(self, body: dict[str, Any], _fault: _Fault | None) -> _Response:
        model = str(body.get("model") or body.get("name") or "")
        if not self._has_model(model):
            return _Response.json(404, {"error": f"model '{model}' not found"})
        return _Response.json(
            200,
            {
                "modelfile": f"FROM {model}\n",
                "parameters": "stop <|eot_id|>",
                "template": "{{ .Prompt }}",
                "details": _details(model),
                "model_info": {"general.architecture": "llama"},
                "capabilities": ["completion"],
                "modified_at": _now(),
            },
        )

    def _tags(self, _body: dict[str, Any], _fault: _Fault | None) -> _Response:
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": _now(),
                "size": 1_000_000,
                "digest": _digest(name),
                "details": _details(name),
            }
            for name in self.models
        ]
        return _Response.json(200, {"models": models})

    def _version(self, _body: dict[str, Any], _fault: _Fault | None) -> _Response:
        return _Response.json(200, {"version": "0.6.0-double"})

    def _pull(self, body: dict[str, Any], fault: _Fault | None) -> _Response:
        model = str(body.get("model") or body.get("name") or "")
        if fault is not None:  # a pull error arrives as a line of the stream
            lines = [{"status": "pulling manifest"}, {"error": str(fault.body)}]
        else:
            total = 1_000_000
            digest = "sha256:" + _digest(model)
            lines = [{"status": "pulling manifest"}]
            status = f"pulling {digest[7:19]}"
            lines += [
                {"status": status, "digest": digest, "total": total, "completed": done}
                for done in (0, 250_000, 500_000, 750_000, total)
            ]
            lines += [
                {"status": "verifying sha256 digest"},
                {"status": "writing manifest"},
                {"status": "success"},
            ]
            with self._lock:
                if not any(_canonical(model) == _canonical(m) for m in self._models):
                    self._models.append(model)
        if body.get("stream") is False:
            return _Response.json(200, lines[-1])
        chunks = [json.dumps(line).encode() + b"\n" for line in lines]
        return _Response(200, chunks, "application/x-ndjson")


_ROUTES: dict[tuple[str, str], Callable[[OllamaDouble, dict[str, Any], _Fault | None], Any]] = {
    ("POST", "/api/chat"): OllamaDouble._chat,
    ("POST", GENERATE): OllamaDouble._generate,
    ("POST", "/api/show"): OllamaDouble._show,
    ("GET", "/api/tags"): OllamaDouble._tags,
    ("GET", "/api/version"): OllamaDouble._version,
    ("POST", "/api/pull"): OllamaDouble._pull,
}


@dataclass
class _Response:
    status: int
    # A list or iterator is sent chunked, one chunk per item, each as soon as it is made; an
    # item None drops the connection there.
    body: bytes | list[bytes] | Iterator[bytes | None] | None
    content_type: str = "application/json; charset=utf-8"

    @classmethod
    def json(cls, status: int, payload: Any) -> _Response:
        return cls(status, json.dumps(payload).encode())

    def send(self, handler: _Handler) -> None:
        if self.body is None:  # drop: close without a response
            handler.close_connection = True
            return
        handler.send_response(self.status)
        handler.send_header("Content-Type", self.content_type)
        if not isinstance(self.body, bytes):
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for chunk in self.body:
                if chunk is None:
                    handler.close_connection = True
                    handler.wfile.flush()
                    handler.connection.shutdown(socket.SHUT_RDWR)
                    return
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                handler.wfile.flush()
            handler.wfile.write(b"0\r\n\r\n")
        else:
            handler.send_header("Content-Length", str(len(self.body)))
            handler.end_headers()
            handler.wfile.write(self.body)
        handler.wfile.flush()


def _fault_response(fault: _Fault) -> _Response:
    if fault.kind == "drop":
        return _Response(0, None)
    if fault.kind == "malformed":
        body = fault.body if isinstance(fault.body, bytes) else str(fault.body).encode()
        return _Response(200, body)
    message = fault.body or f"the double was told to answer {fault.status}"
    return _Response.json(fault.status, {"error": message})


def _details(model: str) -> dict[str, Any]:
    size = model.rsplit(":", 1)[-1].upper() if ":" in model else "1B"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": size,
        "quantization_level": "Q8_0",
    }


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# A client that gives up mid-answer (a timed-out or canceled guard call) closes or resets its
# connection; the double's next write or read then fails with one of these.
CLIENT_GONE = (BrokenPipeError, ConnectionResetError)


class _Server(ThreadingHTTPServer):
    double: OllamaDouble

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Counted quietly; every other error keeps socketserver's traceback on stderr.
        if isinstance(sys.exc_info()[1], CLIENT_GONE):
            self.double._client_gone()
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    server_version = "OllamaDouble"
    timeout = 30  # an idle keep-alive connection's thread ends after this
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls

    arrived = 0.0  # perf_counter when the request line was read

    def parse_request(self) -> bool:
        self.arrived = time.perf_counter()
        return super().parse_request()

    def do_GET(self) -> None:
        self.server.double._handle(self)  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self.server.double._handle(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Ollama test double on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated models present"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each chat")
    parser.add_argument(
        "--all-safe", action="store_true", help="answer 'safe' to everything (no demo rules)"
    )
    args = parser.parse_args(argv)
    double = OllamaDouble(
        args.host,
        args.port,
        models=[name.strip() for name in args.models.split(",") if name.strip()],
        rules=None if args.all_safe else DEMO_RULES,
    )
    if args.latency:
        double.set_latency(args.latency)
    double.start()
    models = ", ".join(double.models) or "none"
    print(f"Ollama double listening on {double.url} (models: {models})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        double.stop()


if __name__ == "__main__":
    main()
