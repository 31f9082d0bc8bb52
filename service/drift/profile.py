"""What drift is measured on: per-text descriptors, and the reference profile of a model.

A text is described by its length in characters, its word count (the vectorizer's tokens),
the share of its tokens outside the model's vocabulary, the vocabulary ids of its tokens (at
most :data:`MAX_TOKENS`, evenly spaced; kept as keyed hashes until a check resolves them,
see :class:`Describer`), and the model's score (the probability of its second label). No
descriptor holds the text: resolved, the ids name words of the training vocabulary only,
and an out-of-vocabulary token is the id 1 whatever it was.

The reference profile (``drift_profile.json`` beside the weights) holds the same descriptors
of the model's training texts, summarised: :data:`QUANTILES` quantiles of each numeric
descriptor, the token count per vocabulary id, and the score histogram of the model's
predictions on a seeded sample of the training texts. It records the weights' SHA-256, so a
profile left over from other weights is detected (:meth:`ReferenceProfile.matches`).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import string
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.models.artifacts import CARD, VOCAB

PROFILE_FILE = "drift_profile.json"
SCHEMA = 1
QUANTILES = 1000  # quantile points kept per numeric descriptor (the reference sample)
# Tokens of one text that count toward its ids and its OOV share: all of a short text, else
# this many evenly spaced ones. Every token of a long review costs the request and the
# check CPU (and cache); a sample of 32 keeps the monitor within its CPU budget, and a
# window of 1,000 texts still holds some 30,000 tokens.
MAX_TOKENS = 32
SCORE_BINS = 10  # equal-width bins of the score over [0, 1]
SCORE_SAMPLE = 5000  # training texts the score distribution is measured on
NUMERIC = ("length", "words", "oov_share")
OOV_ID = 1


_PUNCTUATION = string.punctuation.encode()
_BREAK_BYTES = re.compile(rb"<br\s*/?>")  # the vectorizer's, on the lowercased text


def tokenize_bytes(text: str) -> list[bytes]:
    """The vectorizer's tokens (:func:`service.models.vectorizer.tokenize`) as UTF-8 bytes,
    in about half its time: ASCII punctuation deleted by ``bytes.translate``. The one
    difference: only ASCII whitespace separates tokens (not, say, a no-break space)."""
    data = text.lower().encode()
    if b"<br" in data:
        data = _BREAK_BYTES.sub(b" ", data)
    return data.translate(None, _PUNCTUATION).split()


class ProfileError(ValueError):
    """A reference profile is missing, malformed, or belongs to other weights."""


@dataclass(frozen=True, slots=True)
class TextDescriptor:
    """What is kept of one text: never the text."""

    length: int
    words: int
    hashes: bytes  # keyed hashes (int64) of (at most MAX_TOKENS of) its tokens
    score: float = float("nan")  # P(second label); NaN when no prediction was made


@dataclass(frozen=True)
class Described:
    """Many descriptors resolved against the vocabulary: one value per text for each numeric
    descriptor and the score, and the vocabulary ids of all their sampled tokens."""

    numeric: dict[str, np.ndarray]  # NUMERIC and "score"
    ids: np.ndarray  # vocabulary ids, OOV_ID for unknown tokens
    token_counts: np.ndarray  # per vocabulary id


class Describer:
    """Turns texts into descriptors with one model's vocabulary.

    On the request path a token is only hashed with Python's ``hash`` (SipHash, keyed per
    process by PYTHONHASHSEED): looking it up in the vocabulary there costs the request
    cache misses. :meth:`resolve` maps the hashes of many texts to vocabulary ids at once (a
    sorted array, a binary search); a token whose hash is no vocabulary word's is out of
    vocabulary, and its hash names nothing readable.
    """

    def __init__(self, vocabulary: Sequence[str]) -> None:
        self.vocabulary = list(vocabulary)
        self.vocab_size = len(vocabulary)
        words = np.array([hash(w.encode()) for w in self.vocabulary[2:]], dtype=np.int64)
        self._order = np.argsort(words, kind="stable")
        self._sorted = words[self._order]

    @classmethod
    def for_artifact(cls, folder: Path) -> Describer:
        return cls(json.loads((folder / VOCAB).read_text())["vocabulary"])

    def describe(self, text: str, score: float = float("nan")) -> TextDescriptor:
        tokens = tokenize_bytes(text)
        kept = tokens[:: -(-len(tokens) // MAX_TOKENS)] if len(tokens) > MAX_TOKENS else tokens
        hashes = array("q", map(hash, kept)).tobytes()
        return TextDescriptor(len(text), len(tokens), hashes, score)

    def resolve(self, descriptors: Sequence[TextDescriptor]) -> Described:
        hashes = np.frombuffer(b"".join(d.hashes for d in descriptors), dtype=np.int64)
        found = np.searchsorted(self._sorted, hashes).clip(max=len(self._sorted) - 1)
        known = self._sorted[found] == hashes
        ids = np.where(known, self._order[found] + 2, OOV_ID)
        n = len(descriptors)
        sizes = np.fromiter((len(d.hashes) // 8 for d in descriptors), np.int64, n)
        unknown = np.concatenate([[0], np.cumsum(~known)])
        ends = np.cumsum(sizes)
        oov = (unknown[ends] - unknown[ends - sizes]).astype(float)
        numeric = {
            "length": np.fromiter((d.length for d in descriptors), float, n),
            "words": np.fromiter((d.words for d in descriptors), float, n),
            "oov_share": np.divide(oov, sizes, out=np.zeros(n), where=sizes > 0),
            "score": np.fromiter((d.score for d in descriptors), float, n),
        }
        return Described(numeric, ids, np.bincount(ids, minlength=self.vocab_size))


def score_bins(scores: np.ndarray) -> np.ndarray:
    """The bin of each score: [0, 0.1) is 0, ..., [0.9, 1.0] is 9; NaN scores are dropped."""
    scores = scores[~np.isnan(scores)]
    return np.clip((scores * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1)


def mid_quantiles(values: np.ndarray, points: int = QUANTILES) -> np.ndarray:
    """``points`` quantiles at (i + 0.5) / points: a sample with the same distribution."""
    return np.quantile(values, (np.arange(points) + 0.5) / points)


@dataclass(frozen=True)
class ReferenceProfile:
    """A model's training texts, summarised for drift tests (no raw text)."""

    model: str
    weights_sha256: str
    texts: int
    score_texts: int
    quantiles: dict[str, list[float]]  # NUMERIC feature -> QUANTILES points
    token_counts: list[int]  # per vocabulary id; index 1 is out of vocabulary
    score_counts: list[int]  # SCORE_BINS bins
    source: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    summary: dict[str, dict[str, float]] = field(default_factory=dict)

    def matches(self, card: Mapping[str, Any]) -> bool:
        """True when this profile was made for the weights ``card`` pins."""
        return self.weights_sha256 == card.get("weights_sha256")

    def sample(self, feature: str) -> np.ndarray:
        """The quantile points of a numeric feature, used as the reference sample."""
        return np.asarray(self.quantiles[feature], dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "created": self.created,
            "source": self.source,
            "texts": self.texts,
            "score_texts": self.score_texts,
            "max_tokens_per_text": MAX_TOKENS,
            "summary": self.summary,
            "quantiles": self.quantiles,
            "score_counts": self.score_counts,
            "token_counts": self.token_counts,
        }

    def save(self, folder: Path) -> Path:
        path = folder / PROFILE_FILE
        path.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> ReferenceProfile:
        path = folder / PROFILE_FILE
        if not path.is_file():
            raise ProfileError(
                f"{folder.name}: no {PROFILE_FILE}; build it with "
                "`python -m service drift-profile --data <aclImdb>`"
            )
        data = json.loads(path.read_text())
        if data.get("schema") != SCHEMA or data.get("max_tokens_per_text") != MAX_TOKENS:
            raise ProfileError(f"{path}: schema {data.get('schema')}, expected {SCHEMA}")
        return cls(
            model=data["model"],
            weights_sha256=data["weights_sha256"],
            texts=int(data["texts"]),
            score_texts=int(data["score_texts"]),
            quantiles={name: list(data["quantiles"][name]) for name in NUMERIC},
            token_counts=list(data["token_counts"]),
            score_counts=list(data["score_counts"]),
            source=dict(data.get("source", {})),
            created=str(data.get("created", "")),
            summary=dict(data.get("summary", {})),
        )


