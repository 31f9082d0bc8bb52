"""`make install` (and the Dockerfile) install torch's CPU build: from PyTorch's CPU wheel
index when it answers, with pip's configured index (PyPI, PIP_INDEX_URL, pip.conf) as the
fallback, and quickly from that index alone when the CPU index does not answer.

The recipe is read from `make -n` (what make would run) and its torch step is run for real,
with pip in dry-run mode against two local stand-ins: a "CPU index" serving
torch-2.13.0+cpu and a "public index" serving torch-2.13.0."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def torch_pin() -> str:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (pin,) = [dep for dep in pyproject["project"]["dependencies"] if dep.startswith("torch")]
    return str(pin)


@dataclass
class TorchInstall:
    """The torch step of an install script: probe the CPU index, then one of two pip runs."""

    probe_url: str  # fetched with a timeout to learn whether the CPU index answers
    with_cpu_index: list[str]  # pip's arguments when it does
    fallback: list[str]  # ... and when it does not


def _commands(script: str) -> list[list[str]]:
    lexer = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token == ";":
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def _pip_arguments(command: list[str]) -> list[str] | None:
    """The arguments after `pip install` (`python -m pip install` or `pip install`)."""
    words = command[1:] if command[0] in ("then", "else") else command
    if words[:1] and words[0].endswith("pip") and words[1:2] == ["install"]:
        return words[2:]
    if words[1:4] == ["-m", "pip", "install"]:
        return words[4:]
    return None


def parse_torch_install(script: str) -> TorchInstall:
    """The torch step of a shell script (a make recipe line, a Dockerfile RUN):
    ``if <probe>; then <pip install>; else ...; <pip install>; fi``."""
    commands = _commands(script)
    keywords = [command[0] for command in commands]
    assert keywords.count("if") == keywords.count("then") == keywords.count("else") == 1
    probe = commands[keywords.index("if")]
    code = probe[probe.index("-c") + 1]
    assert "urlopen" in code and "timeout=" in code, "the probe must not wait for long"
    url = next(word for word in probe if word.startswith(("http://", "https://")))
    then, orelse = keywords.index("then"), keywords.index("else")
    installs = [(i, _pip_arguments(c)) for i, c in enumerate(commands)]
    with_cpu = [args for i, args in installs if args is not None and then <= i < orelse]
    fallback = [args for i, args in installs if args is not None and i >= orelse]
    assert len(with_cpu) == len(fallback) == 1, commands
    return TorchInstall(url, with_cpu[0], fallback[0])


def make_dry_run(*variables: str) -> str:
    """What `make install` would run, whether or not .venv is up to date."""
    done = subprocess.run(
        ["make", "-n", "-B", "install", *variables],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def torch_step(recipe: str) -> str:
    """The recipe's torch step: from its `if` to its `fi`, continuation lines included."""
    lines = recipe.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("if ") and "torch" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith("fi"))
    return "\n".join(lines[start : end + 1])


def index_of(arguments: list[str], option: str) -> str | None:
    return arguments[arguments.index(option) + 1] if option in arguments else None


def assert_cpu_first_public_fallback(step: TorchInstall, *, pin: str, index: str) -> None:
    assert step.probe_url.rstrip("/") == index + "/torch"
    # The CPU index is added beside the configured one, never instead of it: pip keeps its
    # configured index (PyPI, PIP_INDEX_URL, pip.conf) and prefers 2.13.0+cpu by version.
    assert index_of(step.with_cpu_index, "--extra-index-url") == index
    assert "--index-url" not in step.with_cpu_index and "-i" not in step.with_cpu_index
    assert pin in step.with_cpu_index
    # The fallback asks the configured index alone, for the same pin.
    assert pin in step.fallback
    assert not {"--index-url", "-i", "--extra-index-url"} & set(step.fallback)


# --- what make would run ------------------------------------------------------------------------


