"""The shipped artifacts: integrity checks, real predictions, quantized agreement."""

import gzip
import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from service.models.artifacts import (
    NAMES,
    PACKAGE_ARTIFACTS,
    ArtifactError,
    read_artifact,
    sha256_file,
)
from service.models.registry import LoadedModel, ModelRegistry, UnknownModelError

FIXTURE = Path(__file__).parent / "fixtures" / "imdb_test_sample.jsonl.gz"
CASCADE = "sentiment-cascade"  # a card over two other artifacts, no weights of its own
WEIGHTED = [name for name in NAMES if name != CASCADE]
CLEAR_REVIEWS = [
    (
        "This movie was absolutely wonderful. A brilliant, moving story with superb acting; "
        "I loved every minute and would happily watch it again.",
        "positive",
    ),
    (
        "One of the best films I have seen in years: funny, touching and beautifully made. "
        "A true masterpiece, highly recommended.",
        "positive",
    ),
    (
        "Awful. The worst movie I have ever seen: boring, badly acted, and the plot made no "
        "sense at all. A complete waste of time and money.",
        "negative",
    ),
    (
        "Terrible script, dreadful acting and a painfully dull story. I hated it and walked "
        "out halfway through. Avoid this mess.",
        "negative",
    ),
]


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load()


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    with gzip.open(FIXTURE, "rt") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def sample_predictions(registry, sample) -> dict[str, list[int]]:
    """Each model's predicted class (1: positive) for every review of the sample."""
    texts = [row["text"] for row in sample]
    return {
        name: [int(p.label == "positive") for p in registry.predict(name, texts)] for name in NAMES
    }


def _accuracy(predicted: list[int], sample: list[dict]) -> float:
    labels = [row["label"] for row in sample]
    return sum(a == b for a, b in zip(predicted, labels, strict=True)) / len(labels)


def _sampling_tolerance(accuracy: float, n: int, population: int) -> float:
    """Three standard errors of an accuracy measured on ``n`` reviews drawn from the
    ``population`` the card was measured on (without replacement): a sample of 300 from
    25,000 test reviews at 0.877 gives 0.057."""
    variance = accuracy * (1 - accuracy) / n * (population - n) / (population - 1)
    return 3 * math.sqrt(variance)


def _positive_probability(model: LoadedModel, texts: list[str]) -> list[float]:
    """P(positive) computed here from the module's raw output, by the architecture the
    card names: the CNN has one logit (sigmoid), the Switch Transformer two (softmax)."""
    with torch.inference_mode():
        out = model.module(model.vectorizer(texts))
    if model.card["architecture"] in ("cnn", "student"):
        assert out.shape == (len(texts),)
        return [1 / (1 + math.exp(-float(logit))) for logit in out]
    assert model.card["architecture"] == "switch-transformer" and out.shape == (len(texts), 2)
    return [
        math.exp(float(pos)) / (math.exp(float(neg)) + math.exp(float(pos))) for neg, pos in out
    ]


def test_all_artifacts_ship_small_with_complete_cards():
    total = 0
    for name in WEIGHTED:
        card, _ = read_artifact(PACKAGE_ARTIFACTS / name)
        for key in (
            "architecture",
            "config",
            "params",
            "size_bytes",
            "command",
            "weights_sha256",
            "data",
            "test",
            "version",
        ):
            assert key in card, (name, key)
        assert card["name"] == name
        assert card["test"]["n"] == 25_000
        total += sum(p.stat().st_size for p in (PACKAGE_ARTIFACTS / name).iterdir())
    assert total <= 25 * 1024 * 1024


