"""Trailing padding cut before the int8 CNN's convolutions changes no output bit."""

import pytest
import torch

from service.models import quantize
from service.models.cnn import CNNConfig, SentimentCNN
from service.models.padding import padding_to_keep, trim_for_convolutions, used_length
from service.models.quantize import Int8SentimentCNN, calibrate_int8, int8_tensors

CONFIG = CNNConfig(vocab_size=300, sequence_length=120, embed_dim=32, filters=32, hidden=32)


def _padded(lengths: list[int], length: int = 120, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, 300, (n,), generator=generator)
    return ids


@pytest.fixture(scope="module", params=[True, False], ids=["int_mm", "fp32-gemm"])
def int8_model(request: pytest.FixtureRequest) -> Int8SentimentCNN:
    """Both ways of multiplying: the cut must hold for each."""
    torch.manual_seed(0)
    model = SentimentCNN(CONFIG).eval()
    calibration = [_padded([120, 60, 5, 90], seed=1)]
    tensors = int8_tensors(model, calibrate_int8(model, calibration))
    return Int8SentimentCNN(CONFIG, tensors, integer_products=request.param).eval()


def test_used_length_is_the_longest_rows_last_id():
    assert used_length(_padded([3, 17, 0])) == 17
    assert used_length(_padded([0, 0])) == 0
    assert used_length(torch.zeros(0, 120, dtype=torch.long)) == 0
    ids = _padded([5])
    ids[0, 40] = 7  # an id after a gap counts: only trailing padding is cut
    assert used_length(ids) == 41


@pytest.mark.parametrize(
    ("longest", "kept"),
    [(0, 25), (1, 34), (9, 34), (10, 43), (90, 115), (91, 120), (120, 120)],
)
def test_the_cut_keeps_every_window_of_the_text_and_one_of_padding_alone(longest, kept):
    # Two convolutions of kernel 7, stride 3: the second's window m reads inputs 9m .. 9m+24.
    ids = _padded([longest, min(longest, 4)])
    assert trim_for_convolutions(ids, kernel=7, stride=3, layers=2).shape == (2, kept)


@pytest.mark.parametrize("lengths", [[1], [4, 30], [0, 12], [57, 3, 80], [119, 2], [120, 9]])
def test_the_int8_cnn_gives_bit_identical_outputs_with_and_without_the_cut(
    int8_model, lengths, monkeypatch
):
    ids = _padded(lengths, seed=len(lengths))
    with torch.inference_mode():
        cut = int8_model(ids)
        monkeypatch.setattr(quantize, "trim_for_convolutions", lambda ids, *_, **__: ids)
        full = int8_model(ids)
    assert torch.equal(cut, full)


def test_the_cut_is_taken_when_the_text_is_short(int8_model, monkeypatch):
    seen: list[int] = []
    real = quantize.trim_for_convolutions

    def spy(ids, *args, **kwargs):
        out = real(ids, *args, **kwargs)
        seen.append(out.shape[1])
        return out

    monkeypatch.setattr(quantize, "trim_for_convolutions", spy)
    with torch.inference_mode():
        int8_model(_padded([12]))
    assert seen == [25 + 9 * 2]


def test_the_training_batches_pad_at_least_as_far_as_the_cut_needs():
    from service.training.augment import CNN_PAD_MARGIN

    cnn = CNNConfig()
    needed = padding_to_keep(cnn.kernel_size, cnn.stride, layers=2)
    assert needed == 33  # up to 8 tokens to the next window start, then its 25
    assert needed <= CNN_PAD_MARGIN
    for longest in range(0, 60):  # the cut never keeps more padding than that
        ids = _padded([longest])
        kept = trim_for_convolutions(ids, kernel=7, stride=3, layers=2).shape[1]
        assert kept - longest <= padding_to_keep(7, 3, 2) or kept == ids.shape[1]
