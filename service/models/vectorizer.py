"""Text to token ids, as Keras ``TextVectorization`` does in the keras-io example
"text classification from scratch".

Standardization: lowercase, replace ``<br />`` with a space, delete ASCII punctuation.
Split on whitespace. Vocabulary: id 0 is padding (""), id 1 is out-of-vocabulary
("[UNK]"), then the most frequent training tokens (ties keep first-seen order), up to
``max_tokens`` ids in all. Output: a fixed-length row per text, cut or padded with 0.
"""

from __future__ import annotations

import array
import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

PAD = ""
OOV = "[UNK]"
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def standardize(text: str) -> str:
    """Lowercase, turn HTML line breaks into spaces, delete punctuation."""
    return _PUNCTUATION.sub("", _BREAK.sub(" ", text.lower()))


def tokenize(text: str) -> list[str]:
    return standardize(text).split()


class Vectorizer:
    """Maps texts to fixed-length id rows with a frozen vocabulary."""

    def __init__(self, vocabulary: Sequence[str], sequence_length: int) -> None:
        if len(vocabulary) < 2 or vocabulary[0] != PAD or vocabulary[1] != OOV:
            raise ValueError('vocabulary must start with the padding "" and OOV "[UNK]" tokens')
        if sequence_length < 1:
            raise ValueError("sequence_length must be positive")
        self.vocabulary = list(vocabulary)
        self.sequence_length = sequence_length
        self._ids = {token: i for i, token in enumerate(self.vocabulary)}

    @classmethod
    def fit(cls, texts: Iterable[str], max_tokens: int, sequence_length: int) -> Vectorizer:
        """Build the vocabulary from the most frequent tokens of ``texts``."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text))
        # Counter.most_common is a stable sort, so ties keep first-seen order.
        words = [word for word, _ in counts.most_common(max_tokens - 2)]
        return cls([PAD, OOV, *words], sequence_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def token_ids(self, text: str) -> list[int]:
        """Every token's id, neither cut nor padded."""
        return [self._ids.get(token, 1) for token in tokenize(text)]

    def encode(self, text: str) -> list[int]:
        ids = self.token_ids(text)[: self.sequence_length]
        return ids + [0] * (self.sequence_length - len(ids))

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """A [len(texts), sequence_length] int64 tensor of token ids.

        Written into one zeroed int64 buffer, row by row, which the tensor then shares:
        ``torch.tensor`` on nested lists reads every id as a Python object, and for 32 short
        texts took ten times as long as tokenizing them."""
        length = self.sequence_length
        if not texts:
            return torch.zeros(0, length, dtype=torch.long)
        ids = array.array("q", bytes(8 * len(texts) * length))  # zeros: the padding
        for row, text in enumerate(texts):
            tokens = self.token_ids(text)[:length]
            start = row * length
            ids[start : start + len(tokens)] = array.array("q", tokens)
        return torch.frombuffer(ids, dtype=torch.long).reshape(len(texts), length)

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {"sequence_length": self.sequence_length, "vocabulary": self.vocabulary},
                ensure_ascii=False,
            )
        )

    @classmethod
    def load(cls, path: Path) -> Vectorizer:
        data = json.loads(path.read_text())
        return cls(data["vocabulary"], int(data["sequence_length"]))
