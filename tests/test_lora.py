"""LoRA adapters on the sentiment CNN: the low-rank update is the only change to the base,
artifacts round-trip and are refused on the wrong base, mixed batches equal one model at a
time, merging changes nothing but speed, and the group-aware split keeps siblings apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.models.adapters import ADAPTER_WEIGHTS, read_adapter, write_adapter
from service.models.artifacts import CARD, PACKAGE_ARTIFACTS, ArtifactError
from service.models.cnn import CNNConfig, SentimentCNN
from service.models.lora import BASE_ROW, CNNAdapter, LoRAConfig, MultiAdapterCNN, adapted_logits
from service.models.registry import LoadedModel, ModelRegistry, UnknownModelError
from service.training.hyperbole import (
    AdaptedCNN,
    Sentence,
    group_bootstrap,
    group_split,
    read_hyperbole,
    trainable,
)
from service.training.train import TrainConfig, train

SHIPPED = PACKAGE_ARTIFACTS / "adapters" / "hyperbole-lora"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hypo_hyperbole.jsonl.gz"
SMALL = CNNConfig(vocab_size=300, sequence_length=40, embed_dim=16, filters=8, hidden=8)
TEXTS = [
    "I have told you a million times to close the door.",
    "This bag weighs a ton.",
    "The film was fine.",
    "It rained on Tuesday.",
    "Best day of my entire life, ever!",
]


def _small_base(seed: int = 0) -> SentimentCNN:
    torch.manual_seed(seed)
    return SentimentCNN(SMALL).eval()


def _ids(n: int = 6, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, SMALL.vocab_size, (n, SMALL.sequence_length), generator=generator)


def _trained_adapter(base: SentimentCNN, seed: int) -> CNNAdapter:
    """An adapter whose every factor is non-zero (as after training)."""
    torch.manual_seed(seed)
    adapter = CNNAdapter(base.config, LoRAConfig(rank=2, alpha=4.0), torch.arange(0, 200))
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0, 0.3)
    return adapter.eval()


def test_with_B_at_zero_the_adapter_equals_the_base() -> None:
    base = _small_base()
    adapter = _trained_adapter(base, seed=3)
    with torch.no_grad():  # the base's own head, so only the low-rank updates can differ
        adapter.head.weight.copy_(base.output.weight)
        adapter.head.bias.copy_(base.output.bias)
    ids = _ids()
    with torch.inference_mode():
        assert not torch.allclose(adapted_logits(base, adapter, ids), base(ids), atol=1e-4)
    with torch.no_grad():
        for name in ("embedding_B", "conv1_B", "conv2_B", "dense_B"):
            getattr(adapter, name).zero_()
    with torch.inference_mode():
        assert torch.equal(adapted_logits(base, adapter, ids), base(ids))


def test_a_new_adapter_starts_as_the_base_plus_its_head() -> None:
    base = _small_base()
    adapter = CNNAdapter(base.config, LoRAConfig(), torch.arange(0, 50)).eval()
    ids = _ids()
    with torch.inference_mode():
        pooled = torch.relu(base.dense(base.features(ids)))
        assert torch.allclose(
            adapted_logits(base, adapter, ids), adapter.head(pooled).squeeze(-1), atol=1e-6
        )


def test_embedding_update_covers_only_the_training_tokens() -> None:
    base = _small_base()
    adapter = _trained_adapter(base, seed=4)
    full = adapter.dense_embedding_A()
    assert full.shape == (SMALL.vocab_size, 2)
    assert torch.count_nonzero(full[200:]) == 0 and torch.count_nonzero(full[:200]) > 0


def test_training_moves_only_the_adapter() -> None:
    base = _small_base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    ids, labels = _ids(64, seed=5), torch.randint(0, 2, (64,))
    adapter = CNNAdapter(base.config, LoRAConfig(rank=2, alpha=4.0), ids.unique())
    model = AdaptedCNN(base, adapter)
    assert (
        trainable(model) == adapter.trainable_params() < sum(p.numel() for p in base.parameters())
    )
    start = {k: v.clone() for k, v in adapter.state_dict().items()}
    config = TrainConfig(epochs=2, batch_size=16, max_lr=1e-2)
    train(model, ids, labels, ids, labels, config, desc="t", log=lambda _: None)
    for key, value in base.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(adapter.conv1_B, start["conv1_B"])


def test_mixed_batch_equals_each_model_served_alone() -> None:
    base = _small_base()
    first, second = _trained_adapter(base, seed=6), _trained_adapter(base, seed=7)
    multi = MultiAdapterCNN(base)
    index_of = {"first": multi.add(first), "second": multi.add(second)}
    ids = _ids(9, seed=8)
    rows = ["base", "first", "second", "first", "base", "second", "second", "base", "first"]
    index = torch.tensor([BASE_ROW if r == "base" else index_of[r] for r in rows])
    with torch.inference_mode():
        mixed = multi(ids, index)
        alone = {
            "base": base(ids),
            "first": adapted_logits(base, first, ids),
            "second": adapted_logits(base, second, ids),
        }
    for row, which in enumerate(rows):
        assert mixed[row] == pytest.approx(float(alone[which][row]), abs=1e-5), (row, which)


def test_merged_copy_computes_the_same_function() -> None:
    base = _small_base()
    adapter = _trained_adapter(base, seed=9)
    merged = SentimentCNN(SMALL)
    merged.load_state_dict(adapter.merged_state(base))
    ids = _ids()
    with torch.inference_mode():
        assert torch.allclose(merged.eval()(ids), adapted_logits(base, adapter, ids), atol=1e-4)


def test_adapter_shape_must_match_the_base() -> None:
    other = CNNConfig(vocab_size=300, sequence_length=40, embed_dim=32, filters=8, hidden=8)
    adapter = CNNAdapter(other, LoRAConfig(), torch.arange(10))
    with pytest.raises(ValueError, match="another shape"):
        MultiAdapterCNN(_small_base()).add(adapter)


# --- artifacts --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model() -> LoadedModel:
    return LoadedModel(PACKAGE_ARTIFACTS / "sentiment-cnn")


def _copy_shipped(tmp_path: Path) -> Path:
    folder = tmp_path / "hyperbole-lora"
    shutil.copytree(SHIPPED, folder)
    return folder


def test_shipped_adapter_is_small_and_names_its_base(base_model: LoadedModel) -> None:
    card = json.loads((SHIPPED / CARD).read_text())
    assert (SHIPPED / ADAPTER_WEIGHTS).stat().st_size < 200_000
    assert card["base"]["weights_sha256"] == base_model.card["weights_sha256"]
    assert card["labels"] == ["literal", "hyperbole"]
    assert card["params"] <= 0.02 * card["comparison"]["full_finetune"]["trainable_params"]
    # The card's figures are the served artifact's, and the comparison is complete.
    assert card["test"]["accuracy"] == card["comparison"]["adapter"]["test_accuracy"]
    assert set(card["comparison"]) == {"adapter", "full_finetune", "scratch", "majority_class"}
    margin = card["adapter_minus_majority"]
    low, high = margin["ci95_points"]
    assert low <= margin["accuracy_points"] <= high
    majority = card["comparison"]["majority_class"]["test_accuracy"]
    expected = round(100 * (card["test"]["accuracy"] - majority), 1)
    assert margin["accuracy_points"] == pytest.approx(expected, abs=0.11)


def test_adapter_round_trips_exactly(tmp_path: Path, base_model: LoadedModel) -> None:
    shipped = read_adapter(SHIPPED, base_model.card)
    pinned = write_adapter(tmp_path / "copy", shipped.adapter)
    card = {**shipped.card, **pinned}
    (tmp_path / "copy" / CARD).write_text(json.dumps(card))
    again = read_adapter(tmp_path / "copy", base_model.card)
    for key, value in shipped.adapter.state_dict().items():
        assert torch.equal(value, again.adapter.state_dict()[key]), key
    assert pinned["weights_sha256"] == shipped.card["weights_sha256"]  # byte-identical file


def test_an_adapter_for_another_base_is_refused(tmp_path: Path, base_model: LoadedModel) -> None:
    folder = _copy_shipped(tmp_path)
    card = json.loads((folder / CARD).read_text())
    card["base"]["weights_sha256"] = "0" * 64
    (folder / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="was trained on 'sentiment-cnn'"):
        read_adapter(folder, base_model.card)


def test_a_changed_or_missing_adapter_file_is_refused(
    tmp_path: Path, base_model: LoadedModel
) -> None:
    folder = _copy_shipped(tmp_path)
    weights = folder / ADAPTER_WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        read_adapter(folder, base_model.card)
    weights.unlink()
    with pytest.raises(ArtifactError, match="missing adapter.safetensors"):
        read_adapter(folder, base_model.card)


def test_registry_discovers_adapters_and_serves_mixed_batches(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    adapters.mkdir()
    shutil.copytree(SHIPPED, adapters / "hyperbole-lora")
    # A second adapter, added without code: the same weights under another name.
    shutil.copytree(SHIPPED, adapters / "exaggeration")
    card = json.loads((adapters / "exaggeration" / CARD).read_text())
    (adapters / "exaggeration" / CARD).write_text(json.dumps({**card, "name": "exaggeration"}))
    registry = ModelRegistry.load(
        ["sentiment-cnn", "hyperbole-lora", "exaggeration"], adapters_root=adapters
    )
    assert registry.names() == ["sentiment-cnn", "hyperbole-lora", "exaggeration"]
    info = registry.info("exaggeration")
    assert info.base == "sentiment-cnn" and info.adapter is not None
    assert {k: info.adapter[k] for k in ("rank", "alpha", "merged")} == {
        "rank": 4,
        "alpha": 8.0,
        "merged": False,
    }
    assert info.adapter["test_auc"] == card["adapter_test_auc"]["auc"]
    assert registry.batch_group("hyperbole-lora") == "sentiment-cnn"
    names = ["sentiment-cnn", "hyperbole-lora", "exaggeration", "hyperbole-lora", "sentiment-cnn"]
    mixed = registry.predict_mixed(list(zip(names, TEXTS, strict=True)))
    for name, text, prediction in zip(names, TEXTS, mixed, strict=True):
        alone = registry.predict(name, [text])[0]
        assert prediction.label == alone.label
        assert prediction.score == pytest.approx(alone.score, abs=1e-5)
    assert {p.label for p in mixed[:1]} <= {"negative", "positive"}
    assert set(mixed[1].probabilities) == {"literal", "hyperbole"}
    with pytest.raises(UnknownModelError):
        registry.get("no-such-adapter")


def test_merged_adapter_answers_like_the_shared_one(tmp_path: Path) -> None:
    shared = ModelRegistry.load(["hyperbole-lora"])
    merged = ModelRegistry.load(["hyperbole-lora"], merge=["hyperbole-lora"])
    assert merged.batch_group("hyperbole-lora") == "hyperbole-lora"
    merged_info = merged.info("hyperbole-lora").adapter
    assert merged_info is not None and merged_info["merged"] is True
    assert merged_info == {**(shared.info("hyperbole-lora").adapter or {}), "merged": True}
    for a, b in zip(
        shared.predict("hyperbole-lora", TEXTS),
        merged.predict("hyperbole-lora", TEXTS),
        strict=True,
    ):
        assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-4)
    with pytest.raises(UnknownModelError):
        ModelRegistry.load(["hyperbole-lora"], merge=["no-such-adapter"])


def test_an_adapter_on_a_base_that_was_retrained_is_refused_at_load(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(PACKAGE_ARTIFACTS / "sentiment-cnn", root / "sentiment-cnn")
    shutil.copytree(SHIPPED, root / "adapters" / "hyperbole-lora")
    card = json.loads((root / "sentiment-cnn" / CARD).read_text())
    (root / "sentiment-cnn" / CARD).write_text(json.dumps({**card, "weights_sha256": "f" * 64}))
    with pytest.raises(ArtifactError):
        ModelRegistry.load(root=root)


# --- data -------------------------------------------------------------------------------------


def test_group_split_keeps_each_group_on_one_side_and_is_seeded() -> None:
    rows = read_hyperbole(DATA)
    split = group_split(rows, seed=1337)
    sides = [{r.group for r in part} for part in (split.train, split.validation, split.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert sum(len(p) for p in (split.train, split.validation, split.test)) == len(rows)
    assert group_split(rows, seed=1337) == split
    assert group_split(rows, seed=1) != split


def test_group_bootstrap_interval_contains_the_difference() -> None:
    rows = [Sentence("x", 0, g) for g in range(50) for _ in range(3)]
    groups = [r.group for r in rows]
    a = torch.tensor([1.0 if i % 3 else 0.0 for i in range(len(rows))]).numpy()
    b = torch.zeros(len(rows)).numpy()
    point, low, high = group_bootstrap(groups, a, b, seed=0)
    assert point == pytest.approx(2 / 3)
    assert low <= point <= high and high - low < 1e-9  # every group is alike: no spread
    a[:30] = 0.0
    point, low, high = group_bootstrap(groups, a, b, seed=0)
    assert low < point < high


def test_the_shipped_adapter_ranks_hyperboles_above_chance_as_its_card_says(
    base_model: LoadedModel,
) -> None:
    from service.models.registry import AdapterGroup, AdapterModel
    from service.training.hyperbole import roc_auc

    card = json.loads((SHIPPED / CARD).read_text())
    test = group_split(read_hyperbole(DATA), seed=card["data"]["seed"]).test
    served = AdapterModel(read_adapter(SHIPPED, base_model.card), AdapterGroup(base_model))
    scores = served.predict_proba([r.text for r in test])
    labels = [r.label for r in test]
    auc = roc_auc(np.array(scores), np.array(labels))
    assert auc == pytest.approx(card["adapter_test_auc"]["auc"], abs=1e-4)
    assert card["comparison"]["adapter"]["test_auc"] == card["adapter_test_auc"]["auc"]
    assert card["adapter_test_auc"]["ci95"][0] > 0.5  # the interval leaves chance out
    # Not one answer for every sentence: the threshold lets it say "hyperbole" too.
    predicted = {p.label for p in served.predict([r.text for r in test])}
    assert predicted == {"literal", "hyperbole"}
