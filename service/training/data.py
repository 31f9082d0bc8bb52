"""Reading the labelled IMDB reviews in the aclImdb layout.

``aclImdb/{train,test}/{pos,neg}/*.txt``, as a directory or as a .tar.gz (the official
``aclImdb_v1.tar.gz`` works as downloaded). ``train/unsup`` and other members are ignored.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
# Published with the dataset: size 84,125,825 bytes, MD5 7c2ac02c03563afcf9b574c7e56c153a.
OFFICIAL_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"

_MEMBER = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 1 positive, 0 negative
    split: str  # "train" | "test"
    key: str  # "{split}/{pos|neg}/{n}_{rating}"


@dataclass(frozen=True)
class Splits:
    train: list[Review]
    validation: list[Review]
    test: list[Review]


def _review(name: str, raw: bytes) -> Review | None:
    match = _MEMBER.search(name)
    if not match:
        return None
    split, polarity, number, rating = match.groups()
    return Review(
        text=raw.decode("utf-8", errors="replace"),
        label=1 if polarity == "pos" else 0,
        split=split,
        key=f"{split}/{polarity}/{number}_{rating}",
    )


def read_aclimdb(path: Path) -> list[Review]:
    """All labelled reviews under ``path`` (directory or .tar.gz), in a stable order."""
    path = Path(path)
    reviews: list[Review] = []
    if path.is_dir():
        for file in path.rglob("*.txt"):
            review = _review(file.as_posix(), file.read_bytes())
            if review:
                reviews.append(review)
    elif path.is_file():
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if not member.isfile() or not _MEMBER.search(member.name):
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    review = _review(member.name, handle.read())
                    if review:
                        reviews.append(review)
    else:
        raise FileNotFoundError(f"no aclImdb directory or tarball at {path}")
    if not reviews:
        raise ValueError(f"{path} holds no aclImdb/{{train,test}}/{{pos,neg}}/*.txt reviews")
    reviews.sort(key=lambda r: (r.split, r.key))
    return reviews


def split_reviews(reviews: list[Review], validation_fraction: float, seed: int) -> Splits:
    """Train/validation from aclImdb/train (seeded shuffle), test is all of aclImdb/test."""
    train = [r for r in reviews if r.split == "train"]
    test = [r for r in reviews if r.split == "test"]
    random.Random(seed).shuffle(train)
    n_val = int(len(train) * validation_fraction)
    return Splits(train=train[n_val:], validation=train[:n_val], test=test)


def download_official(destination: Path) -> Path:
    """Download the official tarball once and verify its published MD5 checksum."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not destination.exists():
        log.info("downloading %s", OFFICIAL_URL)
        partial = destination.with_suffix(".part")
        urllib.request.urlretrieve(OFFICIAL_URL, partial)
        partial.rename(destination)
    digest = hashlib.md5(destination.read_bytes()).hexdigest()
    if digest != OFFICIAL_MD5:
        raise ValueError(
            f"{destination} has MD5 {digest}, expected {OFFICIAL_MD5}: delete it and retry"
        )
    return destination
