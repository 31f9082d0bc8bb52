"""The installed ``gis`` command: its subcommands, ``gis config`` printing every setting in
effect with secrets masked, ``gis ask`` (the A2A client), and help texts that are plain text,
name every setting (``serve``) and offer no option a command ignores (``quantize``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
    # A bare token shows the caller name the service gives it (token- and 8 hex digits of
    # its SHA-256), as the logs and the guard's per-caller share name it.
    bare = "token-" + hashlib.sha256(b"bare-t0ken").hexdigest()[:8]
    assert report["API_TOKENS"] == f"alice:***,{bare}:***"
    assert report["TASK_STORE_URL"] == "postgresql://gis:***@db:5432/gis"
    assert report["GUARD_TIMEOUT"] == "4.0" and report["CHAT_MODEL"] == "llama3.2:1b"
    for secret in ("s3cret-token", "bare-t0ken", "pa55word"):
        assert secret not in done.stdout
    plain = gis("config", env=env)
    assert f"API_TOKENS=alice:***,{bare}:***" in plain.stdout.splitlines()
    # What precedes a colon that is no caller name is part of the token: never shown.
    odd = gis("config", "--json", env={"API_TOKENS": "not a name:s3cret"})
    assert "not a name" not in odd.stdout and "s3cret" not in odd.stdout


def test_an_invalid_setting_is_reported_per_variable_not_as_a_traceback() -> None:
    env = {"PORT": "70000", "GUARD_BLOCK_CATEGORIES": "S1,S99", "API_TOKENS": "dup,dup"}
    for command in (("serve",), ("config",), ("guard-check", "hello")):
        done = gis(*command, env=env)
        assert done.returncode == 2, (command, done.stderr)
        assert "Traceback" not in done.stderr, command
        lines = done.stderr.splitlines()
        assert lines[0].startswith("error: ") and "invalid setting" in lines[0], command
        assert any(line.startswith("  PORT: ") and "70000" in line for line in lines)
        blocked = [line for line in lines if line.startswith("  GUARD_BLOCK_CATEGORIES: ")]
        assert blocked and "S99" in blocked[0]


def test_ask_runs_the_a2a_client(closed_port: int) -> None:
    done = gis("ask", f"http://127.0.0.1:{closed_port}", "hello")
    assert done.returncode == 2  # unreachable agent, as python -m agents ask
    assert done.stderr.startswith("error: ")


# --- help texts -----------------------------------------------------------------------------

COMMANDS = ("serve", "train", "quantize", "evaluate", "guard-check", "config", "ask", "drift",
            "drift-profile")  # fmt: skip
RST = re.compile(r"``|:[a-z]+:`")  # reStructuredText literals and roles (:func:`x`)


def help_of(main: Callable[[list[str]], int], argv: list[str], capsys: Any) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return str(capsys.readouterr().out)


def test_every_help_text_is_plain(capsys: pytest.CaptureFixture[str]) -> None:
    from agents.__main__ import main as agents_main
    from service.__main__ import main as gis_main
    from service.server import main as server_main

    helps = {"gis": help_of(gis_main, [], capsys)}
    helps |= {f"gis {name}": help_of(gis_main, [name], capsys) for name in COMMANDS}
    helps["python -m agents"] = help_of(agents_main, [], capsys)
    helps["python -m agents ask"] = help_of(agents_main, ["ask"], capsys)
    helps["python -m service.server"] = help_of(server_main, [], capsys)
    for command, text in helps.items():
        assert text.startswith("usage: "), command
        assert not RST.search(text), f"{command} --help shows markup: {RST.search(text)}"
    # The server's help is its module docstring, markup taken out.
    assert "python -m service serve [--host H]" in helps["python -m service.server"]


def test_serve_help_names_every_setting_with_its_default() -> None:
    done = gis("serve", "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "gis config" in text and "docs/configuration.md" in text
    listed = dict(
        line.split(None, 1) for line in text.split("settings:", 1)[1].splitlines()[5:] if line
    )
    assert list(listed) == [name.upper() for name in Settings.model_fields]  # every one, in order
    assert listed["HOST"] == "127.0.0.1" and listed["GUARD_MODEL"] == "llama-guard3:1b"
    assert listed["GUARD_TIMEOUT"] == "6" and listed["API_TOKENS"] == "(empty)"
    assert listed["CORS_ALLOW_ORIGINS"] == "(empty)" and listed["ACCESS_LOG"] == "true"


def test_quantize_takes_no_epoch_options(capsys: pytest.CaptureFixture[str]) -> None:
    from service.__main__ import main as gis_main

    assert "epochs" not in help_of(gis_main, ["quantize"], capsys)
    assert "--cnn-epochs" in help_of(gis_main, ["train"], capsys)
    for option in ("--cnn-epochs", "--moe-epochs"):
        with pytest.raises(SystemExit) as exit_info:
            gis_main(["quantize", "--data", "x", option, "5"])
        assert exit_info.value.code == 2
        assert f"unrecognized arguments: {option}" in capsys.readouterr().err


def test_ask_help_shows_the_clients_options(capsys: pytest.CaptureFixture[str]) -> None:
    from agents.__main__ import main as agents_main
    from service.__main__ import main as gis_main

    ours, theirs = help_of(gis_main, ["ask"], capsys), help_of(agents_main, ["ask"], capsys)
    for option in ("--skill", "--stream", "--token", "--send-token-to", "--json", "url", "text"):
        assert option in ours, option
    assert ours.split("\n\n", 1)[1] == theirs.split("\n\n", 1)[1]  # the same, but the usage


def test_gis_has_every_command_the_readme_shows() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    # In code: a command line of a fenced block, or an inline `gis ...`.
    shown = set(re.findall(r"^\s*(?:\.venv/bin/)?gis ([a-z][a-z-]*)", readme, re.MULTILINE))
    shown |= set(re.findall(r"`(?:\.venv/bin/)?gis ([a-z][a-z-]*)", readme))
    assert shown, "the README shows no gis command"
    assert shown <= set(COMMANDS), sorted(shown - set(COMMANDS))
    assert "python -m service" not in readme and "python -m agents" not in readme
