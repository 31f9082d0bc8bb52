"""The Dockerfile and .dockerignore, checked without a Docker engine: parsed by BuildKit's own
parser (the `dockerfile` package), linted by hadolint, compared with the Makefile and
pyproject.toml, and the image's start and health-check commands run for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest

from tests.helpers import REPO, ServerProcess, curl, server_env
from tests.ollama_double import OllamaDouble
from tests.test_install import CPU_INDEX, assert_cpu_first_public_fallback, parse_torch_install

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SERVE = ["python", "-m", "service", "serve"]


@dataclass
class Stage:
    base: str
    name: str | None
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd.upper() == instruction]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for command in self.all("ENV"):
            pairs = command.value
            values.update(zip(pairs[::2], pairs[1::2], strict=True))
        return values


def stages() -> list[Stage]:
    """The build stages, with global ARG defaults substituted into each FROM."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        instruction = command.cmd.upper()
        if instruction == "ARG" and not found:
            name, _, default = command.value[0].partition("=")
            args[name] = default
        elif instruction == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], command.value[0])
            name = command.value[2] if len(command.value) == 3 else None
            found.append(Stage(base, name))
        else:
            assert found, f"{instruction} before the first FROM"
            found[-1].commands.append(command)
    return found


def makefile_value(name: str) -> str:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    match = re.search(rf"^export {name} := (.+)$", text, re.MULTILINE)
    assert match, f"the Makefile exports no {name}"
    return match.group(1).strip()


def test_image_builds_in_stages_from_slim_python_with_the_cpu_build_of_torch() -> None:
    build, runtime = stages()
    assert (build.name, runtime.name) == ("build", "runtime")
    for stage in (build, runtime):
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.base), stage.base
    # torch is pinned to the project's version and comes from the CPU-only index.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (pin,) = [dep for dep in pyproject["project"]["dependencies"] if dep.startswith("torch")]
    # The same step as `make install`: the CPU index when it answers, pip's configured index
    # (PyPI) as the fallback.
    assert pin == "torch==2.13.0"
    (install,) = [c for c in build.all("RUN") if "torch==" in c.value[0]]
    defaults = dict(c.value[0].partition("=")[::2] for c in build.all("ARG"))
    script = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m[1], m[0]), install.value[0])
    assert_cpu_first_public_fallback(parse_torch_install(script), pin=pin, index=CPU_INDEX)
    # The package (with its model artifacts) is installed in the build stage and only the
    # virtualenv reaches the runtime stage.
    copied = [c.value for c in build.all("COPY")]
    assert ("service", "./service") in copied and ("agents", "./agents") in copied
    assert any("pip install --no-cache-dir ." in c.value[0] for c in build.all("RUN"))
    assert any("model.safetensors" in c.value[0] for c in build.all("RUN")), "artifacts check"
    # ... of the installed package: isolated (-I), so /src (the working directory) is not on
    # the path.
    check = next(c.value[0] for c in build.all("RUN") if "model.safetensors" in c.value[0])
    assert "python -I -c" in check and "site-packages" in check
    (venv,) = runtime.all("COPY")
    assert venv.flags == ("--from=build",) and venv.value == ("/opt/venv", "/opt/venv")


def test_runtime_stage_serves_as_a_non_root_user_like_make_run() -> None:
    runtime = stages()[-1]
    (user,) = runtime.all("USER")
    uid, _, gid = user.value[0].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert any(f"--uid {uid}" in c.value[0] for c in runtime.all("RUN")), "user is created"
    # Nothing runs as root after the switch.
    names = [c.cmd.upper() for c in runtime.commands]
    assert "RUN" not in names[names.index("USER") :]

    env = runtime.env()
    assert env["HOST"] == "0.0.0.0" and env["PORT"] == "8080" and env["WORKERS"] == "1"
    assert env["GLIBC_TUNABLES"] == makefile_value("GLIBC_TUNABLES")
    assert runtime.all("EXPOSE")[0].value == ("8080",)

    (cmd,) = runtime.all("CMD")
    assert cmd.json and list(cmd.value) == SERVE and not runtime.all("ENTRYPOINT")
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^run: .*\n\t\$\(PY\) -m service serve$", makefile, re.MULTILINE)

    (check,) = runtime.all("HEALTHCHECK")
    assert check.json and check.value[:3] == ("CMD", "python", "-c")
    assert "/healthz" in check.value[3]
    flags = dict(flag.removeprefix("--").split("=", 1) for flag in check.flags)
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)


