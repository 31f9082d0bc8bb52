"""How the hyperbole variants are chosen: ROC AUC on validation, then a logit threshold."""

import numpy as np
import torch
from torch import nn

from service.training.hyperbole import (
    best_threshold,
    group_bootstrap_auc,
    roc_auc,
    shift_head,
)


def test_roc_auc_is_the_share_of_positive_negative_pairs_ranked_right():
    labels = np.array([1, 0, 1, 0, 0])
    assert roc_auc(np.array([0.9, 0.1, 0.8, 0.2, 0.3]), labels) == 1.0
    assert roc_auc(np.array([0.1, 0.9, 0.2, 0.8, 0.7]), labels) == 0.0
    # positive 0.5 beats 0.1 and ties 0.5 (half); positive 0.05 beats none: (1.5 + 0) / 6
    assert roc_auc(np.array([0.5, 0.5, 0.05, 0.1, 0.9]), labels) == 1.5 / 6
    assert roc_auc(np.array([0.3, 0.3]), np.array([1, 1])) == 0.5  # one class: no ranking


def test_roc_auc_matches_counting_every_pair():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.integers(0, 2, 200)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(scores, labels) == pairs / (len(pos) * len(neg))


def test_the_threshold_maximises_validation_accuracy_nearest_zero_among_equals():
    logits = np.array([-2.0, -1.0, 0.5, 1.0, 3.0, 4.0])
    labels = np.array([0, 0, 0, 0, 1, 1])
    t = best_threshold(logits, labels)
    assert 1.0 <= t < 3.0 and np.all((logits > t) == labels.astype(bool))
    assert t == 2.0  # the midpoint between the two classes' nearest scores
    # Every threshold in [-1, 0.5) gives all three right here: of those, 0 wins.
    assert best_threshold(np.array([-1.0, 0.5, 1.0]), np.array([0, 1, 1])) == 0.0
    # All positive: any threshold below both scores is right, and 0 is one of them.
    assert best_threshold(np.array([1.0, 2.0]), np.array([1, 1])) == 0.0
    # All positive with a score below 0: the threshold must go below it, not stay at 0.
    t = best_threshold(np.array([-3.0, 2.0]), np.array([1, 1]))
    assert t < -3.0


def test_shifting_the_head_moves_the_decision_boundary_only():
    head = nn.Linear(3, 1)
    x = torch.randn(8, 3)
    before = head(x).detach()
    shift_head(head, 0.7)
    torch.testing.assert_close(head(x).detach(), before - 0.7)


def test_the_auc_interval_resamples_whole_groups_and_contains_the_estimate():
    rng = np.random.default_rng(1)
    groups = [g for g in range(60) for _ in range(3)]
    labels = np.array([1, 0, 0] * 60)
    scores = labels * 0.5 + rng.normal(0, 0.5, len(labels))
    auc, low, high = group_bootstrap_auc(groups, scores, labels, seed=0)
    assert auc == roc_auc(scores, labels)
    assert 0.5 < low <= auc <= high <= 1.0
