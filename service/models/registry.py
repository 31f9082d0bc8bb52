"""Loads shipped model artifacts by name and predicts on batches of texts."""

from __future__ import annotations

import array
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from service.core.errors import ServiceError, shown
from service.models.adapters import ADAPTERS_FOLDER, AdapterArtifact, discover, read_adapter
from service.models.artifacts import (
    CARD,
    NAMES,
    PACKAGE_ARTIFACTS,
    VOCAB,
    ArtifactError,
    check_named,
    folder_size,
    read_artifact,
)
from service.models.cnn import CNNConfig, SentimentCNN
from service.models.lora import BASE_ROW, MultiAdapterCNN
from service.models.moe import MoEConfig, SwitchClassifier
from service.models.quantize import Int4SentimentCNN, Int8SentimentCNN
from service.models.student import FoldedStudent, StudentConfig
from service.models.vectorizer import Vectorizer

LABELS = ("negative", "positive")  # (score < 0.5, score >= 0.5) unless a card names others

logger = logging.getLogger(__name__)

__all__ = [
    "ArtifactError",
    "LoadedModel",
    "ModelInfo",
    "ModelRegistry",
    "Prediction",
    "UnknownModelError",
    "build_model",
]


class UnknownModelError(ServiceError, KeyError):
    """No model of that name is loaded."""

    problem = "model-not-found"

    def __init__(self, name: str, available: Sequence[str]) -> None:
        self.name = shown(name)
        self.available = sorted(available)
        super().__init__(f"no model named {self.name!r}; available: {', '.join(self.available)}")

    def __str__(self) -> str:  # for the command line; KeyError's own would quote the name
        return f"unknown model {self.name!r}; available: {', '.join(self.available)}"

    def details(self) -> dict[str, Any]:
        return {"model": self.name, "available": self.available}


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]
    answered_by: str | None = None  # for a cascade: the member model that answered

    @classmethod
    def from_positive(
        cls, p_positive: float, labels: Sequence[str] = LABELS, answered_by: str | None = None
    ) -> Prediction:
        """From the probability of the second label (``positive`` by default)."""
        negative, positive = labels
        probs = {negative: 1.0 - p_positive, positive: p_positive}
        label = positive if p_positive >= 0.5 else negative
        return cls(label=label, score=probs[label], probabilities=probs, answered_by=answered_by)

    def to_dict(self) -> dict:
        out = {"label": self.label, "score": self.score, "probabilities": self.probabilities}
        if self.answered_by is not None:
            out["answered_by"] = self.answered_by
        return out


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    architecture: str
    params: int
    quantization: str | None
    size_bytes: int
    test_accuracy: float | None
    card: dict = field(repr=False)
    labels: tuple[str, str] = LABELS
    base: str | None = None  # for an adapter: the model it adapts
    adapter: dict | None = None  # for an adapter: rank, alpha, merged
    cascade: dict | None = None  # for a cascade: members, threshold, escalation rates

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "params": self.params,
            "quantization": self.quantization,
            "size_bytes": self.size_bytes,
            "test_accuracy": self.test_accuracy,
            "labels": list(self.labels),
        }
        if self.base is not None:
            out["base"] = self.base
            out["adapter"] = self.adapter
        if self.cascade is not None:
            out["cascade"] = self.cascade
        return out