def test_hadolint_finds_nothing_to_fix() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    run = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0 and run.stdout == "", run.stdout + run.stderr
    # It does find problems when there are some (a root image with an unpinned install).
    bad = subprocess.run(
        [str(hadolint), "--no-color", "-"],
        input="FROM python:latest\nRUN pip install requests\nCMD python app.py\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0 and "DL3007" in bad.stdout


# --- .dockerignore, with Docker's own matching rules ------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A Go filepath.Match pattern, plus Docker's `**` (any number of directories)."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith(("^", "!")) else body) + "]"
            i = end
        elif char == "\\":
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negate, _glob_regex(pattern)))
    return rules


def excluded(path: str, rules: Sequence[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            result = not negate
    return result


def context_files() -> Iterator[tuple[str, int]]:
    """Every file of the working tree that `docker build .` would send, with its size."""
    rules = dockerignore_rules()
    for root, dirs, files in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not excluded(rel_root + d, rules)]
        for name in files:
            path = rel_root + name
            if not excluded(path, rules):
                yield path, (Path(root) / name).stat().st_size


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    rules = dockerignore_rules()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_api_routes.py",
        "benchmarks/results/http.md",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        "data/aclImdb_v1.tar.gz",
        "service/__pycache__/app.cpython-311.pyc",
        "service.egg-info/PKG-INFO",
        "tasks.db",
        ".env",
    ):
        assert excluded(path, rules), f"{path} would be sent to the builder"
    for path in ("pyproject.toml", "service/app.py", "agents/__init__.py"):
        assert not excluded(path, rules), f"{path} is needed by the build"

    sent = dict(context_files())
    # Everything the Dockerfile copies is there: the code and the shipped model artifacts.
    for package in ("service", "agents"):
        for source in (REPO / package).rglob("*.py"):
            if "__pycache__" not in source.parts:
                assert source.relative_to(REPO).as_posix() in sent
    artifacts = sorted(
        p.relative_to(REPO).as_posix() for p in (REPO / "service" / "artifacts").rglob("*.*")
    )
    assert artifacts and set(artifacts) <= set(sent)
    # Nothing else but the package's own top-level documents.
    allowed = {"pyproject.toml", "service", "agents", "README.md", "LICENSE"}
    assert {path.split("/")[0] for path in sent} <= allowed
    assert sum(sent.values()) < 64 * 1024 * 1024


# --- the image's commands, run for real ----------------------------------------------------------


@pytest.fixture
def image_server(ollama_double: OllamaDouble, tmp_path: Path) -> Iterator[ServerProcess]:
    """The image's CMD with the image's ENV, in an empty working directory like /app; only
    the bind address (loopback here) and the port (a free one) differ."""
    runtime = stages()[-1]
    env = server_env()
    env.update({k: v for k, v in runtime.env().items() if k != "PATH"})
    env.update(
        HOST="127.0.0.1",
        PORT="0",
        OLLAMA_HOST=ollama_double.url,
        MODELS="sentiment-cnn-int8",  # quick start-up
    )
    (cmd,) = runtime.all("CMD")
    argv = [sys.executable if arg == "python" else arg for arg in cmd.value]
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = ServerProcess(proc)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    (check,) = stages()[-1].all("HEALTHCHECK")
    argv = [sys.executable, *check.value[2:]]
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)


def test_image_command_serves_http2_and_passes_its_healthcheck(
    image_server: ServerProcess,
) -> None:
    answer = curl("-i", "--http2-prior-knowledge", f"{image_server.base_url}/healthz")
    assert answer.stdout.startswith("HTTP/2 200"), answer.stdout + answer.stderr
    ready = curl("-i", "--http2-prior-knowledge", f"{image_server.base_url}/readyz")
    assert ready.stdout.startswith("HTTP/2 200"), ready.stdout
    assert _healthcheck(image_server.port).returncode == 0
    assert image_server.stop() == 0  # SIGTERM, as `docker stop` sends it: a clean exit
    failed = _healthcheck(image_server.port)
    assert failed.returncode != 0 and "Connection refused" in failed.stderr
