"""The on-disk form of a model: a folder with ``model.safetensors``, ``vocab.json`` and
``card.json``. Reading checks the card against the weights before anything is built."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
VOCAB = "vocab.json"
CARD = "card.json"
NAMES = (
    "sentiment-cnn",
    "sentiment-cnn-int8",
    "sentiment-cnn-int4",
    "switch-moe",
    "sentiment-student",
    "sentiment-cascade",
)
PACKAGE_ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


class ArtifactError(RuntimeError):
    """An artifact is missing, or its card does not match its weights."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_manifest(tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in sorted(tensors.items())
    }


def write_weights(folder: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """Save tensors; return the card fields that pin them (hash, size, manifest)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WEIGHTS
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    path.chmod(0o644)  # safetensors writes 0600; artifacts are meant to be read by all
    return {
        "weights_file": WEIGHTS,
        "weights_sha256": sha256_file(path),
        "tensors": tensor_manifest(tensors),
    }


def write_card(folder: Path, card: dict) -> None:
    (folder / CARD).write_text(json.dumps(card, indent=2) + "\n")


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def check_sha256(path: Path, card: dict, what: str, rebuild: str) -> None:
    """Refuse weights whose hash is not the one their card records."""
    actual = sha256_file(path)
    if actual != card.get("weights_sha256"):
        raise ArtifactError(
            f"{what}: {path.name} has SHA-256 {actual}, but card.json records "
            f"{card.get('weights_sha256')}; the weights were changed or the card is stale "
            f"(rebuild with {rebuild})"
        )


def check_named(folder: Path, card: dict, what: str = "artifact") -> None:
    """Refuse a card named unlike its folder: the model is served under the folder's name and
    answers under the card's, so they must agree."""
    if card.get("name") != folder.name:
        raise ArtifactError(
            f"{what} folder {folder.name!r} holds a card named {card.get('name')!r}"
        )


def read_artifact(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The card and the tensors, after checking hash and every tensor's shape and dtype."""
    card_path, weights_path = folder / CARD, folder / WEIGHTS
    for path in (card_path, weights_path, folder / VOCAB):
        if not path.is_file():
            raise ArtifactError(f"artifact {folder.name!r}: missing {path.name} in {folder}")
    card = json.loads(card_path.read_text())
    check_named(folder, card)
    check_sha256(weights_path, card, f"artifact {folder.name!r}", "`make train`")
    # The vocabulary decides every token id the weights see: pinned like the weights.
    vocab_sha256 = sha256_file(folder / VOCAB)
    if vocab_sha256 != card.get("vocab_sha256"):
        raise ArtifactError(
            f"artifact {folder.name!r}: {VOCAB} has SHA-256 {vocab_sha256}, but card.json "
            f"records {card.get('vocab_sha256')}; the vocabulary was changed or the card is "
            "stale (rebuild with `make train`)"
        )
    tensors = load_file(str(weights_path))
    manifest = tensor_manifest(tensors)
    expected = card.get("tensors", {})
    if manifest != expected:
        differing = sorted(
            name
            for name in set(manifest) | set(expected)
            if manifest.get(name) != expected.get(name)
        )
        raise ArtifactError(
            f"artifact {folder.name!r}: tensors differ from card.json: {differing[:5]}"
        )
    return card, tensors
