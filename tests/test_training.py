"""A few optimisation steps on tiny synthetic data must reduce the loss."""

import random

import pytest
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


# --- short text: spans of reviews, length-balanced batches, the short-text checks ----------

REVIEWS = [
    "A great film. The cast is superb!<br /><br />I loved the ending? Yes.",
    "Awful. Boring plot, terrible acting.",
    "The film was dreadful from start to finish and the actor hated the plot",
]


def _vectorizer(length: int = 60) -> Vectorizer:
    from service.training.short_text import sentences

    pieces = [s for text in REVIEWS for s in sentences(text)]
    return Vectorizer.fit(REVIEWS + pieces, max_tokens=60, sequence_length=length)


def test_sentences_split_at_ends_and_line_breaks_and_keep_the_tokens():
    from service.models.vectorizer import tokenize
    from service.training.short_text import sentences

    parts = sentences(REVIEWS[0])
    assert parts == ["A great film.", "The cast is superb!", "I loved the ending?", "Yes."]
    assert [t for p in parts for t in tokenize(p)] == tokenize(REVIEWS[0])


def test_spans_are_runs_of_whole_sentences_of_their_review():
    from service.training.augment import SpanBatches, SpanConfig

    vec = _vectorizer()
    config = SpanConfig(extra_spans=1.0, max_sentences=2, max_tokens=60)
    batches = SpanBatches(vec, REVIEWS, config, seed=0, trim=True)
    assert batches.starts[0] == [0, 3, 7, 11] and batches.full[0] == vec.token_ids(REVIEWS[0])
    for _ in range(50):
        span = batches.span(0)
        full, starts = batches.full[0], batches.starts[0]
        begin = next(s for s in starts if full[s : s + len(span)] == span)
        end = begin + len(span)
        assert end in [*starts[1:], len(full)]  # it ends where a sentence ends
        assert sum(begin <= s < end for s in starts) <= 2
    ids, rows = batches.extra(torch.tensor([0, 1, 2]))
    assert len(rows) == 3 and ids.shape[1] <= vec.sequence_length
    capped = SpanBatches(vec, REVIEWS, SpanConfig(max_tokens=4), seed=0)
    assert all(len(capped.span(2)) == 4 for _ in range(10))  # one 14-token sentence


def test_a_trimmed_cnn_batch_computes_what_the_full_padding_does():
    from service.training.augment import SpanBatches, SpanConfig

    vec = _vectorizer(length=120)
    torch.manual_seed(0)
    model = SentimentCNN(CNNConfig(vocab_size=60, sequence_length=120, embed_dim=8, filters=8))
    model.eval()
    batches = SpanBatches(vec, REVIEWS, SpanConfig(), seed=0, trim=True)
    index = torch.tensor([1, 0, 2])
    trimmed = batches.batch(index)
    assert trimmed.shape[1] < 120
    with torch.no_grad():
        torch.testing.assert_close(model(trimmed), model(vec([REVIEWS[i] for i in index])))


def test_length_balanced_order_is_a_permutation_of_sorted_runs():
    from service.training.train import epoch_order

    lengths = torch.randint(1, 500, (1000,), generator=torch.Generator().manual_seed(0))
    order = epoch_order(1000, 32, torch.Generator().manual_seed(1), lengths, buckets=10)
    assert sorted(order.tolist()) == list(range(1000))
    spread = [int(lengths[b].max() - lengths[b].min()) for b in order[:960].split(32)]
    assert sum(spread) / len(spread) < 100  # random batches of 32 spread over ~450
    again = epoch_order(1000, 32, torch.Generator().manual_seed(1), lengths, buckets=10)
    assert torch.equal(order, again)


def _tiny_cnn_and_data(seed: int) -> tuple[SentimentCNN, torch.Tensor, torch.Tensor]:
    texts, labels = _synthetic(96, seed=seed)
    vec = Vectorizer.fit(texts, max_tokens=40, sequence_length=20)
    torch.manual_seed(0)
    model = SentimentCNN(
        CNNConfig(vocab_size=40, sequence_length=20, embed_dim=8, filters=8, kernel_size=3,
                  stride=1, hidden=8, dropout=0.1)
    )  # fmt: skip
    return model, vec(texts), torch.tensor(labels)


def test_training_records_the_short_validation_texts():
    model, ids, y = _tiny_cnn_and_data(seed=1)
    config = TrainConfig(epochs=2, batch_size=16, max_lr=1e-2, short_weight=0.5)
    result = train(model, ids, y, ids, y, config, log=lambda _: None, short_val=(ids[:8], y[:8]))
    assert all("val_short_accuracy" in row for row in result.history)


def test_the_short_text_checks_are_balanced_and_held_out():
    from service.training.data import Review
    from service.training.short_text import read_other_domains, validation_sentences

    other = read_other_domains()
    assert len(other.texts) == 300 and sum(other.labels) == 150
    assert other.domains is not None
    for domain in set(other.domains):
        chosen = [y for y, d in zip(other.labels, other.domains, strict=True) if d == domain]
        assert len(chosen) == 60 and sum(chosen) == 30
    train_rows = [
        Review(f"This was {w} and {w} again. Nothing else.", label, "train", f"train/x/{i}_1")
        for i, (w, label) in enumerate([("wonderful", 1), ("awful", 0)] * 20)
    ]
    validation = [
        Review("The plot. It was a wonderful film overall.", 1, "train", "train/pos/1_10"),
        Review("It was an awful film overall. Fine.", 0, "train", "train/neg/2_1"),
        Review("It was an awful film overall.", 0, "train", "train/neg/3_4"),  # rating 4
    ]
    got = validation_sentences(train_rows, validation, seed=0, n=10)
    want = ["It was a wonderful film overall.", "It was an awful film overall."]
    assert sorted(got.texts) == want
    assert sorted(got.labels) == [0, 1]


def test_a_validation_score_chooses_the_checkpoint_instead_of_the_accuracy():
    model, ids, y = _tiny_cnn_and_data(seed=2)
    scores = iter([0.2, 0.9, 0.1, 0.3])  # the second check must be kept, whatever its accuracy
    states: list[dict[str, torch.Tensor]] = []

    def score(checked: nn.Module) -> float:
        states.append({k: v.clone() for k, v in checked.state_dict().items()})
        return next(scores)

    config = TrainConfig(epochs=4, batch_size=16, max_lr=1e-2)
    result = train(model, ids, y, ids, y, config, log=lambda _: None, val_score=score)
    assert [row["val_score"] for row in result.history] == [0.2, 0.9, 0.1, 0.3]
    assert result.best_epoch == 2.0 and result.best_val_score == 0.9
    assert result.best_val_accuracy == result.history[1]["val_accuracy"]
    # The weights of that check are the ones restored, not the last epoch's.
    final = result.model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in states[1].items())
    assert not all(torch.equal(final[k], v) for k, v in states[3].items())


def test_a_validation_score_and_short_texts_cannot_both_choose():
    model, ids, y = _tiny_cnn_and_data(seed=3)
    with pytest.raises(ValueError, match="not both"):
        train(model, ids, y, ids, y, TrainConfig(epochs=1), log=lambda _: None,
              val_score=lambda _m: 0.5, short_val=(ids[:4], y[:4]))  # fmt: skip


def test_no_checkpoint_to_keep_is_a_clear_error():
    model, ids, y = _tiny_cnn_and_data(seed=4)
    with pytest.raises(ValueError, match="no validation check"):
        train(model, ids, y, ids, y, TrainConfig(epochs=1), log=lambda _: None,
              val_score=lambda _m: float("nan"))  # fmt: skip
