"""The drift building blocks: shipped reference profiles (fresh, small, no raw text), the
statistics against scipy's, the window's memory bound, stale profiles, and the commands that
rebuild a profile and write the offline Evidently report."""

from __future__ import annotations

import gzip
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from service.config import Settings
from service.core.pipeline import GuardedPipeline
from service.drift.monitor import DriftMonitor
from service.drift.outcome import summarize
from service.drift.profile import (
    MAX_TOKENS,
    PROFILE_FILE,
    Describer,
    ReferenceProfile,
    tokenize_bytes,
)
from service.drift.stats import psi, wasserstein_norm
from service.models.artifacts import CARD, NAMES, PACKAGE_ARTIFACTS, WEIGHTS, read_artifact
from service.models.vectorizer import tokenize

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
MODEL = "sentiment-cnn-int8"


def _rows(name: str) -> list[dict]:
    with gzip.open(FIXTURES / name, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _texts(name: str) -> list[str]:
    return [row["text"] for row in _rows(name)]


# Every artifact with weights of its own (a composite such as a cascade has only a card).
WITH_WEIGHTS = [name for name in NAMES if (PACKAGE_ARTIFACTS / name / WEIGHTS).is_file()]


@pytest.mark.parametrize("name", WITH_WEIGHTS)
def test_every_artifact_ships_a_fresh_small_profile_without_texts(name: str) -> None:
    folder = PACKAGE_ARTIFACTS / name
    card, _ = read_artifact(folder)
    profile = ReferenceProfile.load(folder)
    assert profile.matches(card) and profile.model == name
    assert profile.texts == card["data"]["train"] and profile.score_texts == 5000
    assert (folder / PROFILE_FILE).stat().st_size < 100_000
    raw = json.loads((folder / PROFILE_FILE).read_text())
    strings = [v for v in _leaves(raw) if isinstance(v, str)]
    assert max(len(s) for s in strings) < 100  # hashes, dates, names: never a review
    assert sum(profile.token_counts) > profile.texts * 20  # sampled tokens, counted per id


def _leaves(value: object) -> list[object]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_the_drift_tokens_are_the_vectorizers() -> None:
    texts = [*_texts("imdb_test_sample.jsonl.gz"), *_texts("code_reviews_sample.jsonl.gz")]
    texts.append("A <BR/>line<br />break, UPPER-case & punctuation... don't!")
    same = [tokenize_bytes(text) == [t.encode() for t in tokenize(text)] for text in texts]
    assert sum(same) >= len(texts) - 2  # a text with a no-break space may split otherwise
    assert same[-1]


def test_the_statistics_are_scipys_and_evidentlys() -> None:
    rng = np.random.default_rng(3)
    reference, current = rng.lognormal(7, 0.7, 1000), rng.lognormal(5, 0.9, 300)
    expected = scipy_stats.wasserstein_distance(reference, current) / np.std(reference)
    assert wasserstein_norm(reference, current) == pytest.approx(expected, rel=1e-12)
    # PSI as Evidently's categorical form: a bin empty on one side counts 0.0001.
    ref, cur = np.array([50, 30, 20, 0]), np.array([10, 10, 0, 80])
    r, c = np.array([0.5, 0.3, 0.2, 0.0001]), np.array([0.1, 0.1, 0.0001, 0.8])
    assert psi(ref, cur) == pytest.approx(float(np.sum((r - c) * np.log(r / c))))
    assert psi(ref, ref) == 0.0 and psi(ref, np.zeros(4)) == 0.0


def test_the_window_is_bounded_whatever_the_traffic() -> None:
    settings = Settings(_env_file=None, drift_window=50, drift_min_window=10)
    monitor = DriftMonitor.for_models(
        settings, {MODEL: json.loads((PACKAGE_ARTIFACTS / MODEL / CARD).read_text())},
        PACKAGE_ARTIFACTS,
    )  # fmt: skip
    huge = " ".join(["word"] * 20_000)
    for _ in range(30):
        monitor.observe(MODEL, [huge] * 10, [0.5] * 10)
    monitor.check()
    [entry] = monitor.report()["models"]
    assert entry["window"]["texts"] == 50 and entry["window"]["observed"] == 300
    window = monitor._windows[MODEL].window  # the bound is on what is kept
    assert len(window) == 50 and all(len(d.hashes) == 8 * MAX_TOKENS for d in window)
    assert all(d.words == 20_000 for d in window)


def test_a_stale_profile_is_not_used(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE_ARTIFACTS / MODEL, tmp_path / MODEL)
    card = json.loads((tmp_path / MODEL / CARD).read_text())
    monitor = DriftMonitor.for_models(
        Settings(_env_file=None), {MODEL: {**card, "weights_sha256": "0" * 64}}, tmp_path
    )
    [entry] = monitor.report()["models"]
    assert entry == {"model": MODEL, "monitored": False, "reason": entry["reason"]}
    assert "stale" in entry["reason"]
    (tmp_path / MODEL / PROFILE_FILE).unlink()
    [entry] = DriftMonitor.for_models(Settings(_env_file=None), {MODEL: card}, tmp_path).report()[
        "models"
    ]
    assert not entry["monitored"] and "drift-profile" in entry["reason"]


def test_a_cascade_and_an_adapter_are_unmonitored_for_what_they_are_not_a_missing_file() -> None:
    cards = {
        name: json.loads((PACKAGE_ARTIFACTS / folder / CARD).read_text())
        for name, folder in (
            ("sentiment-cascade", "sentiment-cascade"),
            ("hyperbole-lora", "adapters/hyperbole-lora"),
        )
    }
    report = DriftMonitor.for_models(Settings(_env_file=None), cards, PACKAGE_ARTIFACTS).report()
    reasons = {entry["model"]: entry["reason"] for entry in report["models"]}
    assert "a cascade" in reasons["sentiment-cascade"]
    assert "a LoRA adapter" in reasons["hyperbole-lora"]
    # Not the advice to build a profile, which drift-profile cannot do for them.
    assert not any("drift-profile" in reason for reason in reasons.values())


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_drift_profile_rebuilds_the_profile_of_an_existing_artifact(tmp_path: Path) -> None:
    data = tmp_path / "aclImdb"
    rows = _rows("imdb_test_sample.jsonl.gz")
    for index, row in enumerate(rows):
        folder = data / "train" / ("pos" if row["label"] else "neg")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index}_5.txt").write_text(row["text"])
    shutil.copytree(PACKAGE_ARTIFACTS / MODEL, tmp_path / "artifacts" / MODEL)
    (tmp_path / "artifacts" / MODEL / PROFILE_FILE).unlink()
    result = _run(
        "drift-profile", "--data", str(data), "--artifacts", str(tmp_path / "artifacts"),
        "--model", MODEL, "--score-sample", "40",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    profile = ReferenceProfile.load(tmp_path / "artifacts" / MODEL)
    card, _ = read_artifact(tmp_path / "artifacts" / MODEL)
    assert profile.matches(card) and profile.score_texts == 40
    assert profile.texts == len(rows) - round(0.2 * len(rows))  # the validation reviews held out
    describer = Describer.for_artifact(tmp_path / "artifacts" / MODEL)
    assert len(profile.token_counts) == describer.vocab_size


def test_the_offline_report_finds_the_code_reviews_and_not_imdb(tmp_path: Path) -> None:
    imdb = _texts("imdb_test_sample.jsonl.gz")
    random.Random(5).shuffle(imdb)
    halves = []
    for index, texts in enumerate((imdb[:150], imdb[150:])):
        path = tmp_path / f"imdb{index}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        halves.append(path)
    code = str(FIXTURES / "code_reviews_sample.jsonl.gz")
    out = tmp_path / "code.json"
    result = _run(
        "drift", "--reference", str(halves[0]), "--current", code, "--model", MODEL,
        "--json", str(out), "--html", str(tmp_path / "code.html"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    drifted = {f["feature"]: f["drift"] for f in figures["features"]}
    assert drifted["length"] and drifted["words"] and drifted["tokens"], figures["features"]
    assert figures["text_content"]["drift"]
    words = figures["text_content"]["characteristic_words"]
    assert words["current"] and words["reference"]
    assert (tmp_path / "code.html").stat().st_size > 10_000
    assert "length" in result.stdout and "words gained" in result.stdout

    same = tmp_path / "imdb.json"
    result = _run(
        "drift", "--reference", str(halves[0]), "--current", str(halves[1]), "--model", MODEL,
        "--json", str(same),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(same.read_text())
    assert not figures["drift"], figures["features"]
    assert not figures["text_content"]["drift"]


def test_the_report_command_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    result = _run("drift", "--current", str(tmp_path / "missing.jsonl"), "--model", MODEL)
    assert result.returncode == 2 and result.stderr.startswith("error:")
    result = _run("drift", "--current", str(FIXTURES / "code_reviews_sample.jsonl.gz"),
                  "--model", "no-such-model")  # fmt: skip
    assert result.returncode == 2 and "no-such-model" in result.stderr


def test_monitoring_off_answers_enabled_false() -> None:
    settings = Settings(_env_file=None, drift_enabled=False)
    pipeline = GuardedPipeline(registry=object(), scanner=object(), settings=settings)
    assert pipeline.drift is None
    assert pipeline.drift_status() == {"enabled": False, "models": []}
    assert "off" in summarize(pipeline.drift_status())
