"""The guard's timeout and retries fit the request deadline: the defaults (in the class, the
docs and every deployment file) leave a guard that keeps timing out room to finish all its
attempts inside REQUEST_TIMEOUT, and a configuration that does not is warned about at start,
naming the variables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import GUARD_MAX_BACKOFF, Settings
from service.guard import llama_guard
from tests.helpers import running_server
from tests.ollama_double import OllamaDouble

ROOT = Path(__file__).resolve().parents[1]
MAX_BACKOFF = 10.0  # docs/guard.md: "at most 10 s" between attempts


def worst_case(timeout: float, retries: int, backoff: float, screens: int = 2) -> float:
    """Worst case of a classify call's guard screens, computed here from the rules in
    docs/guard.md (independently of the class): each screen makes retries + 1 attempts that
    all time out, pausing backoff x 2^n (at most 10 s) before retry n, and the input and
    output screens run one after the other."""
    pauses = sum(min(backoff * 2**n, MAX_BACKOFF) for n in range(retries))
    return screens * (timeout * (retries + 1) + pauses)


def test_the_defaults_let_every_retry_finish_inside_the_request_deadline() -> None:
    settings = Settings(_env_file=None)
    worst = worst_case(settings.guard_timeout, settings.guard_retries, settings.guard_retry_backoff)
    assert worst <= settings.request_timeout, (
        f"defaults: both screens may take {worst:g}s, REQUEST_TIMEOUT is "
        f"{settings.request_timeout:g}s"
    )
    assert settings.guard_deadline_warning() is None


def _env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _compose() -> dict[str, str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = compose["services"]["api"]["environment"]
    defaults = {}
    for key, value in environment.items():
        match = re.fullmatch(r"\$\{\w+:-(.*)\}", str(value))
        defaults[key] = match.group(1) if match else str(value)
    return defaults


def _configmap() -> dict[str, str]:
    for document in yaml.safe_load_all((ROOT / "deploy/k8s/configmap.yaml").read_text()):
        if document and document.get("kind") == "ConfigMap":
            return {key: str(value) for key, value in document["data"].items()}
    raise AssertionError("deploy/k8s/configmap.yaml holds no ConfigMap")


@pytest.mark.parametrize("source", [_env_example, _compose, _configmap])
def test_every_deployment_file_fits_the_request_deadline(source: Any) -> None:
    values = source()
    defaults = Settings(_env_file=None)
    timeout = float(values.get("GUARD_TIMEOUT", defaults.guard_timeout))
    retries = int(values.get("GUARD_RETRIES", defaults.guard_retries))
    backoff = float(values.get("GUARD_RETRY_BACKOFF", defaults.guard_retry_backoff))
    deadline = float(values.get("REQUEST_TIMEOUT", defaults.request_timeout))
    assert worst_case(timeout, retries, backoff) <= deadline, values
    # And they repeat the class's defaults rather than drifting from them.
    assert (timeout, retries) == (defaults.guard_timeout, defaults.guard_retries)


def test_the_backoff_bound_is_the_one_the_guard_uses() -> None:
    assert GUARD_MAX_BACKOFF == llama_guard._MAX_BACKOFF == MAX_BACKOFF


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, 2 * (6 * 2 + 0.2)),
        ({"guard_timeout": 10, "guard_retries": 2}, 2 * (10 * 3 + 0.2 + 0.4)),
        ({"guard_timeout": 1, "guard_retries": 6, "guard_retry_backoff": 2}, 2 * (7 + 2 + 4 + 8
         + 10 + 10 + 10)),  # each pause is at most 10 s
        ({"guard_timeout": 5, "guard_retries": 0}, 10.0),
    ],
)  # fmt: skip
def test_the_worst_case_follows_the_documented_rules(
    values: dict[str, Any], expected: float
) -> None:
    settings = Settings(_env_file=None, **values)
    assert 2 * settings.guard_worst_case() == pytest.approx(expected)
    args = (settings.guard_timeout, settings.guard_retries, settings.guard_retry_backoff)
    assert worst_case(*args) == pytest.approx(expected)


def test_a_configuration_over_the_deadline_is_named_in_the_warning() -> None:
    settings = Settings(_env_file=None, guard_timeout=10, guard_retries=2)
    warning = settings.guard_deadline_warning()
    assert warning is not None
    for part in ("GUARD_TIMEOUT=10s", "GUARD_RETRIES=2", "GUARD_RETRY_BACKOFF=0.2s",
                 "REQUEST_TIMEOUT=30s", "30.6s per screen", "61.2s"):  # fmt: skip
        assert part in warning, warning
    # One screen on: half the budget, which fits no better here (30.6 > 30) ...
    assert Settings(_env_file=None, guard_timeout=10, guard_retries=2,
                    guard_screen_output=False).guard_deadline_warning()  # fmt: skip
    # ... but does for 5 s x 3 + 0.6 s = 15.6 s, which two screens would not.
    assert Settings(_env_file=None, guard_timeout=5, guard_retries=2).guard_deadline_warning()
    assert (
        Settings(
            _env_file=None, guard_timeout=5, guard_retries=2, guard_screen_input=False
        ).guard_deadline_warning()
        is None
    )
    # No screen on: nothing to wait for.
    assert (
        Settings(
            _env_file=None,
            guard_timeout=60,
            guard_screen_input=False,
            guard_screen_output=False,
        ).guard_deadline_warning()
        is None
    )


def test_a_short_request_deadline_is_allowed_not_refused() -> None:
    # A deadline shorter than the guard's is legitimate (the caller gets a 504 sooner).
    settings = Settings(_env_file=None, request_timeout=0.5, guard_timeout=5)
    assert settings.request_timeout == 0.5 and settings.guard_deadline_warning()


def _deadline_warnings(server: Any) -> list[dict[str, Any]]:
    return [
        entry
        for entry in server.logs()
        if entry.get("level") == "WARNING" and "REQUEST_TIMEOUT" in entry.get("message", "")
    ]


def test_the_server_warns_at_start_when_the_retries_do_not_fit(
    ollama_double: OllamaDouble,
) -> None:
    with running_server(
        ollama_host=ollama_double.url, models="sentiment-cnn-int8", guard_timeout=20
    ) as server:
        server.wait_for_log(lambda entry: entry.get("message") == "started")
        [warning] = _deadline_warnings(server)
    assert "GUARD_TIMEOUT=20s x (GUARD_RETRIES=0 + 1)" in warning["message"]
    assert "= 40s" in warning["message"] and warning["logger"] == "service.app"


def test_the_server_starts_quietly_when_they_fit(ollama_double: OllamaDouble) -> None:
    with running_server(ollama_host=ollama_double.url, models="sentiment-cnn-int8") as server:
        server.wait_for_log(lambda entry: entry.get("message") == "started")
        assert _deadline_warnings(server) == []
