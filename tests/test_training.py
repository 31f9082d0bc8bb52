"""A few optimisation steps on tiny synthetic data must reduce the loss."""

import random

import torch
from torch import nn
from torch.nn import functional as F

from service.models.cnn import CNNConfig, SentimentCNN
from service.models.moe import MoEConfig, SwitchClassifier, load_balancing_loss
from service.models.vectorizer import Vectorizer
from service.training.train import TrainConfig, TrainResult, accuracy, forward_loss, train

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


def _run(
    model: nn.Module, vectorizer: Vectorizer, steps_config: TrainConfig
) -> tuple[float, float, TrainResult]:
    texts, labels = _synthetic(192, seed=0)
    ids, y = vectorizer(texts), torch.tensor(labels)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        before = forward_loss(model, ids, y)[1].item()
    result = train(model, ids, y, ids[:64], y[:64], steps_config, log=lambda _: None)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        after = forward_loss(model, ids, y)[1].item()
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


def test_switch_loss_adds_the_aux_loss_of_the_routing_its_own_forward_returned():
    torch.manual_seed(0)
    config = MoEConfig(vocab_size=40, sequence_length=16, embed_dim=16, ff_dim=16, num_experts=4)
    model = SwitchClassifier(config).train()
    ids, labels = torch.randint(0, 40, (8, 16)), torch.tensor([0, 1] * 4)
    torch.manual_seed(1)
    logits, loss = forward_loss(model, ids, labels)
    torch.manual_seed(1)  # the same dropout and router jitter: the same call
    want_logits, routing = model.forward_with_routing(ids)
    aux = load_balancing_loss(routing.router, config.num_experts)
    assert torch.equal(logits, want_logits)
    want = F.cross_entropy(want_logits, labels) + config.aux_loss_weight * aux
    torch.testing.assert_close(loss, want)
    assert aux.item() > 0
