"""The distilled student: its loss, its served (folded, int8-embedding) form, its artifact."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from service.models.artifacts import PACKAGE_ARTIFACTS, ArtifactError
from service.models.registry import LoadedModel, ModelRegistry
from service.models.student import (
    OOV_ID,
    PAD_ID,
    POOLS,
    FoldedStudent,
    StudentClassifier,
    StudentConfig,
    student_tensors,
)
from service.training.distill import (
    DistillConfig,
    distill,
    distillation_loss,
    kl_over_classes,
)

STUDENT = "sentiment-student"
FIXTURE = Path(__file__).parent / "fixtures" / "imdb_test_sample.jsonl.gz"


@pytest.fixture(scope="module")
def student() -> LoadedModel:
    model = ModelRegistry.load([STUDENT]).get(STUDENT)
    assert isinstance(model, LoadedModel)
    return model


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    with gzip.open(FIXTURE, "rt") as handle:
        return [json.loads(line) for line in handle]


def _binary_kl(teacher_logit: float, student_logit: float, t: float) -> float:
    p = 1 / (1 + math.exp(-teacher_logit / t))
    q = 1 / (1 + math.exp(-student_logit / t))
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_the_kl_term_is_over_each_reviews_two_classes():
    student = torch.tensor([2.0, -1.0, 0.5, 4.0])
    teacher = torch.tensor([-3.0, 5.0, 0.5, 1.0])
    kl = kl_over_classes(student, teacher, 10.0)
    expected = [
        _binary_kl(t, s, 10.0) for s, t in zip(student.tolist(), teacher.tolist(), strict=True)
    ]
    assert kl.tolist() == pytest.approx(expected, rel=1e-5)
    assert kl[2] == pytest.approx(0.0, abs=1e-7)  # same logits: nothing to learn
    # A review alone has the KL it has in any batch: a softmax across the batch would make a
    # batch of one exactly zero (one value softmaxes to 1) and tie every row to the others.
    for i in range(len(student)):
        alone = kl_over_classes(student[i : i + 1], teacher[i : i + 1], 10.0)
        assert float(alone) == pytest.approx(float(kl[i]), rel=1e-6)
        assert float(alone) > 0 or i == 2
    shuffled = torch.tensor([3, 0, 2, 1])
    assert kl_over_classes(student[shuffled], teacher[shuffled], 10.0).tolist() == pytest.approx(
        kl[shuffled].tolist(), rel=1e-6
    )


def test_the_loss_weighs_bce_on_labelled_rows_and_kl_times_t_squared():
    config = DistillConfig(temperature=10.0, alpha=0.1)
    student = torch.tensor([1.0, -2.0, 0.3])
    teacher = torch.tensor([3.0, -1.0, -2.0])
    labels = torch.tensor([1, 0, 1])
    labelled = torch.tensor([True, False, True])
    loss = distillation_loss(student, teacher, labels, labelled, config)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        student[labelled], labels[labelled].float()
    )
    kl = kl_over_classes(student, teacher, 10.0).mean() * 100
    assert float(loss) == pytest.approx(float(0.1 * bce + 0.9 * kl), rel=1e-6)
    # The unlabelled row's label does not count: flipping it changes nothing.
    flipped = torch.tensor([1, 1, 1])
    assert float(distillation_loss(student, teacher, flipped, labelled, config)) == float(loss)


def test_a_few_distillation_steps_on_synthetic_data_lower_the_loss():
    torch.manual_seed(0)
    config = StudentConfig(vocab_size=50, sequence_length=12)
    ids = torch.randint(2, 50, (256, 12))
    word_score = torch.randn(50) * 3
    teacher = word_score[ids].mean(dim=1) * 4  # a "teacher" logit per synthetic text
    labels = (teacher > 0).long()
    labelled = torch.arange(256) < 32
    # One epoch of 16 steps, validated once at its end: the weights after those steps.
    dcfg = DistillConfig(epochs=1, batch_size=16, max_lr=1e-2, checks_per_epoch=1)

    def loss_of(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return float(distillation_loss(model(ids), teacher, labels, labelled, dcfg))

    torch.manual_seed(0)
    model = StudentClassifier(config)
    before = loss_of(model)
    result = distill(
        model, ids, labels, labelled, teacher, ids[:64], labels[:64], dcfg, log=lambda _: None
    )
    after = loss_of(result.model)
    assert after < 0.7 * before, (before, after)
    assert result.best_val_accuracy > 0.7


@pytest.mark.parametrize("pool", POOLS)
def test_the_folded_form_computes_the_trained_network(pool):
    torch.manual_seed(1)
    config = StudentConfig(vocab_size=300, sequence_length=40, pool=pool)
    model = StudentClassifier(config).eval()
    with torch.no_grad():
        model.embedding.weight.normal_()
    tensors = student_tensors(model)
    assert tensors["embedding.q"].dtype == torch.int8
    # The same network with the int8 embedding dequantized, computed layer by layer.
    dequantized = tensors["embedding.q"].float() * tensors["embedding.scale"].float()[:, None]
    with torch.no_grad():
        model.embedding.weight.copy_(dequantized)
    ids = torch.randint(2, 300, (7, 40))
    ids[1:, 25:] = PAD_ID  # texts shorter than the row, as the vectorizer pads them
    ids[2, 3:] = PAD_ID
    ids[3] = PAD_ID  # no token at all
    ids[4, :6] = OOV_ID
    with torch.inference_mode():
        student = FoldedStudent(config, tensors)
        folded = student(ids)
        assert folded == pytest.approx(model(ids), abs=1e-5)
        # The copy row past the vocabulary (what the cascade's clamped ids read) is the OOV
        # row, and counts as a token like it.
        clamped = torch.where(ids == OOV_ID, config.vocab_size, ids)
        assert torch.equal(student(clamped), folded)


def test_the_mean_is_over_the_texts_own_tokens_not_its_padding():
    torch.manual_seed(2)
    config = StudentConfig(vocab_size=100, sequence_length=60, pool="max+mean")
    model = StudentClassifier(config).eval()
    with torch.no_grad():
        model.embedding.weight.normal_()
    text = torch.randint(2, 100, (1, 12))
    short_row = torch.cat([text, torch.zeros(1, 28, dtype=torch.long)], dim=1)
    long_row = torch.cat([text, torch.zeros(1, 48, dtype=torch.long)], dim=1)
    folded = FoldedStudent(config, student_tensors(model))
    with torch.inference_mode():
        # Padded to 40 or to 60 tokens: the same text, the same score, trained and folded.
        assert float(model(short_row)) == pytest.approx(float(model(long_row)), abs=1e-6)
        assert float(folded(short_row)) == pytest.approx(float(folded(long_row)), abs=1e-6)
        # And the mean does count: repeating one word of the text moves the score.
        repeated = long_row.clone()
        repeated[0, 12:30] = text[0, 0]
        assert abs(float(model(repeated)) - float(model(long_row))) > 1e-4


def test_a_card_config_without_a_pool_is_the_max_pool_it_was_trained_with():
    # Artifacts built before the pool was configurable name no pool in their card.
    config = StudentConfig(**{"vocab_size": 300, "sequence_length": 40})
    assert config.pool == "max"
    assert config.pooled_width == config.token_hidden


def test_an_unknown_pool_is_refused():
    with pytest.raises(ValueError, match="pool"):
        StudentConfig(pool="mean")


def test_the_student_gives_the_same_answer_alone_and_in_a_batch(student, sample):
    texts = [row["text"] for row in sample[:24]] + ["Great.", "Awful, just awful."]
    together = student.predict(texts)
    alone = [student.predict([text])[0] for text in texts]
    assert together == alone


def test_the_student_card_meets_the_goals(student, sample):
    card = student.card
    teacher = ModelRegistry.load(["sentiment-cnn"]).info("sentiment-cnn")
    assert card["teacher"]["name"] == "sentiment-cnn"
    assert card["teacher"]["version"] == teacher.version
    assert card["teacher"]["weights_sha256"] == teacher.card["weights_sha256"]
    assert card["command"].startswith("python -m service train")
    assert card["test"]["n"] == 25_000
    assert student.info.size_bytes <= 600_000  # everything in the folder, card included
    assert card["params"] == student.info.params < 400_000
    comparison = card["comparison"]
    assert comparison["distilled_accuracy"] == card["test"]["accuracy"]
    assert comparison["teacher_accuracy"] == teacher.test_accuracy
    assert card["test"]["accuracy"] >= teacher.test_accuracy - 0.02
    assert comparison["no_teacher_accuracy"] < card["test"]["accuracy"]
    assert card["distillation"]["labelled_reviews"] == 2_500
    assert card["distillation"]["temperature"] == 10.0
    # Its vocabulary is the teacher's first tokens (one tokenization serves the cascade).
    words = student.vectorizer.vocabulary
    assert teacher_vocabulary()[: len(words)] == words


def teacher_vocabulary() -> list[str]:
    return json.loads((PACKAGE_ARTIFACTS / "sentiment-cnn" / "vocab.json").read_text())[
        "vocabulary"
    ]


def test_a_changed_or_incomplete_student_is_refused(tmp_path):
    folder = tmp_path / STUDENT
    shutil.copytree(PACKAGE_ARTIFACTS / STUDENT, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["embedding.q"][5, 0] += 1
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ArtifactError, match="SHA-256"):
        ModelRegistry.load([STUDENT], root=tmp_path)
    shutil.rmtree(folder)
    shutil.copytree(PACKAGE_ARTIFACTS / STUDENT, folder)
    (folder / "vocab.json").unlink()
    with pytest.raises(ArtifactError, match="missing vocab.json"):
        ModelRegistry.load([STUDENT], root=tmp_path)
