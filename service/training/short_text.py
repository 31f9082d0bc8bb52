"""Short-text checks: how a model does on a sentence instead of a whole review.

Two sets, both measured on the artifact as served and written into every card:

- ``validation_sentences``: single sentences of the seeded validation reviews (the 20% of
  aclImdb/train that training holds out), each labelled with its review's label, kept
  when it carries sentiment (it holds a word whose polarity in the *training* reviews is
  strong) and its review has an extreme rating (1-2 or 9-10). This is the short-text signal
  training choices are made on: it never touches aclImdb/test.
- ``other_domains``: the 300 short reviews hand-written for this check in
  ``service/training/short_reviews/other_domains.jsonl`` (product, restaurant, hotel, app,
  one-sentence movie snippets; balanced). Reported only: no training or choice uses it
  (``short_reviews/README.md``).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.models.vectorizer import tokenize
from service.training.data import Review

OTHER_DOMAINS = Path(__file__).parent / "short_reviews" / "other_domains.jsonl"
VALIDATION_SENTENCES = 2_000  # balanced, at most one per review
MIN_WORDS, MAX_WORDS = 4, 30
# A word's polarity: log((pos docs + 1) / (neg docs + 1)) over the training reviews; strong
# when at least this in either direction (e.g. 2.7 times as frequent in one class) and the
# word is in at least MIN_DOCS training reviews.
STRONG_LOG_ODDS = 1.0
MIN_DOCS = 20

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*<br\s*/?>\s*", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """A review cut into sentences: after ``.``, ``!`` or ``?`` followed by a space, and at
    every HTML line break."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


@dataclass(frozen=True)
class ShortSet:
    name: str
    texts: list[str]
    labels: list[int]
    how: str
    domains: list[str] | None = None

    def describe(self) -> dict:
        out: dict = {"n": len(self.texts), "positive": sum(self.labels), "how": self.how}
        return out


def read_other_domains(path: Path = OTHER_DOMAINS) -> ShortSet:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return ShortSet(
        name="other_domains",
        texts=[r["text"] for r in rows],
        labels=[int(r["label"]) for r in rows],
        domains=[r["domain"] for r in rows],
        how=f"{len(rows)} short reviews hand-written for this check (product, restaurant, "
        "hotel, app, one-sentence movie snippets; balanced); reported only, never used to "
        f"train or choose ({path.parent.name}/README.md)",
    )


def polarity_words(train: Iterable[Review]) -> set[str]:
    """Words whose document frequency differs strongly between positive and negative
    training reviews (the training split only)."""
    pos: Counter[str] = Counter()
    neg: Counter[str] = Counter()
    for review in train:
        (pos if review.label else neg).update(set(tokenize(review.text)))
    strong = set()
    for word in pos.keys() | neg.keys():
        p, n = pos[word], neg[word]
        if p + n >= MIN_DOCS and abs(math.log((p + 1) / (n + 1))) >= STRONG_LOG_ODDS:
            strong.add(word)
    return strong


def _rating(review: Review) -> int:
    return int(review.key.rsplit("_", 1)[1])


def validation_sentences(
    train: Sequence[Review], validation: Sequence[Review], seed: int, n: int = VALIDATION_SENTENCES
) -> ShortSet:
    """At most one sentence per validation review, ``n`` in all, half of each label."""
    strong = polarity_words(train)
    rng = random.Random(seed)
    by_label: dict[int, list[str]] = {0: [], 1: []}
    for review in validation:
        if 3 <= _rating(review) <= 8:
            continue
        candidates = [
            s
            for s in sentences(review.text)
            if MIN_WORDS <= len(words := tokenize(s)) <= MAX_WORDS and strong & set(words)
        ]
        if candidates:
            by_label[review.label].append(rng.choice(candidates))
    half = n // 2
    texts: list[str] = []
    labels: list[int] = []
    for label in (0, 1):
        chosen = rng.sample(by_label[label], min(half, len(by_label[label])))
        texts += chosen
        labels += [label] * len(chosen)
    return ShortSet(
        name="validation_sentences",
        texts=texts,
        labels=labels,
        how=f"one sentence ({MIN_WORDS}-{MAX_WORDS} words) of each of {len(texts)} validation "
        "reviews rated 1-2 or 9-10, labelled with its review's label, holding a word of strong "
        f"polarity in the training reviews (|log odds| >= {STRONG_LOG_ODDS}, in >= {MIN_DOCS} "
        f"reviews); seeded ({seed}), balanced; the short-text signal choices are made on",
    )


def accuracy_of(predict_proba: Callable[[Sequence[str]], Sequence[float]], s: ShortSet) -> float:
    probabilities: list[float] = []
    for start in range(0, len(s.texts), 250):
        probabilities += list(predict_proba(s.texts[start : start + 250]))
    correct = sum((p >= 0.5) == bool(y) for p, y in zip(probabilities, s.labels, strict=True))
    return correct / max(1, len(s.texts))


def short_text_card(
    predict_proba: Callable[[Sequence[str]], Sequence[float]], sets: Sequence[ShortSet]
) -> dict:
    """The card's ``short_text`` block: each set's accuracy, size and how it was made; for
    the hand-written set also the accuracy per domain."""
    out: dict = {}
    for s in sets:
        entry: dict = {"accuracy": round(accuracy_of(predict_proba, s), 4), **s.describe()}
        if s.domains is not None:
            per: dict[str, float] = {}
            for domain in sorted(set(s.domains)):
                keep = [i for i, d in enumerate(s.domains) if d == domain]
                sub = ShortSet(domain, [s.texts[i] for i in keep], [s.labels[i] for i in keep], "")
                per[domain] = round(accuracy_of(predict_proba, sub), 4)
            entry["by_domain"] = per
        out[s.name] = entry
    return out
