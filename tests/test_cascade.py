"""The student-then-teacher cascade: who answers, batching, its card and its refusals."""

from __future__ import annotations

import copy
import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from service.models.artifacts import PACKAGE_ARTIFACTS, ArtifactError
from service.models.cascade import CascadeModel
from service.models.registry import LoadedModel, ModelRegistry
from tests.helpers import ServerProcess, h2_client, running_server
from tests.ollama_double import OllamaDouble

CASCADE, STUDENT, TEACHER = "sentiment-cascade", "sentiment-student", "sentiment-cnn-int8"
FIXTURE = Path(__file__).parent / "fixtures" / "imdb_test_sample.jsonl.gz"


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load([CASCADE, STUDENT, TEACHER])


@pytest.fixture(scope="module")
def texts() -> list[str]:
    with gzip.open(FIXTURE, "rt") as handle:
        return [json.loads(line)["text"] for line in handle][:120]


def _cascade(registry: ModelRegistry) -> CascadeModel:
    model = registry.get(CASCADE)
    assert isinstance(model, CascadeModel)
    return model


def _members(registry: ModelRegistry) -> tuple[LoadedModel, LoadedModel]:
    student, teacher = registry.get(STUDENT), registry.get(TEACHER)
    assert isinstance(student, LoadedModel) and isinstance(teacher, LoadedModel)
    return student, teacher


def _check_escalation(
    cascade: CascadeModel, student: LoadedModel, teacher: LoadedModel, texts: list[str]
) -> int:
    """Every text below the threshold (student confidence) has the int8 CNN's answer, every
    other the student's; returns how many escalated."""
    predictions = cascade.predict(texts)
    escalated = 0
    for text, prediction in zip(texts, predictions, strict=True):
        p_student = student.predict_proba([text])[0]
        unsure = max(p_student, 1 - p_student) < cascade.threshold
        own = teacher.predict_proba([text])[0] if unsure else p_student
        assert prediction.answered_by == (TEACHER if unsure else STUDENT)
        assert prediction.probabilities["positive"] == pytest.approx(own, abs=1e-5)
        escalated += unsure
    return escalated


def test_the_cascade_escalates_exactly_the_texts_below_its_threshold(registry, texts):
    cascade = _cascade(registry)
    student, teacher = _members(registry)
    escalated = _check_escalation(cascade, student, teacher, texts)
    assert 0 < escalated < len(texts)  # the sample holds both kinds
    # The same rule at another threshold: the median student confidence sends half.
    confidences = sorted(max(p, 1 - p) for p in student.predict_proba(texts))
    card = copy.deepcopy(cascade.card)
    card["threshold"] = confidences[len(texts) // 2]
    half = CascadeModel(card, student, teacher, size_bytes=0)
    assert _check_escalation(half, student, teacher, texts) == len(texts) // 2


def test_the_student_reads_the_teachers_unknown_ids_as_its_own_oov(registry, texts):
    # The cascade clamps the teacher's ids past the student's vocabulary onto the student's
    # OOV copy; a student table without that copy takes the where() path. Both must read
    # them as the student's own tokenization does.
    cascade = _cascade(registry)
    student, _ = _members(registry)
    assert cascade._clamp_to_oov  # the shipped student keeps the copy
    ids = cascade.teacher.vectorizer(texts[:40])
    assert bool((ids >= student.vectorizer.vocab_size).any())  # the sample has such words
    own = student.predict_proba(texts[:40])
    clamped = cascade.forward_ids(ids)[0]
    card = copy.deepcopy(cascade.card)
    without_copy = CascadeModel(card, student, cascade.teacher, size_bytes=0)
    without_copy._clamp_to_oov = False
    assert torch.equal(without_copy.forward_ids(ids)[0], clamped)
    student_only = clamped[~cascade.forward_ids(ids)[1]]
    expected = torch.tensor(own, dtype=torch.float64)[~cascade.forward_ids(ids)[1]]
    torch.testing.assert_close(student_only, expected, rtol=0, atol=1e-6)


def test_the_cascade_gives_the_same_answer_alone_and_in_a_batch(registry, texts):
    cascade = _cascade(registry)
    together = cascade.predict(texts[:40])
    alone = [cascade.predict([text])[0] for text in texts[:40]]
    assert [p.answered_by for p in together] == [p.answered_by for p in alone]
    assert [p.label for p in together] == [p.label for p in alone]
    for a, b in zip(together, alone, strict=True):
        assert a.probabilities["positive"] == pytest.approx(b.probabilities["positive"], abs=1e-5)


def test_the_cascade_card_records_threshold_and_figures(registry):
    cascade = _cascade(registry)
    card = cascade.card
    teacher = registry.info(TEACHER)
    assert card["student"]["weights_sha256"] == registry.info(STUDENT).card["weights_sha256"]
    assert card["teacher"]["weights_sha256"] == teacher.card["weights_sha256"]
    assert "validation" in card["threshold_rule"] and card["validation"]["n"] == 5_000
    assert card["test"]["n"] == 25_000
    assert card["test"]["accuracy"] >= teacher.test_accuracy - 0.003
    assert 0 < card["test"]["escalation_rate"] < 0.3
    info = cascade.info.to_dict()
    assert info["cascade"]["escalation_rate"] == card["test"]["escalation_rate"]
    assert info["cascade"]["threshold"] == card["threshold"]
    assert info["test_accuracy"] == card["test"]["accuracy"]


def _copy(tmp_path: Path, *names: str) -> None:
    for name in names:
        shutil.copytree(PACKAGE_ARTIFACTS / name, tmp_path / name)


def test_a_cascade_over_other_weights_is_refused(tmp_path):
    _copy(tmp_path, CASCADE, STUDENT, TEACHER)
    card_path = tmp_path / CASCADE / "card.json"
    card = json.loads(card_path.read_text())
    card["student"]["weights_sha256"] = "0" * 64  # built with another student
    card_path.write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="student"):
        ModelRegistry.load([CASCADE], root=tmp_path)


