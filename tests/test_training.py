"""A few optimisation steps on tiny synthetic data must reduce the loss."""

import random

import torch

from service.models.cnn import CNNConfig, SentimentCNN
from service.models.moe import MoEConfig, SwitchClassifier
from service.models.vectorizer import Vectorizer
from service.training.train import TrainConfig, accuracy, logits_loss, train

GOOD = ["great", "wonderful", "superb", "loved", "brilliant"]
BAD = ["awful", "terrible", "boring", "hated", "dreadful"]
FILLER = ["the", "film", "plot", "actor", "scene", "was", "and", "a"]


def _synthetic(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = rng.choices(FILLER, k=12) + rng.choices(GOOD if label else BAD, k=2)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def _run(model, vectorizer, steps_config: TrainConfig):
    texts, labels = _synthetic(192, seed=0)
    ids, y = vectorizer(texts), torch.tensor(labels)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        before = logits_loss(model, model(ids), y).item()
    result = train(model, ids, y, ids[:64], y[:64], steps_config, log=lambda _: None)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        after = logits_loss(model, model(ids), y).item()
    return before, after, result


def test_cnn_training_steps_reduce_the_loss():
    texts, _ = _synthetic(192, seed=0)
    vec = Vectorizer.fit(texts, max_tokens=40, sequence_length=20)
    torch.manual_seed(0)
    model = SentimentCNN(
        CNNConfig(
            vocab_size=40,
            sequence_length=20,
            embed_dim=16,
            filters=16,
            kernel_size=3,
            stride=1,
            hidden=16,
            dropout=0.1,
        )
    )
    before, after, result = _run(model, vec, TrainConfig(epochs=4, batch_size=16, max_lr=1e-2))
    assert after < before * 0.8
    assert result.best_val_accuracy > 0.8


def test_switch_training_steps_reduce_the_loss_and_keep_the_aux_loss():
    texts, labels = _synthetic(192, seed=0)
    vec = Vectorizer.fit(texts, max_tokens=40, sequence_length=16)
    torch.manual_seed(0)
    model = SwitchClassifier(
        MoEConfig(
            vocab_size=40,
            sequence_length=16,
            embed_dim=16,
            ff_dim=16,
            num_experts=4,
            dropout=0.0,
            head_dropout=0.0,
            hidden=16,
        )
    )
    before, after, result = _run(model, vec, TrainConfig(epochs=6, batch_size=16, max_lr=1e-2))
    assert after < before * 0.8
    assert accuracy(model, vec(texts), torch.tensor(labels)) > 0.8
    assert result.best_epoch >= 1 and len(result.history) == 6
