"""Test-set evaluation of a loaded artifact: accuracy, and routing figures for the MoE."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
from tqdm import tqdm

from service.models.moe import SwitchClassifier
from service.models.registry import LoadedModel, positive_from_logits, positive_probability


def evaluate_loaded(
    model: LoadedModel,
    texts: Sequence[str],
    labels: Sequence[int],
    batch_size: int = 250,
    *,
    progress: bool = False,
) -> dict:
    """Accuracy over ``texts``; for a Switch model also each expert's share of the kept
    token assignments and the fraction of assignments dropped over capacity (all sequence
    positions, padding included, as the layer sees them). ``progress``: a progress bar on
    stderr (reviews done, rate, time left)."""
    module = model.module
    is_switch = isinstance(module, SwitchClassifier)
    num_experts = module.config.num_experts if isinstance(module, SwitchClassifier) else 0
    kept = torch.zeros(num_experts, dtype=torch.long)
    correct = dropped = assignments = 0
    bar = tqdm(
        total=len(texts),
        desc=f"evaluate {model.info.name}",
        unit="review",
        file=sys.stderr,
        disable=not progress,
        mininterval=1.0,
    )
    with torch.inference_mode(), bar:
        for start in range(0, len(texts), batch_size):
            ids = model.vectorizer(texts[start : start + batch_size])
            if isinstance(module, SwitchClassifier):
                # The routing of this very call, returned with its logits.
                logits, routing = module.forward_with_routing(ids)
                p = positive_from_logits(logits)  # as served
                kept += routing.stats.tokens_per_expert
                dropped += routing.stats.dropped
                assignments += routing.stats.assignments
            else:
                p = positive_probability(module, ids)
            truth = torch.tensor(labels[start : start + batch_size])
            correct += int(((p >= 0.5).long() == truth).sum())
            bar.update(len(truth))
    result: dict = {
        "model": model.info.name,
        "n": len(texts),
        "accuracy": round(correct / max(1, len(texts)), 5),
        "size_bytes": model.info.size_bytes,
        "params": model.info.params,
        "quantization": model.info.quantization,
    }
    if is_switch:
        total = max(1, int(kept.sum()))
        result["expert_share"] = [round(int(k) / total, 5) for k in kept]
        result["drop_rate"] = round(dropped / max(1, assignments), 5)
    return result


def format_table(result: dict) -> str:
    """A readable two-column table of an evaluation result."""
    rows = []
    for key, value in result.items():
        if key == "expert_share":
            value = " ".join(f"{share:.3f}" for share in value)
        rows.append((key, str(value)))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)