def build_profile(
    model: str,
    weights_sha256: str,
    describer: Describer,
    texts: Sequence[str],
    scores: Sequence[float],
    source: Mapping[str, Any],
) -> ReferenceProfile:
    """The profile of ``texts`` (all of them) and ``scores`` (the model's, on a sample)."""
    described = describer.resolve([describer.describe(text) for text in texts])
    columns = described.numeric
    quantiles = {
        name: [round(float(v), 6) for v in mid_quantiles(columns[name])] for name in NUMERIC
    }
    summary = {
        name: {
            "mean": round(float(columns[name].mean()), 4),
            "std": round(float(columns[name].std()), 4),
            "median": round(float(np.median(columns[name])), 4),
        }
        for name in NUMERIC
    }
    score_array = np.asarray(scores, dtype=float)
    counts = np.bincount(score_bins(score_array), minlength=SCORE_BINS)
    summary["score"] = {
        "mean": round(float(score_array.mean()), 4),
        "positive_share": round(float((score_array >= 0.5).mean()), 4),
    }
    return ReferenceProfile(
        model=model,
        weights_sha256=weights_sha256,
        texts=len(texts),
        score_texts=len(score_array),
        quantiles=quantiles,
        token_counts=[int(c) for c in described.token_counts],
        score_counts=[int(c) for c in counts],
        source=dict(source),
        created=dt.date.today().isoformat(),
        summary=summary,
    )


