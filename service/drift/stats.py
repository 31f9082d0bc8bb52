"""The drift tests, in numpy only (the service does not need scipy or Evidently).

Each feature has one test, computed exactly as Evidently computes the method of the same
name, so the online monitor and the offline report (:mod:`service.drift.report`) agree:

- ``length``, ``words``, ``oov_share``: ``wasserstein``, the first Wasserstein distance
  between the reference and current samples divided by the reference's standard deviation
  (Evidently's "Wasserstein distance (normed)"; scipy's ``wasserstein_distance``);
- ``tokens``: ``psi`` over token buckets (every token is one observation; its bucket is the
  out-of-vocabulary bucket or a band of vocabulary ranks, see :data:`TOKEN_BANDS`);
- ``score``: ``psi`` over the ten score bins of one text each.

PSI follows Evidently's categorical form: shares of the values seen on either side, a zero
share replaced by 0.0001 (or a millionth of the smallest share when that is smaller).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.drift.profile import NUMERIC, OOV_ID, ReferenceProfile

# Vocabulary ids are frequency ranks (id 2 is the commonest training token). A token's bucket
# is 0 when it is out of vocabulary, else the band of ranks its id falls in.
TOKEN_BANDS = (2, 12, 52, 202, 1002, 3002, 10002)
TOKEN_BUCKETS = ("oov", "2-11", "12-51", "52-201", "202-1001", "1002-3001", "3002-10001",
                 "10002+")  # fmt: skip

Test = Literal["wasserstein", "psi"]


@dataclass(frozen=True)
class Feature:
    name: str
    test: Test
    kind: Literal["numeric", "categorical"]
    description: str


FEATURES: tuple[Feature, ...] = (
    Feature("length", "wasserstein", "numeric", "text length in characters"),
    Feature("words", "wasserstein", "numeric", "word count (the vectorizer's tokens)"),
    Feature("oov_share", "wasserstein", "numeric", "share of tokens outside the vocabulary"),
    Feature("tokens", "psi", "categorical", "token distribution over vocabulary-rank buckets"),
    Feature("score", "psi", "categorical", "the model's score, ten bins over [0, 1]"),
)
FEATURE_NAMES = tuple(feature.name for feature in FEATURES)
assert set(NUMERIC) < set(FEATURE_NAMES)


@dataclass(frozen=True)
class FeatureResult:
    feature: str
    test: Test
    statistic: float
    threshold: float

    @property
    def drift(self) -> bool:
        return self.statistic >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "test": self.test,
            "statistic": round(self.statistic, 4),
            "threshold": self.threshold,
            "drift": self.drift,
        }


def wasserstein(u: np.ndarray, v: np.ndarray) -> float:
    """The first Wasserstein distance between two samples (as scipy.stats computes it)."""
    u, v = np.sort(u), np.sort(v)
    values = np.sort(np.concatenate([u, v]))
    deltas = np.diff(values)
    u_cdf = np.searchsorted(u, values[:-1], side="right") / u.size
    v_cdf = np.searchsorted(v, values[:-1], side="right") / v.size
    return float(np.sum(np.abs(u_cdf - v_cdf) * deltas))


def wasserstein_norm(reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein distance in units of the reference's standard deviation (at least 0.001)."""
    return wasserstein(reference, current) / max(float(np.std(reference)), 0.001)


def _fill_zeros(shares: np.ndarray) -> np.ndarray:
    smallest = shares[shares != 0].min()
    return np.where(shares == 0, smallest / 10**6 if smallest <= 0.0001 else 0.0001, shares)


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Population stability index between two histograms over the same categories (0 when
    either side is empty: nothing to compare)."""
    if reference_counts.sum() == 0 or current_counts.sum() == 0:
        return 0.0
    seen = (reference_counts > 0) | (current_counts > 0)
    reference = _fill_zeros(reference_counts[seen] / reference_counts.sum())
    current = _fill_zeros(current_counts[seen] / current_counts.sum())
    return float(np.sum((reference - current) * np.log(reference / current)))


def token_buckets(counts_by_id: np.ndarray) -> np.ndarray:
    """Per-id token counts folded into the :data:`TOKEN_BUCKETS`."""
    counts = np.asarray(counts_by_id, dtype=np.int64)
    edges = [*TOKEN_BANDS, max(len(counts), TOKEN_BANDS[-1])]
    bands = [counts[lo:hi].sum() for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return np.array([counts[OOV_ID], *bands], dtype=np.int64)


def bucket_of(ids: np.ndarray) -> np.ndarray:
    """The bucket index of each token id (0 = out of vocabulary)."""
    bucket = np.searchsorted(np.array(TOKEN_BANDS), ids, side="right")
    return np.where(ids == OOV_ID, 0, bucket)


@dataclass(frozen=True)
class Window:
    """The current sample as the tests read it: numeric columns, token and score counts."""

    texts: int
    numeric: Mapping[str, np.ndarray]
    token_counts: np.ndarray  # per vocabulary id
    score_counts: np.ndarray  # per score bin


def evaluate(
    profile: ReferenceProfile, window: Window, thresholds: Mapping[str, float]
) -> list[FeatureResult]:
    """Every feature's statistic against the reference, with its threshold."""
    results = []
    for feature in FEATURES:
        if feature.name in NUMERIC:
            statistic = wasserstein_norm(profile.sample(feature.name), window.numeric[feature.name])
        elif feature.name == "tokens":
            statistic = psi(
                token_buckets(np.asarray(profile.token_counts)), token_buckets(window.token_counts)
            )
        else:
            statistic = psi(np.asarray(profile.score_counts), window.score_counts)
        results.append(
            FeatureResult(feature.name, feature.test, statistic, thresholds[feature.name])
        )
    return results


def word_shifts(
    vocabulary: Sequence[str],
    reference_counts: np.ndarray,
    current_counts: np.ndarray,
    top: int = 10,
    min_count: int = 3,
) -> dict[str, list[dict[str, Any]]]:
    """The vocabulary words that most gained and most lost weight: each word's share of the
    in-vocabulary tokens on both sides (smoothed by half a token), ranked by its term of
    the PSI between the two word distributions; a gained word occurs at least
    ``min_count`` times in the current sample. Shares are per 1,000 tokens."""
    ref = np.asarray(reference_counts, dtype=float)[2:]
    cur = np.asarray(current_counts, dtype=float)[2:]
    size = min(len(ref), len(cur), len(vocabulary) - 2)
    ref, cur = ref[:size], cur[:size]
    if cur.sum() == 0:
        return {"gained": [], "lost": []}
    p = (cur + 0.5) / (cur.sum() + 0.5 * size)
    q = (ref + 0.5) / (ref.sum() + 0.5 * size)
    weight = (p - q) * np.log(p / q)
    gained = np.flatnonzero((p > q) & (cur >= min_count))
    lost = np.flatnonzero(p < q)

    cur_total, ref_total = cur.sum(), max(ref.sum(), 1.0)

    def listing(indices: np.ndarray) -> list[dict[str, Any]]:
        best = indices[np.argsort(-weight[indices], kind="stable")[:top]]
        return [
            {
                "word": vocabulary[index + 2],
                "current_per_1k": round(float(cur[index] / cur_total * 1000), 3),
                "reference_per_1k": round(float(ref[index] / ref_total * 1000), 3),
            }
            for index in best
        ]

    return {"gained": listing(gained), "lost": listing(lost)}
