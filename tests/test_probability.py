"""Scores do not depend on a text's place in the batch: the sigmoid runs per value."""

import math

import torch
from torch import nn

from service.models.registry import positive_probability, sigmoid_per_value


class _Logits(nn.Module):
    """Returns the rows of ``token_ids`` reinterpreted as logits (one, or two per row)."""

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return token_ids.squeeze(-1) if token_ids.shape[-1] == 1 else token_ids


def test_each_logit_scores_the_same_alone_and_at_every_place_in_a_batch():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(40, generator=generator) * 4
    alone = [float(sigmoid_per_value(logits[i : i + 1])[0]) for i in range(40)]
    # Every batch size up to 40 and every offset: vector lanes and the scalar tail alike.
    for size in range(1, 41):
        for start in range(0, 40 - size + 1):
            batch = sigmoid_per_value(logits[start : start + size]).tolist()
            assert batch == alone[start : start + size]
    for p, x in zip(alone, logits.tolist(), strict=True):
        assert math.isclose(p, 1 / (1 + math.exp(-x)), rel_tol=1e-15)


def test_the_per_value_sigmoid_is_float64_and_saturates_without_overflow():
    p = sigmoid_per_value(torch.tensor([-1000.0, -30.0, 0.0, 30.0, 1000.0]))
    assert p.dtype == torch.float64
    assert p.tolist()[0] == 0.0 and p.tolist()[2] == 0.5 and p.tolist()[4] == 1.0
    assert 0 < p.tolist()[1] < 1e-12 and 1 - 1e-12 < p.tolist()[3] < 1


def test_two_way_logits_give_their_softmax():
    logits = torch.tensor([[0.3, -1.2], [2.0, 2.0], [-4.0, 1.5]])
    p = positive_probability(_Logits(), logits)
    torch.testing.assert_close(p, torch.softmax(logits.double(), dim=-1)[:, 1])
    one = positive_probability(_Logits(), torch.tensor([[0.7], [-2.0]]))
    torch.testing.assert_close(one, torch.sigmoid(torch.tensor([0.7, -2.0], dtype=torch.float64)))
