"""Cutting trailing padding off a batch of token ids without changing any model output.

Texts are padded with id 0 at the end to the sequence length, and most reviews are shorter
than it (the median test review fills 168 of the CNN's 500 positions). For a model that
max-pools over positions, every window that sees only padding yields the same vector, so
one such window gives the same maximum as all of them: the ids can be cut to the longest
text of the batch plus one all-padding window, and the output is bit-for-bit the same
(the int8 CNN's convolutions are integer products, so no rounding depends on the length).
"""

from __future__ import annotations

import torch


def used_length(token_ids: torch.Tensor) -> int:
    """Positions up to the last non-padding id of any row ([batch, length] ids)."""
    if token_ids.numel() == 0:
        return 0
    columns = token_ids.amax(dim=0).nonzero()  # ids are >= 0: a column's max is 0 iff padding
    return int(columns[-1]) + 1 if len(columns) else 0


def _geometry(kernel: int, stride: int, layers: int) -> tuple[int, int]:
    """(jump, field) of the last of ``layers`` stacked valid convolutions: its window ``m``
    reads inputs ``[jump * m, jump * m + field)``."""
    field = 1
    for _ in range(layers):
        field = field * stride + (kernel - stride)
    return stride**layers, field


def padding_to_keep(kernel: int, stride: int, layers: int) -> int:
    """The most padding past a row's last token that the cut below can need: padding this
    far gives a batch every window the full-length padding has."""
    jump, field = _geometry(kernel, stride, layers)
    return jump - 1 + field


def trim_for_convolutions(
    token_ids: torch.Tensor, kernel: int, stride: int, layers: int
) -> torch.Tensor:
    """``token_ids`` cut so that ``layers`` stacked valid convolutions (``kernel``,
    ``stride``) followed by a max over positions give exactly the output of the full ids.

    Windows of the full ids that lie beyond the used length ``n`` all read padding alone;
    the kept ids are those of windows ``0 .. ceil(n / jump)``, the last of which is the
    first all-padding one.
    """
    jump, field = _geometry(kernel, stride, layers)
    first_padding_window = -(-used_length(token_ids) // jump)
    keep = jump * first_padding_window + field
    return token_ids[:, :keep] if keep < token_ids.shape[1] else token_ids
