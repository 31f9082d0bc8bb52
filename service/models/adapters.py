"""The on-disk form of a LoRA adapter: a folder with ``adapter.safetensors`` and
``card.json``, under the artifacts' ``adapters/`` folder (or ``ADAPTERS_DIR``).

The card names the base artifact and the SHA-256 of its weights; an adapter is attached only
to exactly that base, since low-rank updates trained on one set of weights mean nothing on
another. The adapter has no vocabulary of its own: it reads text with its base's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from service.models.artifacts import (
    CARD,
    ArtifactError,
    check_sha256,
    sha256_file,
    tensor_manifest,
)
from service.models.cnn import CNNConfig
from service.models.lora import CNNAdapter, LoRAConfig

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTERS_FOLDER = "adapters"  # under the artifacts root
KIND = "lora-adapter"  # an adapter card's "kind"


@dataclass(frozen=True)
class AdapterArtifact:
    folder: Path
    card: dict
    adapter: CNNAdapter

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def base_name(self) -> str:
        return str(self.card["base"]["name"])


def adapter_tensors(adapter: CNNAdapter) -> dict[str, torch.Tensor]:
    tensors = {k: v.detach().clone() for k, v in adapter.state_dict().items()}
    tensors["token_ids"] = tensors["token_ids"].to(torch.int32)  # half the bytes of int64
    return tensors


def write_adapter(folder: Path, adapter: CNNAdapter) -> dict:
    """Save the adapter's tensors; return the card fields that pin them."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = adapter_tensors(adapter)
    path = folder / ADAPTER_WEIGHTS
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    path.chmod(0o644)  # safetensors writes 0600; artifacts are meant to be read by all
    return {
        "weights_file": ADAPTER_WEIGHTS,
        "weights_sha256": sha256_file(path),
        "weights_bytes": path.stat().st_size,
        "tensors": tensor_manifest(tensors),
    }


def discover(root: Path) -> list[Path]:
    """Adapter folders under ``root`` (each holding a card), sorted by name."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / CARD).is_file())


def read_adapter(folder: Path, base_card: dict) -> AdapterArtifact:
    """The adapter in ``folder``, after checking its own hash and manifest and that it was
    trained on exactly ``base_card``'s weights."""
    card_path, weights_path = folder / CARD, folder / ADAPTER_WEIGHTS
    for path in (card_path, weights_path):
        if not path.is_file():
            raise ArtifactError(f"adapter {folder.name!r}: missing {path.name} in {folder}")
    card = json.loads(card_path.read_text())
    check_sha256(
        weights_path, card, f"adapter {folder.name!r}", "`python -m service train --only hyperbole`"
    )
    base = card.get("base", {})
    if base.get("weights_sha256") != base_card.get("weights_sha256"):
        raise ArtifactError(
            f"adapter {folder.name!r} was trained on {base.get('name')!r} with weights "
            f"{str(base.get('weights_sha256'))[:12]}..., but the loaded {base_card['name']!r} "
            f"has {str(base_card.get('weights_sha256'))[:12]}...; retrain the adapter on "
            "this base"
        )
    if base_card.get("architecture") != "cnn" or base_card.get("quantization") is not None:
        raise ArtifactError(
            f"adapter {folder.name!r}: base {base_card['name']!r} is not the fp32 CNN"
        )
    tensors = load_file(str(weights_path))
    if tensor_manifest(tensors) != card.get("tensors"):
        raise ArtifactError(f"adapter {folder.name!r}: tensors differ from card.json")
    adapter = CNNAdapter(
        CNNConfig(**base_card["config"]), LoRAConfig(**card["lora"]), tensors["token_ids"]
    )
    tensors["token_ids"] = tensors["token_ids"].to(torch.long)
    adapter.load_state_dict(tensors)
    return AdapterArtifact(folder=folder, card=card, adapter=adapter.eval())