def build_model(card: dict, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The inference module an artifact describes, in eval mode."""
    architecture = card["architecture"]
    quantization = card.get("quantization")
    if architecture == "cnn":
        config = CNNConfig(**card["config"])
        if quantization == "int8":
            model: nn.Module = Int8SentimentCNN(config, tensors)
        elif quantization == "int4":
            model = Int4SentimentCNN(config, tensors)
        elif quantization is None:
            model = SentimentCNN(config)
            model.load_state_dict(tensors)
        else:
            raise ArtifactError(f"unsupported quantization {quantization!r}")
    elif architecture == "switch-transformer":
        model = SwitchClassifier(MoEConfig(**card["config"]))
        model.load_state_dict(tensors)
    elif architecture == "student" and quantization == "int8-embedding":
        model = FoldedStudent(StudentConfig(**card["config"]), tensors)
    else:
        raise ArtifactError(f"unsupported architecture {architecture!r}")
    return model.eval()


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)  # no overflow for very negative logits
    return e / (1.0 + e)


def sigmoid_per_value(logits: torch.Tensor) -> torch.Tensor:
    """float64 sigmoid of each logit, computed one value at a time.

    Not ``torch.sigmoid``: torch runs whole vectors through a vectorised exp and a tensor's
    last few values through a scalar loop, and the two differ in the last bits (seen on an
    AVX2 CPU), so a text's score would depend on its place in the batch. Per value, a text
    scores the same alone and in any batch, on any CPU. (On this AMD EPYC: 4 us at batch 1,
    as torch.sigmoid; 13 us at batch 32, against 5.)"""
    values = array.array("d", [_sigmoid(x) for x in logits.tolist()])
    if not values:
        return torch.zeros(0, dtype=torch.float64)
    return torch.frombuffer(values, dtype=torch.float64)  # shares the array's memory


def positive_from_logits(out: torch.Tensor) -> torch.Tensor:
    """P(positive) per row (float64) from a forward's output: one logit per row, or two-way
    logits, whose softmax is the sigmoid of their difference."""
    if out.dim() == 2:
        out = out[:, 1] - out[:, 0]
    return sigmoid_per_value(out)


def positive_probability(model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """P(positive) per row (float64), for either architecture."""
    return positive_from_logits(model(token_ids))


class ServedModel(Protocol):
    """What the registry serves: an artifact, or an adapter on one."""

    info: ModelInfo
    batch_group: str  # models of one group are served in one mixed forward

    def predict_proba(self, texts: Sequence[str]) -> list[float]: ...

    def predict(self, texts: Sequence[str]) -> list[Prediction]: ...


class LoadedModel:
    """One artifact in memory. predict() is safe to call from several threads at once: no
    forward writes anything on its module (the MoE returns its routing instead of keeping
    it), so calls need no lock, and torch already uses every core within one call."""

    def __init__(self, folder: Path) -> None:
        card, tensors = read_artifact(folder)
        self.card = card
        self.module = build_model(card, tensors)
        self.vectorizer = Vectorizer.load(folder / VOCAB)
        if self.vectorizer.vocab_size > card["config"]["vocab_size"]:
            raise ArtifactError(
                f"artifact {folder.name!r}: vocab.json has {self.vectorizer.vocab_size} tokens, "
                f"more than the model's {card['config']['vocab_size']} embeddings"
            )
        if self.vectorizer.sequence_length != card["config"].get("sequence_length"):
            raise ArtifactError(
                f"artifact {folder.name!r}: vocab.json pads to "
                f"{self.vectorizer.sequence_length} tokens, but the model was built for "
                f"{card['config'].get('sequence_length')}"
            )
        self.info = ModelInfo(
            name=card["name"],
            version=card["version"],
            architecture=card["architecture"],
            params=int(card["params"]),
            quantization=card.get("quantization"),
            size_bytes=folder_size(folder),
            test_accuracy=card.get("test", {}).get("accuracy"),
            card=card,
        )
        self.batch_group = self.info.name

    def predict_proba(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        ids = self.vectorizer(texts)
        with torch.inference_mode():
            return positive_probability(self.module, ids).tolist()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [Prediction.from_positive(p) for p in self.predict_proba(texts)]


class AdapterGroup:
    """A base CNN and the adapters on it, sharing one copy of the base weights: every
    forward of the group is one mixed batch (see :class:`MultiAdapterCNN`)."""

    def __init__(self, base: LoadedModel) -> None:
        if not isinstance(base.module, SentimentCNN):
            raise ArtifactError(f"adapters need the fp32 CNN as base, not {base.info.name!r}")
        self.base = base
        self.base_module: SentimentCNN = base.module
        self.module = MultiAdapterCNN(base.module)
        self._index: dict[str, int] = {base.info.name: BASE_ROW}

    def add(self, name: str, artifact: AdapterArtifact) -> None:
        self._index[name] = self.module.add(artifact.adapter)

    def predict_proba(self, names: Sequence[str], texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        ids = self.base.vectorizer(texts)
        index = torch.tensor([self._index[name] for name in names], dtype=torch.long)
        with torch.inference_mode():
            return sigmoid_per_value(self.module(ids, index)).tolist()


class AdapterModel:
    """An adapter, served through its group (unmerged) or as its own merged copy."""

    def __init__(
        self, artifact: AdapterArtifact, group: AdapterGroup, merged: bool = False
    ) -> None:
        card = artifact.card
        self.card = card
        self._group = group
        self._merged: SentimentCNN | None = None
        size = folder_size(artifact.folder)
        if merged:
            with torch.device("meta"):  # no initial weights: the merged ones are assigned
                self._merged = SentimentCNN(group.base_module.config)
            state = artifact.adapter.merged_state(group.base_module)
            self._merged.load_state_dict(state, assign=True)
            self._merged.eval()
        else:
            group.add(card["name"], artifact)
        self.batch_group = card["name"] if merged else group.base.info.name
        self.info = ModelInfo(
            name=card["name"],
            version=card["version"],
            architecture="cnn+lora",
            params=int(card["params"]),
            quantization=None,
            size_bytes=size,
            test_accuracy=card.get("test", {}).get("accuracy"),
            card=card,
            labels=(str(card["labels"][0]), str(card["labels"][1])),
            base=group.base.info.name,
            adapter={
                **card["lora"],
                "merged": merged,
                "test_auc": card.get("adapter_test_auc", {}).get("auc"),
                "majority_test_accuracy": card.get("comparison", {})
                .get("majority_class", {})
                .get("test_accuracy"),
            },
        )

    def predict_proba(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        if self._merged is None:
            return self._group.predict_proba([self.info.name] * len(texts), texts)
        ids = self._group.base.vectorizer(texts)
        with torch.inference_mode():
            return sigmoid_per_value(self._merged(ids)).tolist()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        labels = self.info.labels
        return [Prediction.from_positive(p, labels) for p in self.predict_proba(texts)]


class ModelRegistry:
    """The models this process serves, by name."""

    def __init__(
        self, models: dict[str, ServedModel], groups: dict[str, AdapterGroup] | None = None
    ) -> None:
        self._models = models
        self._groups = groups or {}

    @classmethod
    def load(
        cls,
        names: Sequence[str] | None = None,
        root: Path | None = None,
        adapters_root: Path | None = None,
        merge: Iterable[str] = (),
    ) -> ModelRegistry:
        """The named artifacts and adapters (all shipped ones when ``names`` is empty). An
        adapter brings its base with it; ``merge`` names adapters to serve as merged copies
        (faster, at the memory of one more copy of the base weights each)."""
        root = Path(root) if root else PACKAGE_ARTIFACTS
        adapter_folders = {p.name: p for p in discover(adapters_root or root / ADAPTERS_FOLDER)}
        merge = set(merge)
        if unknown_merge := merge - set(adapter_folders):
            raise UnknownModelError(sorted(unknown_merge)[0], list(adapter_folders))
        if names:
            wanted = [n for n in names if n not in adapter_folders]
            adapters = [n for n in names if n in adapter_folders]
        else:
            wanted = [n for n in NAMES if (root / n).is_dir()]
            adapters = list(adapter_folders)
        cards = {n: json.loads((adapter_folders[n] / CARD).read_text()) for n in adapters}
        for card in cards.values():  # an adapter needs its base in memory
            base = card.get("base", {}).get("name")
            if base and base not in wanted:
                wanted.append(base)
        if not wanted:
            raise ArtifactError(f"no model artifacts under {root}; build them with `make train`")
        from service.models.cascade import CascadeModel, is_cascade

        models: dict[str, ServedModel] = {}
        cascades = []
        for name in wanted:
            folder = root / name
            if not folder.is_dir():
                raise UnknownModelError(name, [p.name for p in root.iterdir() if p.is_dir()])
            if is_cascade(folder):
                cascades.append(name)
            else:
                models[name] = LoadedModel(folder)
        members: dict[str, LoadedModel] = {}  # a cascade's members that are not served alone

        def member(name: str) -> LoadedModel:
            served = models.get(name)
            if isinstance(served, LoadedModel):
                return served
            if name not in members:
                members[name] = LoadedModel(root / name)
            return members[name]

        for name in cascades:
            models[name] = CascadeModel.load(root / name, member)
        groups: dict[str, AdapterGroup] = {}
        for name in adapters:
            base = models[cards[name]["base"]["name"]]
            assert isinstance(base, LoadedModel)
            artifact = read_adapter(adapter_folders[name], base.card)
            check_named(adapter_folders[name], artifact.card, "adapter")
            group = groups.get(base.info.name) or groups.setdefault(
                base.info.name, AdapterGroup(base)
            )
            models[name] = AdapterModel(artifact, group, merged=name in merge)
            logger.info(
                "adapter loaded",
                extra={"adapter": name, "base": base.info.name, "merged": name in merge},
            )
        return cls(models, groups)

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> ServedModel:
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModelError(name, self.names()) from None

    def info(self, name: str) -> ModelInfo:
        return self.get(name).info

    def predict(self, name: str, texts: Sequence[str]) -> list[Prediction]:
        return self.get(name).predict(texts)

    def batch_group(self, name: str) -> str:
        """The batch a request for ``name`` joins: its base for an unmerged adapter, so texts
        for the base and its adapters share one forward."""
        return self.get(name).batch_group

    def predict_mixed(self, items: Sequence[tuple[str, str]]) -> list[Prediction]:
        """Predictions for (model, text) pairs of one batch group, in one forward."""
        if not items:
            return []
        names = [name for name, _ in items]
        texts = [text for _, text in items]
        group_name = self.batch_group(names[0])
        if any(self.batch_group(name) != group_name for name in names):
            raise ValueError(f"items span several batch groups: {sorted(set(names))}")
        group = self._groups.get(group_name)
        if group is None:  # a model without adapters, or a merged adapter
            return self.get(names[0]).predict(texts)
        probabilities = group.predict_proba(names, texts)
        return [
            Prediction.from_positive(p, self._models[name].info.labels)
            for name, p in zip(names, probabilities, strict=True)
        ]