def test_a_cascade_in_a_folder_of_another_name_is_refused(tmp_path):
    _copy(tmp_path, STUDENT, TEACHER)
    shutil.copytree(PACKAGE_ARTIFACTS / CASCADE, tmp_path / "sentiment-fast")
    with pytest.raises(ArtifactError, match=f"holds a card named '{CASCADE}'"):
        ModelRegistry.load(["sentiment-fast"], root=tmp_path)


def test_a_cascade_with_a_changed_or_missing_member_is_refused(tmp_path):
    _copy(tmp_path, CASCADE, STUDENT, TEACHER)
    weights = tmp_path / TEACHER / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ArtifactError, match="SHA-256"):
        ModelRegistry.load([CASCADE], root=tmp_path)
    shutil.rmtree(tmp_path / STUDENT)
    with pytest.raises(ArtifactError, match="missing card.json"):
        ModelRegistry.load([CASCADE], root=tmp_path)


def test_a_cascade_alone_loads_its_members_privately():
    registry = ModelRegistry.load([CASCADE])
    assert registry.names() == [CASCADE]
    assert registry.predict(CASCADE, ["A wonderful, moving film."])[0].label == "positive"


# --- through the running server, over HTTP/2 ------------------------------------------------


@pytest.fixture(scope="module")
def server(double: OllamaDouble) -> Iterator[ServerProcess]:
    with running_server(ollama_host=double.url) as running:
        yield running


@pytest.mark.usefixtures("fresh_double")
async def test_classify_with_the_cascade_over_http2_names_who_answered(
    server: ServerProcess, registry: ModelRegistry, texts: list[str]
) -> None:
    cascade = _cascade(registry)
    expected = cascade.predict(texts[:16])
    assert {p.answered_by for p in expected} == {STUDENT, TEACHER}
    async with h2_client(server) as http:
        response = await http.post("/v1/classify", json={"texts": texts[:16], "model": CASCADE})
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model"] == {"name": CASCADE, "version": cascade.info.version}
        for result, prediction in zip(answer["results"], expected, strict=True):
            assert result["answered_by"] == prediction.answered_by
            assert result["label"] == prediction.label
            assert result["screens"]["input"]["safe"] and result["screens"]["output"]["safe"]
        models = (await http.get("/v1/models")).json()["models"]
    listed = {m["name"]: m for m in models}
    assert listed[CASCADE]["cascade"] == {
        "student": STUDENT,
        "teacher": TEACHER,
        "threshold": cascade.threshold,
        "escalation_rate": cascade.card["test"]["escalation_rate"],
        "validation_escalation_rate": cascade.card["validation"]["escalation_rate"],
    }
    assert listed[CASCADE]["test_accuracy"] == cascade.card["test"]["accuracy"]
    assert (
        "answered_by" not in ((await _classify_default(server))["results"][0])
    )  # single models do not name themselves per result


async def _classify_default(server: ServerProcess) -> dict:
    async with h2_client(server) as http:
        response = await http.post("/v1/classify", json={"text": "A fine film."})
        assert response.status_code == 200
        return response.json()
