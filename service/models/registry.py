"""Loads shipped model artifacts by name and predicts on batches of texts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.core.errors import ServiceError
from service.models.artifacts import (
    NAMES,
    PACKAGE_ARTIFACTS,
    VOCAB,
    ArtifactError,
    folder_size,
    read_artifact,
)
from service.models.cnn import CNNConfig, SentimentCNN
from service.models.moe import MoEConfig, SwitchClassifier
from service.models.quantize import Int4SentimentCNN, Int8SentimentCNN
from service.models.vectorizer import Vectorizer

LABELS = ("negative", "positive")

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
        self.name = name
        self.available = sorted(available)
        super().__init__(f"no model named {name!r}; available: {', '.join(self.available)}")

    def __str__(self) -> str:  # for the command line; KeyError's own would quote the name
        return f"unknown model {self.name!r}; available: {', '.join(self.available)}"

    def details(self) -> dict[str, Any]:
        return {"model": self.name, "available": self.available}


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]

    @classmethod
    def from_positive(cls, p_positive: float) -> Prediction:
        probs = {"negative": 1.0 - p_positive, "positive": p_positive}
        label = "positive" if p_positive >= 0.5 else "negative"
        return cls(label=label, score=probs[label], probabilities=probs)

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "probabilities": self.probabilities}


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

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "params": self.params,
            "quantization": self.quantization,
            "size_bytes": self.size_bytes,
            "test_accuracy": self.test_accuracy,
        }


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
    else:
        raise ArtifactError(f"unsupported architecture {architecture!r}")
    return model.eval()


def positive_probability(model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """P(positive) per row, for either architecture."""
    out = model(token_ids)
    if out.dim() == 2:  # two-way logits
        return torch.softmax(out, dim=-1)[:, 1]
    return torch.sigmoid(out)


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

    def predict_proba(self, texts: Sequence[str]) -> list[float]:
        ids = self.vectorizer(texts)
        with torch.inference_mode():
            return positive_probability(self.module, ids).tolist()

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [Prediction.from_positive(p) for p in self.predict_proba(texts)]


class ModelRegistry:
    """The models this process serves, by name."""

    def __init__(self, models: dict[str, LoadedModel]) -> None:
        self._models = models

    @classmethod
    def load(cls, names: Sequence[str] | None = None, root: Path | None = None) -> ModelRegistry:
        root = Path(root) if root else PACKAGE_ARTIFACTS
        wanted = list(names) if names else [n for n in NAMES if (root / n).is_dir()]
        if not wanted:
            raise ArtifactError(f"no model artifacts under {root}; build them with `make train`")
        models = {}
        for name in wanted:
            folder = root / name
            if not folder.is_dir():
                raise UnknownModelError(name, [p.name for p in root.iterdir() if p.is_dir()])
            models[name] = LoadedModel(folder)
        return cls(models)

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str) -> LoadedModel:
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModelError(name, self.names()) from None

    def info(self, name: str) -> ModelInfo:
        return self.get(name).info

    def predict(self, name: str, texts: Sequence[str]) -> list[Prediction]:
        return self.get(name).predict(texts)
