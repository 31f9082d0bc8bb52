"""The Kubernetes manifests in deploy/k8s, checked without a cluster: each document against
the Kubernetes JSON schemas in strict mode (kubernetes-validate: unknown fields are errors),
then against each other, the service's Settings and the image."""

from __future__ import annotations

import copy
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from service.config import Settings
from tests.helpers import REPO

K8S = REPO / "deploy" / "k8s"
# The oldest Kubernetes these manifests are written for (the preStop `sleep` action is on by
# default from 1.30) and the newest the validator knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}


def manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_files():
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is not None:
                yield path, document


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return found


def port_number(container_spec: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container_spec["ports"] if p.get("name") == port]
    return number


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [path.name for path in manifest_files()]
    # The image it rewrites is the one the api Deployment runs.
    (image,) = kustomization["images"]
    api_image = container(find("Deployment", "gis-api"), "api")["image"]
    assert api_image.split(":")[0] == image["name"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_matches_the_kubernetes_schema(version: str) -> None:
    kinds = set()
    for path, document in documents():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = "/".join(map(str, error.path))
            pytest.fail(f"{path.name}: {where}: {error.message}")
        kinds.add((document["apiVersion"], document["kind"]))
    assert kinds == {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("batch/v1", "Job"),
        ("v1", "PersistentVolumeClaim"),
        ("policy/v1", "PodDisruptionBudget"),
    }
    # Strict: a misspelt field is an error, not silently dropped.
    broken = copy.deepcopy(find("Deployment", "gis-api"))
    container(broken, "api")["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(broken, version, strict=True)


def test_api_probes_ports_and_user() -> None:
    deployment = find("Deployment", "gis-api")
    api = container(deployment, "api")
    assert port_number(api, "http") == 8080  # the image's EXPOSE and PORT
    readiness, liveness = api["readinessProbe"]["httpGet"], api["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz" and port_number(api, readiness["port"]) == 8080
    assert liveness["path"] == "/healthz" and port_number(api, liveness["port"]) == 8080
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    # The readiness probe waits longer than one guard call may take.
    config = find("ConfigMap", "gis-config")["data"]
    assert api["readinessProbe"]["timeoutSeconds"] > float(config["GUARD_TIMEOUT"])
    # Shutdown: preStop pause + GRACEFUL_TIMEOUT fit in the grace period.
    pod = deployment["spec"]["template"]["spec"]
    pause = api["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause + float(config["GRACEFUL_TIMEOUT"]) < pod["terminationGracePeriodSeconds"]
    # The image's user (Dockerfile USER), verified by the kubelet.
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    uid, gid = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE).groups()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        int(uid),
        int(gid),
    )
    assert api["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in api["volumeMounts"]}
    assert "/tmp" in mounts, "a writable /tmp on a read-only root"
    # The HorizontalPodAutoscaler's CPU target needs a CPU request.
    assert api["resources"]["requests"]["cpu"]


def test_services_select_their_pods_and_ports() -> None:
    for service_name, deployment_name, container_name, port in (
        ("gis-api", "gis-api", "api", 8080),
        ("ollama", "ollama", "ollama", 11434),
    ):
        service, deployment = find("Service", service_name), find("Deployment", deployment_name)
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = service["spec"]["selector"]
        assert selector.items() <= template_labels.items(), service_name
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
        (service_port,) = service["spec"]["ports"]
        assert service_port["port"] == port
        the_container = container(deployment, container_name)
        assert port_number(the_container, service_port["targetPort"]) == port
    assert find("Service", "gis-api")["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c"


def test_hpa_and_disruption_budget_target_the_api() -> None:
    deployment = find("Deployment", "gis-api")
    hpa = find("HorizontalPodAutoscaler", "gis-api")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gis-api",
    }
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert hpa["minReplicas"] >= 2, "one replica down must leave one serving"
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    pdb = find("PodDisruptionBudget", "gis-api")["spec"]
    assert pdb["selector"] == deployment["spec"]["selector"]
    assert pdb["minAvailable"] < hpa["minReplicas"], "a drain must be able to proceed"


def test_configuration_is_settings_the_service_reads() -> None:
    deployment = find("Deployment", "gis-api")
    api = container(deployment, "api")
    config = find("ConfigMap", "gis-config")
    secret = find("Secret", "gis-secrets")
    assert api["envFrom"] == [{"configMapRef": {"name": "gis-config"}}]
    unknown = (set(config["data"]) | set(secret["stringData"])) - SETTINGS_ENV
    assert not unknown, f"the service reads no {sorted(unknown)}"
    # Secrets reach the container from the Secret, and only secrets are there.
    from_secret = {
        env["name"]: env["valueFrom"]["secretKeyRef"]
        for env in api["env"]
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert set(from_secret) == {"API_TOKENS", "TASK_STORE_URL"} == set(secret["stringData"])
    for name, ref in from_secret.items():
        assert ref == {"name": "gis-secrets", "key": name}
    assert not set(config["data"]) & set(secret["stringData"])

    # What the pod gets is valid configuration for the service.
    environment = {**config["data"], **secret["stringData"]}
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in environment.items()})
    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 8080, 1)
    assert settings.guard_pull is False, "the Job pulls the model, not every replica"
    assert settings.ollama_host == "http://ollama:11434"  # the ollama Service
    assert make_url(settings.task_store_url).drivername == "postgresql+asyncpg"
    assert settings.api_tokens
    assert settings.base_url == "http://gis-api:8080"  # the api Service


def test_ollama_keeps_models_on_a_volume_and_the_job_pulls_the_guard_model() -> None:
    ollama = find("Deployment", "ollama")
    pvc = find("PersistentVolumeClaim", "ollama-models")
    pod = ollama["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    (mount,) = container(ollama, "ollama")["volumeMounts"]
    assert (mount["name"], mount["mountPath"]) == (volume["name"], "/root/.ollama")
    assert "ReadWriteOnce" in pvc["spec"]["accessModes"]
    assert ollama["spec"]["strategy"]["type"] == "Recreate", "RWO volume: no overlap"
    assert ollama["spec"]["replicas"] == 1

    job = find("Job", "guard-model-pull")["spec"]
    (pull,) = job["template"]["spec"]["containers"]
    assert pull["image"] == container(ollama, "ollama")["image"]
    assert pull["command"] == ["ollama"] and pull["args"] == ["pull", "$(GUARD_MODEL)"]
    env = {e["name"]: e["valueFrom"]["configMapKeyRef"] for e in pull["env"]}
    config = find("ConfigMap", "gis-config")["data"]
    for name in ("GUARD_MODEL", "OLLAMA_HOST"):
        assert env[name] == {"name": "gis-config", "key": name} and name in config
    assert job["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")
    assert job["backoffLimit"] >= 3, "Ollama may still be starting: retry"


def test_a_job_pulls_the_chat_model_like_the_guard_model() -> None:
    guard = find("Job", "guard-model-pull")["spec"]
    chat = find("Job", "chat-model-pull")["spec"]
    (pull,) = chat["template"]["spec"]["containers"]
    # Run the job's command with a stand-in `ollama` that logs its arguments: it pulls the
    # chat model, and with CHAT_MODEL empty (chat off) succeeds without pulling.
    assert pull["command"] == ["/bin/sh", "-c"]
    with tempfile.TemporaryDirectory() as folder:
        fake, calls = Path(folder) / "ollama", Path(folder) / "calls"
        fake.write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n', encoding="utf-8")
        fake.chmod(0o755)
        for model, expected in (("llama3.2:1b", ["pull llama3.2:1b"]), ("", [])):
            env = {"PATH": f"{folder}:/usr/bin:/bin", "CALLS": str(calls), "CHAT_MODEL": model}
            done = subprocess.run(["sh", "-c", *pull["args"]], env=env, timeout=30, check=False)
            assert done.returncode == 0
            assert (calls.read_text().splitlines() if calls.exists() else []) == expected
            calls.unlink(missing_ok=True)
    env = {e["name"]: e["valueFrom"]["configMapKeyRef"] for e in pull["env"]}
    config = find("ConfigMap", "gis-config")["data"]
    assert env["CHAT_MODEL"] == {"name": "gis-config", "key": "CHAT_MODEL"}
    assert config["CHAT_MODEL"] == "llama3.2:1b"
    (guard_pull,) = guard["template"]["spec"]["containers"]
    assert pull["image"] == guard_pull["image"] and chat["backoffLimit"] == guard["backoffLimit"]
