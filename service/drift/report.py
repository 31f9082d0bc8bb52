"""The offline drift report: ``python -m service drift --current <texts> [--reference <texts>]
[--model M] --html report.html --json report.json``, built with Evidently (the optional
``drift`` extra: ``pip install -e '.[drift]'``).

Both sides are described with the online monitor's own descriptors
(:mod:`service.drift.profile`) and tested by Evidently with the online monitor's methods and
thresholds (normed Wasserstein for length, word count and OOV share; PSI for token buckets
and score bins; thresholds from the ``DRIFT_*_THRESHOLD`` settings), so on the same data the
two give the same verdicts. Without ``--reference`` the reference is the model's shipped
profile, as online: its quantile points stand for the numeric descriptors, its counts for
the token buckets and score bins. With reference texts the report adds Evidently's
text-content drift (a domain classifier telling the two sides apart) and its
characteristic words.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.drift.profile import (
    NUMERIC,
    SCORE_BINS,
    Described,
    Describer,
    ReferenceProfile,
    score_bins,
)
from service.drift.stats import FEATURES, TOKEN_BUCKETS, bucket_of, token_buckets, word_shifts

# Evidently's column for each feature (the same names but for the two categorical ones).
COLUMNS = {"length": "length", "words": "words", "oov_share": "oov_share",
           "tokens": "token_bucket", "score": "score_bin"}  # fmt: skip


def read_texts(path: Path, split: str | None = None) -> list[str]:
    """Texts from JSON Lines (``text`` of each row, gzip or not; ``split`` filters on the
    rows' ``split``), a .txt file (one text per line), or an aclImdb folder or tarball."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        return [row["text"] for row in rows if split is None or row.get("split") == split]
    if name.endswith(".txt"):
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    from service.training.data import read_aclimdb

    return [r.text for r in read_aclimdb(path) if split is None or r.split == split]


def _sample(texts: list[str], size: int, seed: int) -> list[str]:
    return random.Random(seed).sample(texts, size) if 0 < size < len(texts) else texts


def describe_texts(model: Any, describer: Describer, texts: Sequence[str]) -> Described:
    """The online descriptors of ``texts``, scored by ``model`` (a LoadedModel)."""
    scores: list[float] = []
    for start in range(0, len(texts), 64):
        scores.extend(model.predict_proba(list(texts[start : start + 64])))
    pairs = zip(texts, scores, strict=True)
    return describer.resolve([describer.describe(text, score) for text, score in pairs])


def _columns_of(described: Described) -> dict[str, Any]:
    return {
        **{name: described.numeric[name] for name in NUMERIC},
        "score_bin": score_bins(described.numeric["score"]),
        "token_bucket": bucket_of(described.ids),
    }


def _columns_of_profile(profile: ReferenceProfile) -> dict[str, Any]:
    """The profile as a sample: its quantile points, and one row per counted score and token
    bucket (the counts themselves, so the PSI equals the online one)."""
    return {
        **{name: profile.sample(name) for name in NUMERIC},
        "score_bin": np.repeat(np.arange(SCORE_BINS), profile.score_counts),
        "token_bucket": np.repeat(
            np.arange(len(TOKEN_BUCKETS)), token_buckets(np.asarray(profile.token_counts))
        ),
    }


def _frame(columns: dict[str, Any], texts: Sequence[str] | None) -> Any:
    """One DataFrame, each column padded with missing values to the longest (Evidently
    drops the missing values of a column before it tests it)."""
    import pandas as pd

    series = {name: pd.Series(values) for name, values in columns.items()}
    series["score_bin"] = series["score_bin"].map(lambda b: f"{b / SCORE_BINS:.1f}")
    series["token_bucket"] = pd.Categorical.from_codes(
        series["token_bucket"], categories=list(TOKEN_BUCKETS)
    )
    series["token_bucket"] = pd.Series(series["token_bucket"])
    if texts is not None:
        series["text"] = pd.Series(list(texts))
    return pd.DataFrame(series)


def _summary(columns: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: {
            "mean": round(float(np.mean(columns[name])), 4),
            "median": round(float(np.median(columns[name])), 4),
        }
        for name in NUMERIC
    }
    bins = np.asarray(columns["score_bin"])
    out["positive_share"] = round(float((bins >= SCORE_BINS // 2).mean()), 4) if bins.size else None
    return out


def build_report(
    current: Sequence[str],
    *,
    model_name: str,
    root: Path,
    thresholds: dict[str, float],
    reference: Sequence[str] | None = None,
) -> tuple[dict[str, Any], Any]:
    """The report's figures and Evidently's snapshot (for the HTML)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry: off
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    from service.models.registry import LoadedModel

    folder = root / model_name
    model = LoadedModel(folder)
    describer = Describer(model.vectorizer.vocabulary)
    profile = ReferenceProfile.load(folder)
    cur_desc = describe_texts(model, describer, current)
    cur_cols = _columns_of(cur_desc)
    if reference is None:
        ref_cols = _columns_of_profile(profile)
        ref_counts = np.asarray(profile.token_counts)
    else:
        ref_desc = describe_texts(model, describer, reference)
        ref_cols = _columns_of(ref_desc)
        ref_counts = ref_desc.token_counts
    with_text = reference is not None
    definition = DataDefinition(
        numerical_columns=list(NUMERIC),
        categorical_columns=["score_bin", "token_bucket"],
        text_columns=["text"] if with_text else None,
    )
    cur_frame = _frame(cur_cols, current if with_text else None)
    ref_frame = _frame(ref_cols, reference)
    methods = {COLUMNS[f.name]: f.test for f in FEATURES}
    limits = {COLUMNS[f.name]: thresholds[f.name] for f in FEATURES}
    metrics: list[Any] = [
        ValueDrift(column=column, method=methods[column], threshold=limits[column])
        for column in methods
    ]
    metrics.append(
        DriftedColumnsCount(
            columns=list(methods), per_column_method=methods, per_column_threshold=limits
        )
    )
    if with_text:
        # Evidently's own choice: a domain classifier's ROC AUC against the 95th percentile
        # of a random classifier's (up to 1,000 reference texts), else against 0.55.
        metrics.append(ValueDrift(column="text"))
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(cur_frame, data_definition=definition),
        Dataset.from_pandas(ref_frame, data_definition=definition),
    )
    result = snapshot.dict()
    values = {m["config"].get("column", m["config"]["type"]): m["value"] for m in result["metrics"]}
    configs = {m["config"].get("column"): m["config"] for m in result["metrics"]}
    failed = {
        t["metric_config"]["params"].get("column"): t["status"] == "FAIL" for t in result["tests"]
    }
    features = [
        {
            "feature": f.name,
            "column": COLUMNS[f.name],
            "test": f.test,
            "statistic": round(float(values[COLUMNS[f.name]]), 4),
            "threshold": thresholds[f.name],
            "drift": failed[COLUMNS[f.name]],
        }
        for f in FEATURES
    ]
    drifted = values["evidently:metric_v2:DriftedColumnsCount"]
    figures: dict[str, Any] = {
        "model": model_name,
        "evidently": evidently.__version__,
        "reference": {
            "source": "texts" if with_text else f"{model_name}/drift_profile.json",
            "texts": len(reference) if reference is not None else profile.texts,
            "summary": _summary(ref_cols),
        },
        "current": {"texts": len(current), "summary": _summary(cur_cols)},
        "drift": any(f["drift"] for f in features),
        "features": features,
        "drifted_columns": {"count": int(drifted["count"]), "share": float(drifted["share"])},
        "words": word_shifts(describer.vocabulary, ref_counts, cur_desc.token_counts),
    }
    if reference is not None:
        figures["text_content"] = _text_content(
            values["text"], configs["text"], failed["text"], reference, current
        )
    return figures, snapshot


def _text_content(
    score: float,
    config: dict[str, Any],
    drifted: bool,
    reference: Sequence[str],
    current: Sequence[str],
) -> dict[str, Any]:
    """Evidently's text-content drift and, when it drifted, its characteristic words."""
    import pandas as pd
    from evidently.legacy.utils.data_drift_utils import get_text_data_for_plots

    out: dict[str, Any] = {
        "test": f"{config.get('method')} (domain classifier ROC AUC)",
        "statistic": round(float(score), 4),
        "threshold": config.get("threshold"),
        "drift": drifted,
    }
    if drifted:
        *_, words_current, words_reference = get_text_data_for_plots(
            pd.Series(list(reference)), pd.Series(list(current))
        )
        out["characteristic_words"] = {
            "current": list(words_current)[:10],
            "reference": list(words_reference)[:10],
        }
    return out


def format_summary(figures: dict[str, Any]) -> str:
    lines = [
        f"model {figures['model']}: reference {figures['reference']['source']} "
        f"({figures['reference']['texts']} texts), current {figures['current']['texts']} texts",
        f"{'feature':<10} {'test':<12} {'statistic':>10} {'threshold':>10}  drift",
    ]
    for f in figures["features"]:
        lines.append(
            f"{f['feature']:<10} {f['test']:<12} {f['statistic']:>10.4f} {f['threshold']:>10}  "
            f"{'yes' if f['drift'] else 'no'}"
        )
    text = figures.get("text_content")
    if text is not None:
        lines.append(f"text content: ROC AUC {text['statistic']:.3f}, drift {text['drift']}")
        if "characteristic_words" in text:
            words = text["characteristic_words"]
            lines.append(f"  current:   {', '.join(words['current'])}")
            lines.append(f"  reference: {', '.join(words['reference'])}")
    for direction in ("gained", "lost"):
        words = ", ".join(w["word"] for w in figures["words"][direction])
        lines.append(f"words {direction}: {words}")
    return "\n".join(lines)


def run_report(args: argparse.Namespace) -> int:
    """The ``drift`` command."""
    from service.config import Settings
    from service.drift.monitor import thresholds_of
    from service.models.artifacts import PACKAGE_ARTIFACTS

    settings = Settings()
    if importlib.util.find_spec("evidently") is None:
        print("error: the drift report needs Evidently: pip install -e '.[drift]'", file=sys.stderr)
        return 2
    current = _sample(read_texts(Path(args.current), args.current_split), args.sample, args.seed)
    reference = None
    if args.reference:
        texts = read_texts(Path(args.reference), args.reference_split)
        reference = _sample(texts, args.sample, args.seed)
    if not current or (reference is not None and not reference):
        raise ValueError("no texts to compare (check the paths and --*-split)")
    figures, snapshot = build_report(
        current,
        model_name=args.model or settings.default_model,
        root=Path(args.artifacts) if args.artifacts else PACKAGE_ARTIFACTS,
        thresholds=thresholds_of(settings),
        reference=reference,
    )
    if args.html:
        snapshot.save_html(args.html)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    print(format_summary(figures))
    return 0