def profile_artifact(
    folder: Path,
    texts: Sequence[str],
    *,
    source: Mapping[str, Any],
    seed: int = 1337,
    score_sample: int = SCORE_SAMPLE,
    log: Callable[[str], None] = lambda _: None,
) -> ReferenceProfile:
    """Build and write the profile of the artifact in ``folder`` from its training texts:
    descriptors of all ``texts``, scores of the model on a seeded sample of them."""
    from service.models.registry import LoadedModel

    model = LoadedModel(folder)  # checks the weights against the card
    sample = random.Random(seed).sample(list(texts), min(score_sample, len(texts)))
    scores: list[float] = []
    for start in range(0, len(sample), 64):
        scores.extend(model.predict_proba(sample[start : start + 64]))
    card = json.loads((folder / CARD).read_text())
    profile = build_profile(
        card["name"],
        card["weights_sha256"],
        Describer(model.vectorizer.vocabulary),
        texts,
        scores,
        {**source, "score_sample": len(sample), "score_sample_seed": seed},
    )
    path = profile.save(folder)
    log(
        f"{card['name']}: drift profile of {len(texts)} training texts ({len(sample)} scored), "
        f"{path.stat().st_size:,} bytes"
    )
    return profile


def training_texts(data: Path, seed: int) -> list[str]:
    """The training split of aclImdb at ``data`` as ``make train`` cuts it with ``seed`` (the
    validation reviews held out), i.e. the texts a shipped model was trained on."""
    from service.training.build import VALIDATION_FRACTION
    from service.training.data import read_aclimdb, split_reviews

    return [r.text for r in split_reviews(read_aclimdb(data), VALIDATION_FRACTION, seed).train]


def rebuild_profiles(
    data: Path,
    root: Path,
    names: Sequence[str],
    *,
    score_sample: int = SCORE_SAMPLE,
    log: Callable[[str], None] = lambda _: None,
) -> list[ReferenceProfile]:
    """(Re)write the profile of each existing artifact ``names`` under ``root`` from the
    training split its card records (dataset seed), without retraining anything."""
    texts_by_seed: dict[int, list[str]] = {}
    profiles = []
    for name in names:
        folder = root / name
        card = json.loads((folder / CARD).read_text())
        seed = int(card.get("data", {}).get("seed", 1337))
        if seed not in texts_by_seed:
            log(f"reading the training split of {data} (seed {seed})")
            texts_by_seed[seed] = training_texts(data, seed)
        source = {
            "dataset": card.get("data", {}).get("dataset", str(data)),
            "file": data.name,
            "split": "train (validation held out, as make train cuts it)",
            "seed": seed,
        }
        profiles.append(
            profile_artifact(
                folder,
                texts_by_seed[seed],
                source=source,
                seed=seed,
                score_sample=score_sample,
                log=log,
            )
        )
    return profiles