def test_accuracy_targets_recorded_in_the_cards(registry, sample, sample_predictions):
    fp32 = registry.info("sentiment-cnn")
    int8, int4 = registry.info("sentiment-cnn-int8"), registry.info("sentiment-cnn-int4")
    assert fp32.test_accuracy >= 0.87
    assert int8.test_accuracy >= fp32.test_accuracy - 0.005
    assert int4.test_accuracy >= fp32.test_accuracy - 0.015
    assert registry.info("switch-moe").test_accuracy >= 0.86
    # The cards' figures are for the full test set, which is not shipped: the weights are
    # measured again on the sample, and must reach each target within sampling error.
    reviews = len(sample)
    measured = {name: _accuracy(sample_predictions[name], sample) for name in NAMES}
    for name, target in (("sentiment-cnn", 0.87), ("switch-moe", 0.86)):
        tolerance = _sampling_tolerance(target, reviews, 25_000)
        assert measured[name] >= target - tolerance, (name, measured)
    # A quantized variant is measured on the same reviews as fp32, so only the reviews where
    # the two disagree can move the difference: three standard errors of it (McNemar).
    for name, allowed in (("sentiment-cnn-int8", 0.005), ("sentiment-cnn-int4", 0.015)):
        disagreements = sum(
            a != b
            for a, b in zip(
                sample_predictions[name], sample_predictions["sentiment-cnn"], strict=True
            )
        )
        paired = 3 * math.sqrt(disagreements) / reviews
        assert measured[name] >= measured["sentiment-cnn"] - allowed - paired, (name, measured)
    weights = {n: (PACKAGE_ARTIFACTS / n / "model.safetensors").stat().st_size for n in WEIGHTED}
    assert weights["sentiment-cnn-int8"] <= 0.30 * weights["sentiment-cnn"]
    assert weights["sentiment-cnn-int4"] <= 0.18 * weights["sentiment-cnn"]
    card = registry.info("switch-moe").card
    assert len(card["test"]["expert_share"]) == 10
    assert 0.0 <= card["test"]["drop_rate"] < 1.0


@pytest.mark.parametrize("name", NAMES)
def test_shipped_models_classify_unmistakable_reviews(registry, name):
    texts = [text for text, _ in CLEAR_REVIEWS]
    predictions = registry.predict(name, texts)
    assert [p.label for p in predictions] == [label for _, label in CLEAR_REVIEWS]
    if name == CASCADE:  # its probabilities: tests/test_cascade.py
        return
    # The served probabilities are the module's own output through the right link function,
    # and label and score are read from them.
    for p, positive in zip(
        predictions, _positive_probability(registry.get(name), texts), strict=True
    ):
        assert p.probabilities["positive"] == pytest.approx(positive, abs=1e-6)
        assert p.probabilities["negative"] == pytest.approx(1 - positive, abs=1e-6)
        assert p.label == ("positive" if positive >= 0.5 else "negative")
        assert p.score == pytest.approx(max(positive, 1 - positive), abs=1e-6)


@pytest.mark.parametrize("variant", ["sentiment-cnn-int8", "sentiment-cnn-int4"])
def test_quantized_variants_agree_with_fp32_on_real_reviews(registry, sample, variant):
    texts = [row["text"] for row in sample]
    reference = [p.label for p in registry.predict("sentiment-cnn", texts)]
    quantized = [p.label for p in registry.predict(variant, texts)]
    agreement = sum(a == b for a, b in zip(reference, quantized, strict=True)) / len(texts)
    assert agreement >= 0.97, agreement


def test_fixture_sample_accuracy_is_in_line_with_the_card(registry, sample, sample_predictions):
    # The sample is drawn from the test set the cards were measured on.
    assert all(row["id"].startswith("test/") for row in sample) and len(sample) == 300
    for name in NAMES:
        test = registry.info(name).card["test"]
        accuracy = _accuracy(sample_predictions[name], sample)
        tolerance = _sampling_tolerance(test["accuracy"], len(sample), test["n"])
        assert abs(accuracy - test["accuracy"]) <= tolerance, (name, accuracy, test, tolerance)


def test_concurrent_predictions_equal_sequential_ones(registry, sample):
    texts = [row["text"] for row in sample[:40]]
    jobs = [(name, i) for name in NAMES for i in range(4)]
    expected = {(name, i): registry.predict(name, texts[i::4]) for name, i in jobs}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda job: registry.predict(job[0], texts[job[1] :: 4]), jobs * 3))
    for job, result in zip(jobs * 3, results, strict=True):
        assert result == expected[job]


