"""Distilling the fp32 CNN into the student, and the student-then-teacher cascade's threshold.

Loss: ``alpha x BCE(labels) + (1 - alpha) x KL(teacher/T || student/T) x T^2``. Both models
emit one logit z, i.e. the two-class logits (0, z); the softmax of the KL is taken over those
two classes of each review (never across the batch), so KL is a sum of two terms per row and
a row's loss does not depend on the other rows. The BCE term only counts the reviews whose
labels the student may see (``labelled``); the KL term counts every review.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from service.training.augment import SpanBatches, SpanConfig
from service.training.train import TrainConfig, TrainResult, train

if TYPE_CHECKING:
    from service.models.registry import ServedModel
    from service.training.build import BuildContext


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 12
    batch_size: int = 64
    max_lr: float = 5e-3
    weight_decay: float = 0.01
    seed: int = 1337
    temperature: float = 10.0
    alpha: float = 0.1  # weight of the hard-label BCE; 1 - alpha weighs the KL
    checks_per_epoch: int = 2
    # With spans (distill(spans=...)): the KL to the teacher on spans of each batch's
    # reviews is added with this weight relative to the reviews' KL.
    span_weight: float = 0.0

    def training(self) -> TrainConfig:
        """The shared loop's settings (AdamW, one-cycle, best-validation checkpoint)."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            max_lr=self.max_lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
            checks_per_epoch=self.checks_per_epoch,
        )

    def to_dict(self) -> dict:
        return {
            "optimizer": "AdamW",
            "schedule": "one-cycle",
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "max_lr": self.max_lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "checks_per_epoch": self.checks_per_epoch,
            "loss": "alpha x BCE + (1 - alpha) x KL(teacher/T || student/T) x T^2, softmax "
            "over the two classes of each review",
            "span_weight": self.span_weight,
        }


def two_class_logits(logit: torch.Tensor) -> torch.Tensor:
    """[batch] positive-class logits -> [batch, 2] logits (0, z): softmax = (1 - p, p)."""
    return torch.stack([torch.zeros_like(logit), logit], dim=-1)


