"""docker-compose.yml, its overrides in deploy/, .env.example and the Envoy config, checked
without a Docker engine: against the Compose Specification's JSON schema (and with
`docker compose config` where the Compose CLI plugin is installed), against the service's
Settings, against each other, and against a real server for the health-check commands."""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from google.protobuf.json_format import ParseDict
from sqlalchemy.engine import make_url

from service.config import Settings
from tests.helpers import REPO, running_server
from tests.ollama_double import OllamaDouble

COMPOSE = REPO / "docker-compose.yml"
SCALE = REPO / "deploy" / "compose.scale.yml"
GPU = REPO / "deploy" / "compose.gpu.yml"
ENVOY = REPO / "deploy" / "envoy.yaml"
ENV_EXAMPLE = REPO / ".env.example"
# Every combination the README documents.
STACKS: dict[str, tuple[Path, ...]] = {
    "default": (COMPOSE,),
    "scale": (COMPOSE, SCALE),
    "gpu": (COMPOSE, GPU),
    "scale+gpu": (COMPOSE, SCALE, GPU),
}
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
# Variables Compose itself reads from .env (not interpolated into the files).
COMPOSE_OWN = {"COMPOSE_FILE"}
# .env.example values that differ from the service's own default on purpose: empty, the
# compose file derives PUBLIC_URL from API_PORT.
DEPLOYMENT_DEFAULTS = {"PUBLIC_URL": ""}
# Settings the compose files fix for the api whatever .env says (the scale override adds
# TASK_STORE_URL, the shared PostgreSQL).
FIXED_BY_COMPOSE = {"HOST", "PORT", "OLLAMA_HOST", "GUARD_PULL"}
# An image tag that names a release: 0.9.5, 16.6, v1.34.10 (not latest, 16, v1.34-latest).
VERSION_TAG = re.compile(r"v?\d+\.\d+(\.\d+)*")


# --- loading: YAML with Compose's merge tags, .env files, interpolation, merging -------------


