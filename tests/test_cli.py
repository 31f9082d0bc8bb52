"""The installed ``gis`` command: its subcommands, ``gis config`` printing every setting in
effect with secrets masked, and ``gis ask`` (the A2A client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service.config import Settings

GIS = Path(sys.executable).with_name("gis")  # installed by pip install -e . ([project.scripts])


def gis(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(
        [str(GIS), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, **(env or {})},
        cwd="/",  # no .env file of the checkout
    )


def test_help_lists_every_command() -> None:
    done = gis("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: gis ")
    for command in ("serve", "train", "quantize", "evaluate", "guard-check", "config", "ask"):
        assert command in done.stdout


def test_config_prints_every_setting_with_secrets_masked() -> None:
    env = {
        "API_TOKENS": "alice:s3cret-token,bare-t0ken",
        "TASK_STORE_URL": "postgresql://gis:pa55word@db:5432/gis",
        "GUARD_TIMEOUT": "4",
    }
    done = gis("config", "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {name.upper() for name in Settings.model_fields}
    assert report["API_TOKENS"] == "alice:***,***"
    assert report["TASK_STORE_URL"] == "postgresql://gis:***@db:5432/gis"
    assert report["GUARD_TIMEOUT"] == "4.0" and report["CHAT_MODEL"] == "llama3.2:1b"
    for secret in ("s3cret-token", "bare-t0ken", "pa55word"):
        assert secret not in done.stdout
    plain = gis("config", env=env)
    assert "API_TOKENS=alice:***,***" in plain.stdout.splitlines()


def test_ask_runs_the_a2a_client(closed_port: int) -> None:
    done = gis("ask", f"http://127.0.0.1:{closed_port}", "hello")
    assert done.returncode == 2  # unreachable agent, as python -m agents ask
    assert done.stderr.startswith("error: ")