def test_unknown_model_is_refused_by_name(registry):
    with pytest.raises(UnknownModelError) as info:
        registry.predict("no-such-model", ["text"])
    assert "sentiment-cnn-int8" in str(info.value)


def _copy(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(PACKAGE_ARTIFACTS / name, folder)
    return folder


def test_changed_weights_are_refused_by_the_hash_check(tmp_path):
    folder = _copy(tmp_path, "sentiment-cnn-int4")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["dense.bias"] = tensors["dense.bias"] + 1
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ArtifactError, match="SHA-256"):
        ModelRegistry.load(["sentiment-cnn-int4"], root=tmp_path)


def test_shape_mismatch_is_refused_even_with_a_matching_hash(tmp_path):
    folder = _copy(tmp_path, "sentiment-cnn-int4")
    card = json.loads((folder / "card.json").read_text())
    card["tensors"]["dense.bias"]["shape"] = [64]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="dense.bias"):
        ModelRegistry.load(["sentiment-cnn-int4"], root=tmp_path)


def test_missing_file_is_refused_clearly(tmp_path):
    folder = _copy(tmp_path, "switch-moe")
    (folder / "vocab.json").unlink()
    with pytest.raises(ArtifactError, match="missing vocab.json"):
        ModelRegistry.load(["switch-moe"], root=tmp_path)


def _vocab(folder: Path) -> dict:
    return json.loads((folder / "vocab.json").read_text())


def test_a_changed_vocabulary_is_refused_by_its_hash(tmp_path):
    folder = _copy(tmp_path, "sentiment-cnn-int8")
    vocab = _vocab(folder)
    tokens = vocab["vocabulary"]
    great, awful = tokens.index("great"), tokens.index("awful")
    tokens[great], tokens[awful] = tokens[awful], tokens[great]  # same size, other answers
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ArtifactError, match="vocab.json has SHA-256"):
        ModelRegistry.load(["sentiment-cnn-int8"], root=tmp_path)


def test_a_card_without_a_vocabulary_hash_is_refused(tmp_path):
    folder = _copy(tmp_path, "sentiment-cnn-int8")
    card = json.loads((folder / "card.json").read_text())
    del card["vocab_sha256"]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="card.json records None"):
        ModelRegistry.load(["sentiment-cnn-int8"], root=tmp_path)


def test_an_artifact_in_a_folder_of_another_name_is_refused(tmp_path):
    # The int4 artifact under the int8's name: it would be served as one name, answer as
    # another.
    shutil.copytree(PACKAGE_ARTIFACTS / "sentiment-cnn-int4", tmp_path / "sentiment-cnn-int8")
    with pytest.raises(ArtifactError, match="holds a card named 'sentiment-cnn-int4'"):
        ModelRegistry.load(["sentiment-cnn-int8"], root=tmp_path)


def test_a_vocabulary_padding_to_another_length_is_refused(tmp_path):
    folder = _copy(tmp_path, "switch-moe")
    vocab = _vocab(folder)
    vocab["sequence_length"] = 500  # the MoE has 200 position embeddings
    (folder / "vocab.json").write_text(json.dumps(vocab))
    card = json.loads((folder / "card.json").read_text())
    card["vocab_sha256"] = sha256_file(folder / "vocab.json")  # a consistent card, even so
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="pads to 500 tokens, but the model was built for 200"):
        ModelRegistry.load(["switch-moe"], root=tmp_path)


@pytest.mark.parametrize("name", [*NAMES, "hyperbole-lora"])
def test_an_empty_batch_gives_no_results(registry, name):
    assert registry.get(name).predict([]) == []


@pytest.mark.parametrize("name", NAMES)
def test_a_text_gets_the_same_answer_alone_and_in_a_batch(registry, sample, name):
    texts = [row["text"] for row in sample[:12]]
    together = registry.get(name).predict_proba(texts)
    alone = [registry.get(name).predict_proba([text])[0] for text in texts]
    assert together == pytest.approx(alone, abs=1e-5)
