"""Training loops for the CNN and the Switch-Transformer classifier.

Both use AdamW with a one-cycle schedule, keep the checkpoint with the best validation
accuracy (these models overfit IMDB within a few epochs), and show a progress bar with the
running loss and accuracy.
"""

from __future__ import annotations

import copy
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from service.models.moe import SwitchClassifier, load_balancing_loss


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    max_lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 1337
    # Exponential moving average of the weights (0 = off): validated and kept instead of
    # the raw weights, it smooths out the last noisy steps of an epoch.
    ema_decay: float = 0.0
    # Validation passes per epoch: the best checkpoint may fall between epoch ends.
    checks_per_epoch: int = 1
    # The checkpoint kept is the best of (1 - w) x validation accuracy + w x accuracy on
    # the short validation texts (when train() is given them; w = 0: validation only).
    short_weight: float = 0.0
    # Length-balanced batches (0 = off): each run of this many batches of the shuffled
    # order is sorted by review length before it is cut into batches, and the batches are
    # shuffled again, so a batch padded only to its longest row wastes little on padding.
    length_buckets: int = 0

    def to_dict(self) -> dict:
        return {
            "optimizer": "AdamW",
            "schedule": "one-cycle",
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "max_lr": self.max_lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "ema_decay": self.ema_decay,
            "checks_per_epoch": self.checks_per_epoch,
            "short_weight": self.short_weight,
            "length_buckets": self.length_buckets,
        }


@dataclass
class TrainResult:
    model: nn.Module
    best_epoch: float
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)
    # The kept checkpoint's selection score: val_score's, else the validation accuracy (or
    # its mix with the short-text accuracy).
    best_val_score: float = -math.inf


def epoch_order(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    lengths: torch.Tensor | None = None,
    buckets: int = 0,
) -> torch.Tensor:
    """The rows of one epoch in batch order: shuffled, and with ``lengths`` and
    ``buckets`` length-balanced (see ``TrainConfig.length_buckets``)."""
    order = torch.randperm(n, generator=generator)
    if lengths is None or buckets <= 0:
        return order
    chunk = batch_size * buckets
    parts = [order[i : i + chunk] for i in range(0, n, chunk)]
    order = torch.cat([p[torch.argsort(lengths[p], stable=True)] for p in parts])
    batches = list(order.split(batch_size))
    # Only the last chunk can leave a short batch: it stays last, so the loop's fixed
    # slices of batch_size rows are exactly these batches.
    short = [b for b in batches if len(b) < batch_size]
    full = [b for b in batches if len(b) == batch_size]
    shuffled = torch.randperm(len(full), generator=generator).tolist()
    return torch.cat([full[i] for i in shuffled] + short)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for two-way logits, binary cross-entropy for one logit per row."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, labels)
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def forward_loss(
    model: nn.Module, ids: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: ``(logits, loss)``. The loss is the classification loss plus, for a
    Switch model, the load-balancing loss of the routing that same pass returned."""
    if isinstance(model, SwitchClassifier):
        logits, routing = model.forward_with_routing(ids)
        aux = load_balancing_loss(routing.router, model.config.num_experts)
        return logits, classification_loss(logits, labels) + model.config.aux_loss_weight * aux
    logits = model(ids)
    return logits, classification_loss(logits, labels)


def predicted_labels(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1) if logits.dim() == 2 else (logits > 0).long()


@torch.inference_mode()
def accuracy(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(ids), batch):
        logits = model(ids[start : start + batch])
        correct += int((predicted_labels(logits) == labels[start : start + batch]).sum())
    return correct / max(1, len(ids))


# The loss of one batch: (model, the batch's row indices) -> (logits, loss).
BatchLoss = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def train(
    model: nn.Module,
    train_ids: torch.Tensor,
    train_labels: torch.Tensor,
    val_ids: torch.Tensor,
    val_labels: torch.Tensor,
    config: TrainConfig,
    desc: str = "train",
    log: Callable[[str], None] = print,
    batch_loss: BatchLoss | None = None,
    short_val: tuple[torch.Tensor, torch.Tensor] | None = None,
    lengths: torch.Tensor | None = None,
    val_score: Callable[[nn.Module], float] | None = None,
) -> TrainResult:
    """``batch_loss`` replaces the classification loss (e.g. distillation, or batches of
    other views of the reviews); the running train accuracy is then measured against
    ``train_labels``, the targets it trains for. ``short_val`` (ids, labels) is measured at
    every check too, and weighs in the checkpoint choice by ``config.short_weight``.
    ``lengths`` (tokens per training row) make the batches length-balanced when
    ``config.length_buckets`` is set. ``val_score(model)`` (higher is better), when given,
    chooses the checkpoint instead of the validation accuracy (e.g. a ranking measure where
    accuracy at the default threshold only tells the majority class apart)."""
    seed_everything(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = (len(train_ids) + config.batch_size - 1) // config.batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=config.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(config.seed)
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        if config.ema_decay > 0
        else None
    )
    kept = ema.module if ema is not None else model
    check_steps = {
        round(steps_per_epoch * (i + 1) / config.checks_per_epoch) - 1
        for i in range(config.checks_per_epoch)
    }
    if val_score is not None and short_val is not None:
        raise ValueError("give val_score or short_val, not both: each chooses the checkpoint")
    best_state, best_acc, best_score, best_epoch = None, -1.0, -math.inf, 0.0
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = epoch_order(
            len(train_ids), config.batch_size, generator, lengths, config.length_buckets
        )
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{desc} epoch {epoch}/{config.epochs}",
            unit="batch",
            leave=False,
            mininterval=1.0,
        )
        for step in bar:
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            ids, labels = train_ids[index], train_labels[index]
            if batch_loss is None:
                logits, loss = forward_loss(model, ids, labels)
            else:
                logits, loss = batch_loss(model, index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            total_loss += loss.item() * len(ids)
            correct += int((predicted_labels(logits.detach()) == labels).sum())
            seen += len(ids)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
            if step not in check_steps:
                continue
            val_acc = accuracy(kept, val_ids, val_labels)
            at = round(epoch - 1 + (step + 1) / steps_per_epoch, 2)
            row = {
                "epoch": at,
                "train_loss": total_loss / seen,
                "train_accuracy": correct / seen,
                "val_accuracy": val_acc,
            }
            score, note = val_acc, ""
            if val_score is not None:
                score = val_score(kept)
                row["val_score"] = score
                note = f" val score {score:.4f}"
            elif short_val is not None:
                short_acc = accuracy(kept, *short_val)
                row["val_short_accuracy"] = short_acc
                score = (1 - config.short_weight) * val_acc + config.short_weight * short_acc
                note = f" short val acc {short_acc:.4f}"
            model.train()
            history.append(row)
            bar.write(
                f"{desc} epoch {at}: loss {row['train_loss']:.4f} "
                f"train acc {row['train_accuracy']:.4f} val acc {val_acc:.4f}{note}",
                file=sys.stderr,
            )
            if score > best_score:  # a NaN score is never kept
                best_score, best_acc, best_epoch = score, val_acc, at
                best_state = copy.deepcopy(kept.state_dict())
        bar.close()
        log(f"{desc} epoch {epoch} done; best val acc so far {best_acc:.4f} at {best_epoch}")
    if best_state is None:
        raise ValueError(f"{desc}: no validation check gave a score to keep (NaN scores?)")
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        best_epoch=best_epoch,
        best_val_accuracy=best_acc,
        history=history,
        best_val_score=best_score,
    )