def test_make_install_takes_torch_from_the_cpu_index_with_the_public_index_as_fallback() -> None:
    recipe = make_dry_run()
    pin = torch_pin()
    assert pin == "torch==2.13.0"
    step = parse_torch_install(torch_step(recipe))
    assert_cpu_first_public_fallback(step, pin=pin, index=CPU_INDEX)
    # torch is installed before the package, so the package's own torch pin is then met by
    # the CPU build instead of pulling the default one.
    lines = recipe.splitlines()
    torch_line = next(
        i for i, line in enumerate(lines) if line.startswith("if ") and "torch" in line
    )
    package_line = next(i for i, line in enumerate(lines) if "-e '.[" in line)
    assert torch_line < package_line
    # TORCH_INDEX is a make variable: a mirror of the CPU index can stand in for it.
    mirror = "https://mirror.example/whl/cpu"
    other = parse_torch_install(torch_step(make_dry_run(f"TORCH_INDEX={mirror}")))
    assert_cpu_first_public_fallback(other, pin=pin, index=mirror)


# --- the torch step, run against stand-in indexes ------------------------------------------------


def _wheel(folder: Path, version: str) -> None:
    """A minimal torch wheel of ``version`` (pip only reads its metadata in dry-run mode)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(folder / f"torch-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n"
        )
        wheel.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture
def indexes(tmp_path: Path) -> Iterator[str]:
    """An HTTP server with a simple index under /cpu (torch 2.13.0+cpu) and /public (2.13.0)."""
    _wheel(tmp_path / "cpu" / "torch", "2.13.0+cpu")
    _wheel(tmp_path / "public" / "torch", "2.13.0")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_torch_step(tmp_path: Path, index: str, public: str) -> tuple[dict, float]:
    """Run make install's torch step with this interpreter's pip in dry-run mode (nothing is
    installed), the configured index being ``public``; pip's resolution report and seconds."""
    step = torch_step(make_dry_run(f"PY={sys.executable}", f"TORCH_INDEX={index}"))
    report = tmp_path / "report.json"
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env |= {
        "PIP_CONFIG_FILE": os.devnull,  # none of this machine's pip configuration
        "PIP_INDEX_URL": f"{public}/public",  # the "configured index"
        "PIP_DRY_RUN": "1",
        "PIP_NO_DEPS": "1",
        "PIP_IGNORE_INSTALLED": "1",  # resolve as in a fresh venv, whatever this one holds
        "PIP_REPORT": str(report),
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        # pip's defaults, stated: the fallback must not depend on them.
        "PIP_RETRIES": "5",
        "PIP_TIMEOUT": "15",
    }
    started = time.monotonic()
    done = subprocess.run(
        ["sh", "-c", step], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    return json.loads(report.read_text(encoding="utf-8")), elapsed


def chosen(report: dict) -> tuple[str, str]:
    (item,) = report["install"]
    return item["metadata"]["version"], item["download_info"]["url"]


def test_the_cpu_build_is_taken_when_the_cpu_index_answers(tmp_path: Path, indexes: str) -> None:
    report, _ = run_torch_step(tmp_path, f"{indexes}/cpu", indexes)
    version, url = chosen(report)
    assert version == "2.13.0+cpu" and url.startswith(f"{indexes}/cpu/"), (version, url)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that takes connections and never answers (a black-holed index)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # the kernel completes the handshakes; nothing ever reads
        yield sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_the_configured_index_is_the_quick_fallback(
    tmp_path: Path, indexes: str, closed_port: int, silent_port: int, kind: str
) -> None:
    port = closed_port if kind == "refused" else silent_port
    report, elapsed = run_torch_step(tmp_path, f"http://127.0.0.1:{port}/cpu", indexes)
    version, url = chosen(report)
    assert version == "2.13.0" and url.startswith(f"{indexes}/public/"), (version, url)
    # Given an index that does not answer, pip waits PIP_TIMEOUT (15 s here) per attempt and
    # tries 6 times, for every package; the probe gives up after 5 s instead.
    assert elapsed < 30, elapsed