class Reset:
    """`!reset VALUE` in an override file: replace the base file's value instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node, deep=True))
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node, deep=True))
    return Reset(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _reset)


def load_compose(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=ComposeLoader)  # a SafeLoader subclass


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped), in file order."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path.name}:{number}: {line!r}"
        assert key not in values, f"{path.name}:{number}: {key} set twice"
        values[key] = value
    return values


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = (":-", ":?", ":+", "-", "?", "+")


def _references(text: str) -> Iterator[tuple[int, int, str, str | None, str]]:
    """Each top-level $ reference of ``text``: (start, end, name, operator, raw argument);
    name "$" is the escaped $$. A default may hold references itself (nested interpolation:
    ``${PUBLIC_URL:-http://localhost:${API_PORT:-8080}}``)."""
    i = 0
    while (i := text.find("$", i)) != -1:
        if text.startswith("$$", i):
            yield i, i + 2, "$", None, ""
            i += 2
            continue
        if not text.startswith("${", i):
            match = _NAME.match(text, i + 1)
            if match:
                yield i, match.end(), match.group(), None, ""
                i = match.end()
            else:
                i += 1
            continue
        name = _NAME.match(text, i + 2)
        assert name, f"bad interpolation in {text!r}"
        j, depth = name.end(), 1
        op = next((op for op in _OPS if text.startswith(op, j)), None)
        arg_start = j + len(op) if op else j
        k = arg_start
        while depth:  # the matching brace, past nested ${...}
            assert k < len(text), f"unclosed interpolation in {text!r}"
            if text.startswith("${", k):
                depth, k = depth + 1, k + 2
                continue
            if text[k] == "}":
                depth -= 1
            k += 1
        assert op or arg_start == k - 1, f"bad interpolation in {text!r}"
        yield i, k, name.group(), op, text[arg_start : k - 1]
        i = k


def interpolate_string(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}; defaults may nest."""
    out, last = [], 0
    for start, end, name, op, arg in _references(text):
        out.append(text[last:start])
        last = end
        if name == "$":
            out.append("$")
            continue
        value = env.get(name)
        unset_or_empty = not value
        if op in (":-", "-"):
            use_default = unset_or_empty if op == ":-" else value is None
            out.append(interpolate_string(arg, env) if use_default else str(value))
        elif op in (":?", "?"):
            if unset_or_empty if op == ":?" else value is None:
                raise ValueError(f"required variable {name} is missing: {arg}")
            out.append(str(value))
        elif op in (":+", "+"):
            present = not unset_or_empty if op == ":+" else value is not None
            out.append(interpolate_string(arg, env) if present else "")
        else:
            out.append(value or "")
    out.append(text[last:])
    return "".join(out)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, Reset):
        return Reset(interpolate(node.value, env))
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, str):
        return interpolate_string(node, env)
    return node


def variables_in(node: Any) -> dict[str, set[str | None]]:
    """Each variable a file interpolates, with the defaults it gives it (None: no default),
    as written (a nested default keeps its own reference, whose variable is listed too)."""
    found: dict[str, set[str | None]] = {}
    if isinstance(node, Reset):
        return variables_in(node.value)
    if isinstance(node, dict):
        items: list[Any] = list(node.values())
    elif isinstance(node, list):
        items = node
    elif isinstance(node, str):
        for _, _, name, op, arg in _references(node):
            if name == "$":
                continue
            found.setdefault(name, set()).add(arg if op in (":-", "-") else None)
            for inner, defaults in variables_in(arg).items():
                found.setdefault(inner, set()).update(defaults)
        return found
    else:
        return found
    for item in items:
        for name, defaults in variables_in(item).items():
            found.setdefault(name, set()).update(defaults)
    return found


def strip_resets(node: Any) -> Any:
    if isinstance(node, Reset):
        return strip_resets(node.value)
    if isinstance(node, dict):
        return {key: strip_resets(value) for key, value in node.items()}
    if isinstance(node, list):
        return [strip_resets(item) for item in node]
    return node


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, as far as these files use it: mappings merge key
    by key, sequences (ports, volumes, ...) append unseen items, `!reset` replaces."""
    if isinstance(override, Reset):
        return strip_resets(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else strip_resets(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + [item for item in strip_resets(override) if item not in base]
    return strip_resets(override)


def stack(files: tuple[Path, ...], env: Mapping[str, str]) -> dict[str, Any]:
    merged: Any = {}
    for path in files:
        merged = merge(merged, interpolate(load_compose(path), env))
    return merged


def env_defaults() -> dict[str, str]:
    """The environment a user gets from `cp .env.example .env`."""
    return read_env_file(ENV_EXAMPLE)


def compose_schema_validator() -> jsonschema.protocols.Validator:
    # The Compose Specification's schema as vendored by check-jsonschema.
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    return probe.returncode == 0


def api_environment(document: Mapping[str, Any]) -> dict[str, str]:
    environment = document["services"]["api"]["environment"]
    assert isinstance(environment, dict), "api environment: use the mapping form"
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def settings_from(environment: Mapping[str, str]) -> Settings:
    return Settings(_env_file=None, **{key.lower(): value for key, value in environment.items()})


# --- the files against the Compose Specification --------------------------------------------


@pytest.mark.parametrize("name", sorted(STACKS))
def test_compose_stacks_match_the_compose_specification(name: str) -> None:
    validator = compose_schema_validator()
    files = STACKS[name]
    for env in ({}, env_defaults()):  # defaults written in the files, and a copied .env
        for path in files:
            document = strip_resets(interpolate(load_compose(path), env))
            assert schema_errors(validator, document) == [], path.name
        merged = stack(files, env)
        assert schema_errors(validator, merged) == []
        assert "${" not in json.dumps(merged), "an interpolation was left unresolved"
    # The schema is strict, so a misspelt key would have been caught.
    broken = copy.deepcopy(stack(files, {}))
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"
    assert any("intervall" in error for error in schema_errors(validator, broken))

    if docker_compose_available():  # the Compose CLI resolves the files without an engine
        args = [arg for path in files for arg in ("-f", str(path))]
        run = subprocess.run(
            ["docker", "compose", "--project-directory", str(REPO), *args, "config", "-q"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
            env={"PATH": "/usr/bin:/bin:/usr/local/bin"},
        )
        assert run.returncode == 0, run.stderr


def test_api_waits_for_a_healthy_ollama_and_the_pulled_guard_model() -> None:
    for name, files in STACKS.items():
        services = stack(files, {})["services"]
        depends_on = services["api"]["depends_on"]
        assert depends_on["ollama"]["condition"] == "service_healthy", name
        assert depends_on["guard-model"]["condition"] == "service_completed_successfully"
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name}: api depends on unknown {dependency}"
            target = services[dependency]
            if spec["condition"] == "service_healthy":
                test = target["healthcheck"]["test"]
                assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (dependency, test)
            else:
                assert spec["condition"] == "service_completed_successfully", (name, dependency)
                assert target["restart"] == "no", "a one-shot must not be restarted"
                assert "ports" not in target and "healthcheck" not in target

    services = stack((COMPOSE,), {})["services"]
    ollama, pull = services["ollama"], services["guard-model"]
    assert ollama["image"].startswith("ollama/ollama")
    assert ollama["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    volume, target = ollama["volumes"][0].split(":")[:2]
    assert target == "/root/.ollama" and volume in stack((COMPOSE,), {})["volumes"]
    assert pull["image"] == ollama["image"]
    assert pull["entrypoint"] == ["ollama", "pull", "llama-guard3:1b"]
    assert pull["environment"]["OLLAMA_HOST"] == "http://ollama:11434"
    assert pull["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    # The model the one-shot pulls is the model the api asks for, whatever GUARD_MODEL says.
    for model in ("llama-guard3:8b", "llama-guard3:1b"):
        services = stack((COMPOSE,), {"GUARD_MODEL": model})["services"]
        assert services["guard-model"]["entrypoint"][-1] == model
        assert services["api"]["environment"]["GUARD_MODEL"] == model


def test_every_api_variable_is_a_setting_the_service_reads() -> None:
    for name, files in STACKS.items():
        for env in ({}, env_defaults()):
            environment = api_environment(stack(files, env))
            unknown = set(environment) - SETTINGS_ENV
            assert not unknown, f"{name}: the service reads no {sorted(unknown)}"
            settings = settings_from(environment)  # every value parses
            assert settings.ollama_host == "http://ollama:11434"
            assert (settings.host, settings.port) == ("0.0.0.0", 8080)
            assert settings.guard_pull is False, "the guard-model service pulls, not the api"
            assert settings.base_url == "http://localhost:8080"
            assert settings.guard_screen_input and settings.guard_screen_output
            assert settings.workers == 1 and settings.guard_model == "llama-guard3:1b"
    # PUBLIC_URL follows the published port unless it is set.
    for files in (STACKS["default"], STACKS["scale"]):
        moved = settings_from(api_environment(stack(files, {"API_PORT": "9000"})))
        assert moved.base_url == "http://localhost:9000"
        named = {"API_PORT": "9000", "PUBLIC_URL": "https://gis.example"}
        assert settings_from(api_environment(stack(files, named))).base_url == named["PUBLIC_URL"]
    # A value from .env reaches the service.
    custom = {"WORKERS": "2", "GUARD_BLOCK_CATEGORIES": "S1,S9", "API_TOKENS": "a,b"}
    settings = settings_from(api_environment(stack((COMPOSE,), custom)))
    assert settings.workers == 2
    assert settings.guard_block_categories == ["S1", "S9"]
    assert settings.api_tokens == ["a", "b"]
    # Without the scale override the api keeps tasks in memory.
    assert "TASK_STORE_URL" not in api_environment(stack((COMPOSE,), {}))


def container_environment(document: Mapping[str, Any], dotenv: Mapping[str, str]) -> dict[str, str]:
    """What the api container gets: its env_file (``.env``, here ``dotenv``, when present)
    overlaid by its ``environment:``, as Compose does."""
    environment: dict[str, str] = {}
    for entry in document["services"]["api"].get("env_file", []):
        path = entry["path"] if isinstance(entry, dict) else entry
        assert path == ".env", f"the api reads {path}"
        environment.update(dotenv)
    environment.update(api_environment(document))
    return environment


def test_every_setting_in_dotenv_reaches_the_api() -> None:
    marker = "from-dotenv"
    for name, files in STACKS.items():
        api = stack(files, {})["services"]["api"]
        # .env is optional: `docker compose up` works without one.
        assert api["env_file"] == [{"path": ".env", "required": False}], name
        fixed = FIXED_BY_COMPOSE | ({"TASK_STORE_URL"} if SCALE in files else set())
        for setting in sorted(SETTINGS_ENV):
            dotenv = {setting: marker}  # Compose reads .env for interpolation too
            environment = container_environment(stack(files, dotenv), dotenv)
            if setting in fixed:
                assert environment[setting] != marker, f"{name}: {setting} is not fixed"
            else:
                assert environment[setting] == marker, f"{name}: {setting} does not reach the api"
    # A .env copied from .env.example, then edited, configures the service as it says.
    dotenv = env_defaults() | {"CORS_ALLOW_ORIGINS": "https://app.example", "MAX_BATCH": "16"}
    dotenv |= {"DRIFT_WINDOW": "500", "TORCH_THREADS": "2"}  # settings .env.example omits
    settings = settings_from(container_environment(stack((COMPOSE,), dotenv), dotenv))
    assert settings.cors_allow_origins == ["https://app.example"] and settings.max_batch == 16
    assert settings.drift_window == 500 and settings.torch_threads == 2
    assert settings.host == "0.0.0.0" and settings.ollama_host == "http://ollama:11434"


def _k8s_images() -> dict[str, str]:
    images = {}
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            text = json.dumps(document)
            for image in re.findall(r'"image": "([^"]+)"', text):
                images[f"{path.name}: {image}"] = image
    return images


def test_every_image_is_pinned_to_a_version() -> None:
    for env in ({}, env_defaults()):
        for name, files in STACKS.items():
            for service, spec in stack(files, env)["services"].items():
                _, _, tag = spec["image"].rpartition(":")
                assert VERSION_TAG.fullmatch(tag), f"{name}: {service} runs {spec['image']}"
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    services = stack((COMPOSE,), {})["services"]
    assert services["api"]["image"] == f"guarded-inference-service:{version}"
    # Kubernetes runs the same Ollama release as Compose.
    ollama = services["ollama"]["image"]
    k8s = _k8s_images()
    assert k8s and all(VERSION_TAG.fullmatch(image.rpartition(":")[2]) for image in k8s.values())
    assert {i for i in k8s.values() if i.startswith("ollama/")} == {ollama}


def test_the_models_are_warm_before_the_api_starts(
    tmp_path: Path, fresh_double: OllamaDouble
) -> None:
    services = stack((COMPOSE,), {})["services"]
    warm, api = services["model-warm"], services["api"]
    # The api's image and settings: the guard is warmed through the api's own guard client.
    assert warm["image"] == api["image"] and warm["build"] == api["build"]
    assert warm["env_file"] == api["env_file"] and warm["restart"] == "no"
    assert api["depends_on"]["model-warm"]["condition"] == "service_completed_successfully"
    for pull in ("guard-model", "chat-model"):  # warmed once pulled
        assert warm["depends_on"][pull]["condition"] == "service_completed_successfully"
    assert warm["environment"]["OLLAMA_HOST"] == api["environment"]["OLLAMA_HOST"]
    changed = {"GUARD_MODEL": "llama-guard3:8b", "CHAT_MODEL": "", "GUARD_KEEP_ALIVE": "1h"}
    for env in ({}, {**changed, "GUARD_NUM_CTX": "8192"}):
        warm_env = stack((COMPOSE,), env)["services"]["model-warm"]["environment"]
        api_env = stack((COMPOSE,), env)["services"]["api"]["environment"]
        for name in ("GUARD_MODEL", "CHAT_MODEL", "GUARD_KEEP_ALIVE", "GUARD_NUM_CTX"):
            assert warm_env[name] == api_env[name], name  # the models and options of the api

    # The script, run for real (this interpreter as the image's `python`) against the
    # Ollama double: the guard's call carries the api's options, the chat model is asked once.
    assert warm["entrypoint"][:2] == ["/bin/sh", "-c"]
    script = warm["entrypoint"][2].replace("$$", "$")  # Compose's escape for a literal $
    stand_in = tmp_path / "python"
    stand_in.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    stand_in.chmod(0o755)

    def run(chat_model: str) -> int:
        env = {name: str(value) for name, value in warm["environment"].items()}
        env |= {"OLLAMA_HOST": fresh_double.url, "CHAT_MODEL": chat_model}
        env |= {"PATH": f"{tmp_path}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
        done = subprocess.run(["sh", "-c", script], env=env, cwd=tmp_path, timeout=120, check=False)
        return done.returncode

    assert run("llama3.2:1b") == 0
    [screen] = fresh_double.chat_requests
    assert screen.body["model"] == "llama-guard3:1b" and screen.body["keep_alive"] == "30m"
    assert screen.body["options"]["num_ctx"] == Settings().guard_num_ctx == 16384
    [generation] = fresh_double.generation_requests
    assert generation.body["model"] == "llama3.2:1b" and generation.body["keep_alive"] == "30m"
    fresh_double.reset()
    assert run("") == 0  # chat off: the guard only
    assert len(fresh_double.chat_requests) == 1 and not fresh_double.generation_requests
    fresh_double.reset()
    fresh_double.set_rules([("hello", "unsafe\nS1")])
    assert run("") == 0  # a verdict of any kind: the model is loaded
    fresh_double.reset()
    fresh_double.fail_next(1, status=500)  # no verdict: the api does not start
    assert run("llama3.2:1b") != 0 and not fresh_double.generation_requests


def test_env_example_documents_every_variable_with_the_files_defaults() -> None:
    example = env_defaults()
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):  # a variable: its block opens with a comment
            block_start = index
            while block_start > 0 and lines[block_start - 1].strip():
                block_start -= 1
            assert lines[block_start].startswith("#"), f"{line!r} is not documented"

    used: dict[str, set[str | None]] = {}
    for path in (COMPOSE, SCALE, GPU):
        for name, defaults in variables_in(load_compose(path)).items():
            used.setdefault(name, set()).update(defaults)
    documented = set(example) - COMPOSE_OWN
    assert set(used) <= documented, f"undocumented: {sorted(set(used) - documented)}"
    # What the files do not interpolate are settings, which reach the api by its env_file.
    assert documented - set(used) <= SETTINGS_ENV, sorted(documented - set(used) - SETTINGS_ENV)
    for name, defaults in used.items():
        assert len(defaults) == 1, f"{name}: the files give it the defaults {defaults}"
        (default,) = defaults
        derived = default is not None and "$" in default  # PUBLIC_URL from API_PORT
        expected = "" if derived else default
        assert example[name] == expected, f"{name}: files say {default!r}, .env.example says"
    # So copying .env.example changes nothing: every stack is the same with it as without.
    for name, files in STACKS.items():
        assert stack(files, example) == stack(files, {}), name

    # Service settings in .env.example are valid and are the service's own defaults.
    service_vars = {key: value for key, value in example.items() if key in SETTINGS_ENV}
    configured = settings_from(service_vars)
    defaults = Settings(_env_file=None)
    for key in service_vars:
        field = key.lower()
        expected = DEPLOYMENT_DEFAULTS.get(key, getattr(defaults, field))
        assert getattr(configured, field) == expected, f"{key}: {getattr(configured, field)!r}"


def test_ports_and_commands_agree_with_the_image_and_the_makefile() -> None:
    api = stack((COMPOSE,), {})["services"]["api"]
    assert api["build"] == "."
    assert api["ports"] == ["8080:8080"]
    assert stack((COMPOSE,), {"API_PORT": "9000"})["services"]["api"]["ports"] == ["9000:8080"]
    # No command override: the image's CMD (`python -m service serve`, as `make run`) runs.
    assert "command" not in api and "entrypoint" not in api
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert 'CMD ["python", "-m", "service", "serve"]' in dockerfile
    assert re.search(r"^run:.*\n\t\$\(PY\) -m service serve$", _makefile(), re.MULTILINE)
    assert re.search(r"^EXPOSE 8080$", dockerfile, re.MULTILINE)
    test = api["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "http://127.0.0.1:8080/readyz" in test[3]
    # SIGTERM drains for GRACEFUL_TIMEOUT seconds; Compose must wait longer before SIGKILL.
    grace = int(api["stop_grace_period"].removesuffix("s"))
    assert grace > float(api["environment"]["GRACEFUL_TIMEOUT"])


def _makefile() -> str:
    return (REPO / "Makefile").read_text(encoding="utf-8")


def test_scale_override_shares_postgres_behind_an_http2_balancer() -> None:
    merged = stack((COMPOSE, SCALE), env_defaults())
    services = merged["services"]
    api, postgres, lb = services["api"], services["postgres"], services["lb"]
    assert api["ports"] == [], "replicas cannot share a host port"
    assert int(api["deploy"]["replicas"]) == 2
    four = stack((COMPOSE, SCALE), {"API_REPLICAS": "4"})["services"]["api"]
    assert int(four["deploy"]["replicas"]) == 4
    assert "container_name" not in api, "a fixed name forbids replicas"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The task store URL names the postgres service and its credentials.
    url = make_url(api["environment"]["TASK_STORE_URL"])
    pg_env = postgres["environment"]
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert (url.username, url.password, url.database) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )
    assert settings_from(api_environment(merged)).task_store_url == str(
        url.render_as_string(hide_password=False)
    )
    assert postgres["image"] == "postgres:16.6"
    assert postgres["volumes"][0].split(":")[0] in merged["volumes"]
    assert postgres["healthcheck"]["test"] == ["CMD", "pg_isready", "-U", "gis", "-d", "gis"]
    # The balancer publishes the API port and reaches the replicas as `api:8080`.
    assert lb["ports"] == ["8080:8080"]
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    source, target = lb["volumes"][0].split(":")[:2]
    assert (REPO / source).resolve() == ENVOY and target == "/etc/envoy/envoy.yaml"
    assert lb["image"].startswith("envoyproxy/envoy:")

    bootstrap = envoy_bootstrap()
    (listener,) = bootstrap.static_resources.listeners
    assert listener.address.socket_address.port_value == int(lb["ports"][0].split(":")[1])
    (cluster,) = bootstrap.static_resources.clusters
    (endpoint,) = cluster.load_assignment.endpoints[0].lb_endpoints
    address = endpoint.endpoint.address.socket_address
    assert (address.address, address.port_value) == ("api", 8080)
    # ... which is where the replicas listen: the port the api service is configured with.
    assert settings_from(api_environment(merged)).port == address.port_value


def envoy_bootstrap() -> Any:
    """deploy/envoy.yaml parsed into Envoy's v3 Bootstrap message (unknown fields fail)."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    # Importing these registers the typed_config messages the file names in "@type".
    for module in (
        "envoy.extensions.filters.http.router.v3.router_pb2",
        "envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2",
        "envoy.extensions.upstreams.http.v3.http_protocol_options_pb2",
    ):
        importlib.import_module(module)

    document = yaml.safe_load(ENVOY.read_text(encoding="utf-8"))
    return ParseDict(document, bootstrap_pb2.Bootstrap())


def test_envoy_config_is_a_valid_bootstrap_speaking_http2_both_ways() -> None:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2 as hcm,
    )
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream

    bootstrap = envoy_bootstrap()
    (listener,) = bootstrap.static_resources.listeners
    manager = hcm.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    # AUTO: HTTP/1.1 and h2c (prior knowledge) on one port, like the service itself.
    assert manager.codec_type == hcm.HttpConnectionManager.AUTO
    route = manager.route_config.virtual_hosts[0].routes[0].route
    assert route.cluster == "api" and route.timeout.ToSeconds() == 0  # streams may be long
    (cluster,) = bootstrap.static_resources.clusters
    assert cluster.name == "api" and cluster.type == cluster_pb2.Cluster.STRICT_DNS
    assert cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    options = upstream.HttpProtocolOptions()
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    assert cluster.typed_extension_protocol_options[key].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    (check,) = cluster.health_checks
    assert check.http_health_check.path == "/readyz"
    # A misspelt field is an error, not ignored.
    document = yaml.safe_load(ENVOY.read_text(encoding="utf-8"))
    document["static_resources"]["clusters"][0]["lb_polciy"] = "ROUND_ROBIN"
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    with pytest.raises(Exception, match="lb_polciy"):
        ParseDict(document, bootstrap_pb2.Bootstrap())


def test_gpu_override_reserves_an_nvidia_gpu_for_ollama() -> None:
    services = stack((COMPOSE, GPU), env_defaults())["services"]
    (device,) = services["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    count = stack((COMPOSE, GPU), {"OLLAMA_GPU_COUNT": "1"})["services"]["ollama"]
    assert count["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "1"
    assert "deploy" not in services["api"], "the api image is CPU-only"


# --- the health-check commands, run against a real server -----------------------------------


def _run_check(test: list[str], port: int) -> subprocess.CompletedProcess[str]:
    assert test[:2] == ["CMD", "python"]
    argv = [sys.executable, *[arg.replace(":8080/", f":{port}/") for arg in test[2:]]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def api_healthcheck() -> Iterator[list[str]]:
    yield stack((COMPOSE,), {})["services"]["api"]["healthcheck"]["test"]


def test_api_healthcheck_passes_only_when_the_service_is_ready(
    ollama_double: OllamaDouble, api_healthcheck: list[str]
) -> None:
    with running_server(ollama_host=ollama_double.url, models="sentiment-cnn-int8") as server:
        assert _run_check(api_healthcheck, server.port).returncode == 0
        ollama_double.set_models([])  # the guard model is gone: /readyz says 503
        failed = _run_check(api_healthcheck, server.port)
        assert failed.returncode != 0 and "503" in failed.stderr
        ollama_double.set_models(["llama-guard3:1b", "llama3.2:1b"])
        assert _run_check(api_healthcheck, server.port).returncode == 0
    assert _run_check(api_healthcheck, server.port).returncode != 0  # stopped


def test_a_one_shot_pulls_the_chat_model_the_api_asks_for() -> None:
    for env, model in (({}, "llama3.2:1b"), ({"CHAT_MODEL": "llama3.2:3b"}, "llama3.2:3b")):
        services = stack((COMPOSE,), env)["services"]
        pull, api = services["chat-model"], services["api"]
        assert pull["environment"]["CHAT_MODEL"] == api["environment"]["CHAT_MODEL"] == model
        assert pull["image"] == services["ollama"]["image"] and pull["restart"] == "no"
        assert api["depends_on"]["chat-model"]["condition"] == "service_completed_successfully"
    # The pull command pulls exactly that model, and nothing when chat is switched off.
    script = stack((COMPOSE,), {})["services"]["chat-model"]["entrypoint"][-1]
    for model, pulls in (("llama3.2:1b", "pull llama3.2:1b"), ("", "")):
        done = subprocess.run(
            ["sh", "-c", script.replace("ollama pull", "echo pull")],
            env={"CHAT_MODEL": model, "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            check=True,
        )
        assert done.stdout.strip() == pulls
    off = stack((COMPOSE,), {"CHAT_MODEL": ""})["services"]["api"]["environment"]
    assert off["CHAT_MODEL"] == ""
