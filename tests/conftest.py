"""Shared pytest fixtures."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from service.config import Settings
from tests.ollama_double import OllamaDouble

# --- Ollama test double ---------------------------------------------------------------------


@pytest.fixture
def ollama_double() -> Iterator[OllamaDouble]:
    """A running Ollama-protocol double on 127.0.0.1 (free port) holding llama-guard3:1b,
    answering "safe" until a test scripts it otherwise."""
    with OllamaDouble() as double:
        yield double


@pytest.fixture(scope="module")
def double() -> Iterator[OllamaDouble]:
    """One double for a module whose server is module-scoped; modules reset it before each
    test with ``pytestmark = pytest.mark.usefixtures("fresh_double")``."""
    with OllamaDouble() as running:
        yield running


@pytest.fixture
def fresh_double(double: OllamaDouble) -> OllamaDouble:
    """The module's double with its script, faults and recorded requests cleared."""
    double.reset()
    return double


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def guard_settings(ollama_double: OllamaDouble) -> Callable[..., Settings]:
    """Settings pointed at the double, with short timeouts; keyword arguments override."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            # Every guard field is pinned so the caller's environment cannot change a test.
            "ollama_host": ollama_double.url,
            "guard_model": "llama-guard3:1b",
            "guard_timeout": 2.0,
            "guard_retries": 2,
            "guard_retry_backoff": 0.01,
            "guard_concurrency": 8,
            "guard_keep_alive": "30m",
            "guard_num_predict": 48,
            "guard_num_ctx": 16_384,
            "guard_cache_size": 4096,
            "guard_cache_ttl": 600.0,
            "guard_screen_input": True,
            "guard_screen_output": True,
            "guard_block_categories": [],
            "guard_pull": False,
            "guard_retry_after": 5,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


# --- servers whose public URL names their port ------------------------------------------------


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """A function returning a loopback port that is free right now, for servers that must
    know their port before they start (the A2A agent card names it through PUBLIC_URL)."""

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick
