"""The shape of the code: one core that knows nothing of HTTP or A2A, two front ends that never
import each other, and a composition root that hands them one pipeline."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICE = REPO / "service"

# Libraries that belong to a front end or the HTTP shell, never to the core.
FRONT_END_LIBRARIES = ("fastapi", "starlette", "a2a", "hypercorn", "h2", "sse_starlette")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (type-checking imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (SERVICE / package).rglob("*.py"))


def _offenders(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(REPO)} imports {name}"
        for path in paths
        for name in sorted(_imports(path))
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]


def test_the_modules_this_test_reads_exist() -> None:
    for package in ("core", "guard", "models", "rest", "a2a", "web"):
        assert _modules(package), f"service/{package} has no modules"


@pytest.mark.parametrize("package", ["core", "guard", "models", "chat"])
def test_the_core_knows_nothing_of_http_or_a2a(package: str) -> None:
    forbidden = (*FRONT_END_LIBRARIES, "service.rest", "service.a2a", "service.web", "service.app")
    assert _offenders(_modules(package), forbidden) == []


def test_rest_and_a2a_never_import_each_other() -> None:
    assert _offenders(_modules("rest"), ("service.a2a", "agents", "a2a")) == []
    assert _offenders(_modules("a2a"), ("service.rest",)) == []


def test_the_http_shell_serves_both_and_imports_neither() -> None:
    assert _offenders(_modules("web"), ("service.rest", "service.a2a", "a2a")) == []


def test_front_ends_get_the_pipeline_from_the_composition_root() -> None:
    # No route or skill looks the pipeline up on the app: it is handed to them when they
    # are built (service/app.py).
    for path in _modules("rest", "a2a", "web"):
        assert "app.state" not in path.read_text(), f"{path.relative_to(REPO)} reads app.state"


def test_only_the_composition_root_wires_both_front_ends() -> None:
    wiring = [
        path.relative_to(REPO).as_posix()
        for path in SERVICE.rglob("*.py")
        if {"service.rest.routes", "service.a2a.mount"} <= _imports(path)
    ]
    assert wiring == ["service/app.py"]


def test_sdk_internals_are_reached_only_from_the_compat_module() -> None:
    # Public a2a-sdk API is what its packages export at their top level; anything deeper is
    # an internal that service/a2a/sdk_compat.py wraps (and tests/test_a2a_sdk_compat.py pins).
    public = {
        "a2a.client",
        "a2a.helpers",
        "a2a.types",
        "a2a.auth.user",
        "a2a.server.agent_execution",
        "a2a.server.context",
        "a2a.server.events",
        "a2a.server.request_handlers",
        "a2a.server.routes",
        "a2a.server.tasks",
        "a2a.utils.constants",
        "a2a.utils.errors",
    }
    deep = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _modules("a2a")
        if path.name != "sdk_compat.py"
        for name in sorted(_imports(path))
        if name.startswith("a2a.") and name not in public
    ]
    assert deep == []
