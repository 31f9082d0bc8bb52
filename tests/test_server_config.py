"""Hypercorn configuration, the serve options, request ids and the JSON log format."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys

import pytest

from service.config import Settings
from service.logging import JsonFormatter, configure_logging, request_id_var
from service.server import add_serve_arguments, build_config, settings_from_args
from service.web.middleware import choose_request_id


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)


def test_build_config_from_settings() -> None:
    config = build_config(
        _settings(host="0.0.0.0", port=9000, graceful_timeout=12.5, h2_max_concurrent_streams=300)
    )
    assert config.bind == ["0.0.0.0:9000"]
    assert config.keep_alive_max_requests >= 1_000_000  # Hypercorn's 1,000 is far too low
    assert config.graceful_timeout == 12.5
    assert config.h2_max_concurrent_streams == 300
    assert config.accesslog is None and config.workers == 1
    assert not config.ssl_enabled


def test_build_config_tls_and_ipv6() -> None:
    config = build_config(_settings(host="::1", port=8443, certfile="c.pem", keyfile="k.pem"))
    assert config.bind == ["[::1]:8443"]
    assert config.ssl_enabled and config.alpn_protocols == ["h2", "http/1.1"]


def test_build_config_uses_a_bound_socket() -> None:
    assert build_config(_settings(), fd=7).bind == ["fd://7"]


def test_serve_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "7000")
    monkeypatch.setenv("WORKERS", "3")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--port", "7100", "--host", "127.0.0.2"]))
    assert (settings.port, settings.host, settings.workers) == (7100, "127.0.0.2", 3)


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123", True), ("trace.1:2_3", True), ("x" * 128, True), ("x" * 129, False),
     ("a b", False), ("", False), (None, False), ("-leading", False), ("é", False)],
)  # fmt: skip
def test_request_id_is_kept_only_when_sane(given: str | None, kept: bool) -> None:
    chosen = choose_request_id(given)
    assert (chosen == given) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", chosen), chosen
        assert choose_request_id(given) != chosen  # a fresh random id each time


def test_json_log_lines_carry_the_request_id_and_extras() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("INFO", stream=stream)
    try:
        token = request_id_var.set("req-9")
        try:
            logging.getLogger("service.test").info("hello %s", "world", extra={"status": 201})
        finally:
            request_id_var.reset(token)
        logging.getLogger("service.test").warning("outside")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "hello world" and first["request_id"] == "req-9"
    assert first["status"] == 201 and first["level"] == "INFO" and first["logger"] == "service.test"
    assert "request_id" not in second and second["level"] == "WARNING"


def test_json_formatter_keeps_exceptions_on_one_line() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed", None, exc_info=sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: bad" in json.loads(line)["exception"]
