"""Training views of the reviews that carry over to short text.

A model trained only on whole reviews (230 words on average) learns to find a few strong
phrases among many; served a single sentence it sees mostly padding and answers near 0.5
(the CNN) or with the bias of the padding (a mean-pooled Transformer). ``SpanBatches``
makes each training batch a mix of whole reviews and random spans of 1 to
``max_sentences`` consecutive sentences of other reviews, labelled with their review's
label, and pads every batch only as far as its longest row needs (``trim``): for the CNN
this gives exactly the output of the full 500-token padding (global max pool over windows
that are identical in both), at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from service.models.vectorizer import Vectorizer
from service.training.short_text import sentences

# The CNN's second convolution sees 25 tokens with a step of 9: a row padded this far past
# its last token has every window the full-length padding has (one of them all padding).
# At least service.models.padding.padding_to_keep(7, 3, 2) = 33; kept at 40, the value the
# shipped artifacts were trained with.
CNN_PAD_MARGIN = 40


@dataclass(frozen=True)
class SpanConfig:
    # Share of each batch's rows that are a span instead of the whole review.
    span_fraction: float = 0.0
    # Spans added to each batch, as a share of its reviews: a second, short forward of
    # spans of the same reviews (their own padding width), weighed by its row count.
    extra_spans: float = 0.0
    max_sentences: int = 3
    # A span is cut to this many tokens (from a random start within it when longer).
    max_tokens: int = 60
    # In training, this share of the (non-padding) tokens is replaced by the OOV id.
    word_dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class SpanBatches:
    """Token ids of each review, whole and per sentence, and the batches built from them."""

    def __init__(
        self,
        vectorizer: Vectorizer,
        texts: Sequence[str],
        config: SpanConfig,
        seed: int,
        trim: bool = False,
        pad_margin: int = CNN_PAD_MARGIN,
    ) -> None:
        self.config = config
        self.length = vectorizer.sequence_length
        self.trim = trim
        self.pad_margin = pad_margin
        self.generator = torch.Generator().manual_seed(seed)
        self.full: list[list[int]] = []
        self.starts: list[list[int]] = []  # token offset of each sentence in ``full``
        for text in texts:
            ids: list[int] = []
            starts: list[int] = []
            for sentence in sentences(text):
                piece = vectorizer.token_ids(sentence)
                if piece:
                    starts.append(len(ids))
                    ids += piece
            self.full.append(ids)
            self.starts.append(starts or [0])

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def span(self, row: int) -> list[int]:
        """A random span of 1 to max_sentences consecutive sentences of review ``row``."""
        ids, starts = self.full[row], self.starts[row]
        first = self._randint(len(starts))
        count = 1 + self._randint(self.config.max_sentences)
        last = first + count
        end = starts[last] if last < len(starts) else len(ids)
        piece = ids[starts[first] : end]
        cap = self.config.max_tokens
        if len(piece) > cap:
            offset = self._randint(len(piece) - cap + 1)
            piece = piece[offset : offset + cap]
        return piece

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """The training ids of these rows: a span for ``span_fraction`` of them (seeded),
        the whole review (cut to the sequence length) for the others."""
        rows: list[list[int]] = []
        draws = torch.rand(len(index), generator=self.generator)
        for row, draw in zip(index.tolist(), draws.tolist(), strict=True):
            if draw < self.config.span_fraction:
                rows.append(self.span(row))
            else:
                rows.append(self.full[row][: self.length])
        return self._pad(rows)

    def extra(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, which rows of ``index``): ``extra_spans`` x len(index) spans of these
        reviews (each review once before any twice), seeded."""
        count = round(self.config.extra_spans * len(index))
        rounds = -(-count // max(1, len(index)))  # more spans than reviews: some twice
        perms = [torch.randperm(len(index), generator=self.generator) for _ in range(rounds)]
        chosen = torch.cat(perms)[:count] if perms else torch.zeros(0, dtype=torch.long)
        return self._pad([self.span(int(index[i])) for i in chosen]), chosen

    def _pad(self, rows: list[list[int]]) -> torch.Tensor:
        width = self.length
        if self.trim:
            width = min(self.length, max(len(r) for r in rows) + self.pad_margin)
        out = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                out[i, : len(r)] = torch.tensor(r[:width], dtype=torch.long)
        if self.config.word_dropout > 0:
            hide = torch.rand(out.shape, generator=self.generator) < self.config.word_dropout
            out = out.masked_fill(hide & (out != 0), 1)
        return out