def kl_over_classes(
    student_logit: torch.Tensor, teacher_logit: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Per-row KL(teacher/T || student/T), the softmax over each row's two classes: [batch]."""
    log_p_student = F.log_softmax(two_class_logits(student_logit) / temperature, dim=-1)
    log_p_teacher = F.log_softmax(two_class_logits(teacher_logit) / temperature, dim=-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)


def distillation_loss(
    student_logit: torch.Tensor,
    teacher_logit: torch.Tensor | None,
    labels: torch.Tensor,
    labelled: torch.Tensor,
    config: DistillConfig,
) -> torch.Tensor:
    """The batch's loss; without a teacher, plain BCE on the labelled rows."""
    bce = torch.zeros((), dtype=student_logit.dtype)
    if bool(labelled.any()):
        bce = F.binary_cross_entropy_with_logits(student_logit[labelled], labels[labelled].float())
    if teacher_logit is None:
        return bce
    t = config.temperature
    kl = kl_over_classes(student_logit, teacher_logit, t).mean() * t * t
    return config.alpha * bce + (1 - config.alpha) * kl


# The rows of a batch -> (student ids of spans of those reviews, the teacher's logits on them).
SpanTargets = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def distill(
    model: nn.Module,
    ids: torch.Tensor,
    labels: torch.Tensor,
    labelled: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    val_ids: torch.Tensor,
    val_labels: torch.Tensor,
    config: DistillConfig,
    desc: str = "student",
    log: Callable[[str], None] = print,
    spans: SpanTargets | None = None,
    short_val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` on ``ids``: BCE on the rows where ``labelled`` is true, and (with a
    teacher) KL to ``teacher_logits`` on every row, plus (with ``spans``) the KL to the
    teacher on spans of the batch's reviews; the shared training loop keeps the
    best-validation checkpoint. Its running train accuracy is against the targets: the
    label where one is used, else the teacher's answer."""

    def batch_loss(module: nn.Module, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = module(ids[index])
        teacher = teacher_logits[index] if teacher_logits is not None else None
        loss = distillation_loss(logits, teacher, labels[index], labelled[index], config)
        if spans is not None and teacher is not None:
            span_ids, span_teacher = spans(index)
            t = config.temperature
            kl = kl_over_classes(module(span_ids), span_teacher, t).mean() * t * t
            loss = loss + config.span_weight * (1 - config.alpha) * kl
        return logits, loss

    targets = labels
    if teacher_logits is not None:
        targets = torch.where(labelled, labels, (teacher_logits > 0).long())
    return train(
        model, ids, targets, val_ids, val_labels, config.training(), desc=desc, log=log,
        batch_loss=batch_loss, short_val=short_val,
    )  # fmt: skip


def confidence(p_positive: torch.Tensor) -> torch.Tensor:
    """The probability of the predicted class, in [0.5, 1]."""
    return torch.maximum(p_positive, 1 - p_positive)


def cascade_accuracy(
    student_p: torch.Tensor, teacher_p: torch.Tensor, labels: torch.Tensor, threshold: float
) -> tuple[float, float]:
    """(accuracy, escalation rate) when texts whose student confidence < threshold go to
    the teacher."""
    escalate = confidence(student_p) < threshold
    p = torch.where(escalate, teacher_p, student_p)
    return float(((p >= 0.5).long() == labels).float().mean()), float(escalate.float().mean())


def choose_threshold(
    student_p: torch.Tensor,
    teacher_p: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    candidates: Sequence[float] | None = None,
) -> dict:
    """The lowest threshold (so the fewest escalations) whose cascade accuracy on these
    (validation) texts is at least the teacher's minus ``margin``. Compared in counts of
    correct texts, so a choice on the boundary does not hang on float rounding."""
    n = len(labels)
    teacher_correct = int(((teacher_p >= 0.5).long() == labels).sum())
    target_correct = teacher_correct - math.floor(margin * n + 1e-9)
    target = target_correct / n
    grid = candidates or [round(0.5 + i / 1000, 3) for i in range(501)]
    for threshold in grid:
        acc, rate = cascade_accuracy(student_p, teacher_p, labels, threshold)
        if round(acc * n) >= target_correct:
            return {"threshold": threshold, "accuracy": acc, "escalation_rate": rate,
                    "target": target}  # fmt: skip
    acc, rate = cascade_accuracy(student_p, teacher_p, labels, grid[-1])
    return {"threshold": grid[-1], "accuracy": acc, "escalation_rate": rate, "target": target}


# --- the build stages (``make train``): student, then cascade ------------------------------

STUDENT = "sentiment-student"
CASCADE = "sentiment-cascade"
TEACHER = "sentiment-cnn"  # distilled from the fp32 CNN
ESCALATE_TO = "sentiment-cnn-int8"  # the cascade's second stage
STUDENT_VOCAB = 10_000  # the teacher's 10,000 most frequent tokens; chosen on validation
# The max and the mean of the per-token features, chosen on validation (same seed, data
# and schedule); the figures go into the card.
STUDENT_POOL = "max+mean"
POOL_CHOICE = (
    "pool chosen on validation: max alone 0.8788 validation accuracy, its cascade escalating "
    "16.4% of validation reviews; max+mean 0.8888 and 8.5%"
)
POOL_WORDS = {
    "max": "global max pool",
    "max+mean": "global max pool beside the mean over the text's tokens",
}
LABELLED = 2_500  # training reviews whose labels the student sees
BASELINE_EPOCHS = 30  # the no-teacher baseline: 2,500 reviews, best validation checkpoint
# The KL on spans of the reviews (scored by the teacher) is added with this weight.
STUDENT_SPANS = SpanConfig(extra_spans=1.0, max_sentences=3, max_tokens=60)
SPAN_WEIGHT = 1.0
# Validation accuracy may trail the int8 CNN by this much: the 0.3 points the service allows
# on test. (Near the chosen threshold the validation accuracy moves by a few reviews in
# 5,000 while the escalations move by points, so the whole allowance is used.)
CASCADE_MARGIN = 0.003


def _logits(module: nn.Module, ids: torch.Tensor, batch: int = 250) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([module(ids[i : i + batch]) for i in range(0, len(ids), batch)])


def _probabilities(model: ServedModel, texts: Sequence[str], batch: int = 250) -> torch.Tensor:
    return torch.tensor(  # float64, as the served cascade compares them with its threshold
        [p for i in range(0, len(texts), batch) for p in model.predict_proba(texts[i : i + batch])],
        dtype=torch.float64,
    )


def _student_ids(teacher_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.where(teacher_ids < vocab, teacher_ids, 1)


def build_student(ctx: BuildContext, epochs: int = 12) -> dict:
    """Distil the fp32 CNN artifact into ``sentiment-student``; also train the same
    architecture on the labelled reviews alone and record both in the card."""
    from service.models.artifacts import VOCAB, read_artifact
    from service.models.registry import build_model
    from service.models.student import (
        FoldedStudent,
        StudentClassifier,
        StudentConfig,
        student_tensors,
    )
    from service.models.vectorizer import Vectorizer
    from service.training.build import _write

    teacher_card, teacher_tensors = read_artifact(ctx.out / TEACHER)
    teacher = build_model(teacher_card, teacher_tensors)
    teacher_vectorizer = Vectorizer.load(ctx.out / TEACHER / VOCAB)
    vocab = min(STUDENT_VOCAB, teacher_vectorizer.vocab_size)
    # The teacher's vocabulary was fitted on these training reviews, most frequent first:
    # its first ids are the student's vocabulary, and one tokenization serves both.
    vectorizer = Vectorizer(
        teacher_vectorizer.vocabulary[:vocab], teacher_vectorizer.sequence_length
    )
    train_reviews, val_reviews = ctx.splits.train, ctx.splits.validation
    ctx.log(f"student: tokenizing {len(train_reviews)} training reviews")
    teacher_ids = teacher_vectorizer([r.text for r in train_reviews])
    labels = torch.tensor([r.label for r in train_reviews])
    ctx.log(f"student: the teacher {TEACHER} scores {len(train_reviews)} training reviews")
    teacher_logits = _logits(teacher, teacher_ids)
    ids = _student_ids(teacher_ids, vocab)
    val_ids = vectorizer([r.text for r in val_reviews])
    val_labels = torch.tensor([r.label for r in val_reviews])
    labelled = torch.zeros(len(ids), dtype=torch.bool)
    generator = torch.Generator().manual_seed(ctx.seed)
    labelled[torch.randperm(len(ids), generator=generator)[:LABELLED]] = True
    n_labelled = int(labelled.sum())

    config = StudentConfig(
        vocab_size=vocab, sequence_length=vectorizer.sequence_length, pool=STUDENT_POOL
    )
    dcfg = DistillConfig(epochs=epochs, seed=ctx.seed, span_weight=SPAN_WEIGHT)
    # Spans of the training reviews, scored by the teacher as they are drawn: the student
    # learns the teacher's answers on short text too (service/training/augment.py).
    batches = SpanBatches(
        teacher_vectorizer, [r.text for r in train_reviews], STUDENT_SPANS, seed=ctx.seed,
        trim=True,
    )  # fmt: skip

    def span_targets(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        span_ids, _ = batches.extra(index)
        with torch.no_grad():
            return _student_ids(span_ids, vocab), teacher(span_ids)

    sentences = ctx.short_sets()[0]
    short_val = (vectorizer(sentences.texts), torch.tensor(sentences.labels))
    torch.manual_seed(ctx.seed)
    distilled = distill(
        StudentClassifier(config), ids, labels, labelled, teacher_logits, val_ids, val_labels,
        dcfg, desc="student", log=ctx.log, spans=span_targets, short_val=short_val,
    )  # fmt: skip
    bcfg = DistillConfig(epochs=BASELINE_EPOCHS, seed=ctx.seed, batch_size=32)
    torch.manual_seed(ctx.seed)
    baseline = distill(
        StudentClassifier(config), ids[labelled], labels[labelled],
        torch.ones(n_labelled, dtype=torch.bool), None, val_ids, val_labels, bcfg,
        desc="no-teacher", log=ctx.log,
    )  # fmt: skip
    test_texts, test_labels = ctx.test_set()
    test_ids = vectorizer(test_texts)
    test_y = torch.tensor(test_labels)
    shipped = FoldedStudent(config, student_tensors(baseline.model))  # as it would ship
    baseline_acc = float(((_logits(shipped, test_ids) > 0).long() == test_y).float().mean())
    ctx.log(f"no-teacher student: test accuracy {baseline_acc:.4f}")
    params = sum(p.numel() for p in distilled.model.parameters())
    card = {
        "architecture": "student",
        "quantization": "int8-embedding",
        "description": "Embedding 32, a per-token Dense layer + ReLU in place of the "
        f"convolutions, {POOL_WORDS[config.pool]}, Dense 32, one logit; distilled from the "
        "fp32 CNN. "
        "Embedding rows int8 (one fp16 scale each), dense layers fp32; served folded "
        "(the per-token layer precomputed per vocabulary entry).",
        "config": config.to_dict(),
        "params": params,
        "teacher": {
            "name": teacher_card["name"],
            "version": teacher_card["version"],
            "weights_sha256": teacher_card["weights_sha256"],
            "test_accuracy": teacher_card["test"]["accuracy"],
        },
        "distillation": {
            **dcfg.to_dict(),
            "labelled_reviews": n_labelled,
            "soft_target_reviews": len(ids),
            "note": f"BCE on {n_labelled} seeded-random training reviews' labels; KL to the "
            f"teacher's logits on all {len(ids)} training reviews (the other "
            f"{len(ids) - n_labelled} reviews' labels unused)",
            "vocabulary": f"the teacher's {vocab} most frequent tokens",
            "pool": POOL_CHOICE,
            "spans": {
                **STUDENT_SPANS.to_dict(),
                "note": f"per batch, {STUDENT_SPANS.extra_spans:g} x as many spans of its "
                "reviews (1 to max_sentences sentences), the KL to the teacher's logits on "
                "them added with span_weight",
            },
        },
        "training": {
            "best_epoch": distilled.best_epoch,
            "best_val_accuracy": distilled.best_val_accuracy,
            "history": distilled.history,
        },
        "comparison": {
            "measured_on": f"all {len(test_texts)} aclImdb test reviews",
            "teacher_accuracy": teacher_card["test"]["accuracy"],
            "no_teacher_accuracy": round(baseline_acc, 5),
            "no_teacher_training": {
                **bcfg.to_dict(),
                "loss": f"BCE on the {n_labelled} labelled reviews only",
                "best_epoch": baseline.best_epoch,
                "best_val_accuracy": baseline.best_val_accuracy,
            },
        },
    }
    card = _write(ctx, STUDENT, student_tensors(distilled.model), vectorizer, card)
    card["comparison"]["distilled_accuracy"] = card["test"]["accuracy"]
    from service.models.artifacts import folder_size, write_card

    write_card(ctx.out / STUDENT, card)
    card["size_bytes"] = folder_size(ctx.out / STUDENT)
    write_card(ctx.out / STUDENT, card)
    return card


def build_cascade(ctx: BuildContext) -> dict:
    """Choose the cascade's threshold on the validation reviews, write its card, measure it
    on the test reviews as served."""
    import datetime as dt

    from service.models.artifacts import CARD, folder_size, write_card
    from service.models.cascade import ARCHITECTURE, CascadeModel
    from service.models.registry import LoadedModel

    student = LoadedModel(ctx.out / STUDENT)
    teacher = LoadedModel(ctx.out / ESCALATE_TO)
    val_texts = [r.text for r in ctx.splits.validation]
    val_labels = torch.tensor([r.label for r in ctx.splits.validation])
    ctx.log(f"cascade: scoring {len(val_texts)} validation reviews with both models")
    student_p = _probabilities(student, val_texts)
    teacher_p = _probabilities(teacher, val_texts)
    choice = choose_threshold(student_p, teacher_p, val_labels, CASCADE_MARGIN)
    ctx.log(f"cascade: threshold {choice['threshold']:.3f} on validation: {choice}")

    def ref(model: LoadedModel) -> dict:
        card = model.card
        return {"name": card["name"], "version": card["version"],
                "weights_sha256": card["weights_sha256"]}  # fmt: skip

    pinned = json_digest([ref(student), ref(teacher), choice["threshold"]])
    card: dict = {
        "name": CASCADE,
        "version": f"1.0.0+{pinned[:8]}",
        "architecture": ARCHITECTURE,
        "quantization": teacher.card.get("quantization"),
        "description": f"{STUDENT} answers; texts whose student confidence (probability of "
        f"its label) is below the threshold go to {ESCALATE_TO} in one batched forward.",
        "student": ref(student),
        "teacher": ref(teacher),
        "threshold": choice["threshold"],
        "threshold_rule": f"the lowest threshold whose validation accuracy is at least "
        f"{ESCALATE_TO}'s minus {CASCADE_MARGIN} (validation only; never the test set)",
        "validation": {
            "n": len(val_texts),
            "accuracy": round(choice["accuracy"], 5),
            "escalation_rate": round(choice["escalation_rate"], 5),
            "student_accuracy": round(
                float(((student_p >= 0.5).long() == val_labels).float().mean()), 5
            ),
            "teacher_accuracy": round(choice["target"] + CASCADE_MARGIN, 5),
        },
        "data": ctx.data_card(),
        "command": ctx.command,
        "created": dt.date.today().isoformat(),
    }
    folder = ctx.out / CASCADE
    folder.mkdir(parents=True, exist_ok=True)
    write_card(folder, card)
    cascade = CascadeModel.load(folder, lambda name: {STUDENT: student, ESCALATE_TO: teacher}[name])
    texts, labels = ctx.test_set()
    ctx.log(f"{CASCADE}: evaluating on {len(texts)} test reviews")
    correct = escalated = 0
    for start in range(0, len(texts), 250):
        p, up = cascade.forward(texts[start : start + 250])
        truth = torch.tensor(labels[start : start + 250])
        correct += int(((p >= 0.5).long() == truth).sum())
        escalated += int(up.sum())
    card["test"] = {
        "n": len(texts),
        "accuracy": round(correct / len(texts), 5),
        "escalation_rate": round(escalated / len(texts), 5),
        "student_accuracy": student.card["test"]["accuracy"],
        "teacher_accuracy": teacher.card["test"]["accuracy"],
    }
    card["short_text"] = ctx.short_text(cascade.predict_proba)
    write_card(folder, card)
    card["size_bytes"] = folder_size(folder)  # the card alone; the members' sizes add to it
    write_card(folder, card)
    assert (folder / CARD).is_file()
    ctx.log(f"{CASCADE}: test accuracy {card['test']['accuracy']:.4f}, escalation rate "
            f"{card['test']['escalation_rate']:.4f}")  # fmt: skip
    return card


def json_digest(value: object) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
