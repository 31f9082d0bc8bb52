"""The online drift monitor: per model, a bounded window of the descriptors of the texts it
classified, tested against the model's reference profile off the request path.

``observe`` (called by the pipeline once a classify call has answered) describes the texts
and appends the descriptors to the model's window, a ``deque`` of at most ``DRIFT_WINDOW``
entries; nothing else happens on the request path. A background task (``run``, started by
the app's lifespan) wakes when ``DRIFT_CHECK_EVERY`` texts arrived since the last check, or
every ``DRIFT_CHECK_INTERVAL`` seconds, and runs the tests of :mod:`service.drift.stats` in a
worker thread for every model whose window changed. Each check sets the Prometheus gauges
and, when a model's verdict changes, logs ``drift entered`` or ``drift left``. A window
smaller than ``DRIFT_MIN_WINDOW`` gets statistics but no verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from service.config import Settings
from service.drift.profile import (
    PROFILE_FILE,
    SCORE_BINS,
    Describer,
    ProfileError,
    ReferenceProfile,
    TextDescriptor,
    score_bins,
)
from service.drift.stats import (
    FEATURE_NAMES,
    FEATURES,
    FeatureResult,
    Window,
    evaluate,
    word_shifts,
)

logger = logging.getLogger("service.drift")

# With several workers each keeps its own window: the flags and statistics are the largest
# of the live workers' (drift seen by any worker shows), the window sizes their sum.
DRIFT_STATISTIC = Gauge(
    "drift_statistic", "Drift statistic of a feature's window against the reference.",
    ["model", "feature"], multiprocess_mode="livemax",
)  # fmt: skip
DRIFT_THRESHOLD = Gauge(
    "drift_threshold", "Threshold at or above which a feature's statistic is drift.",
    ["model", "feature"], multiprocess_mode="livemax",
)  # fmt: skip
DRIFT_DETECTED = Gauge(
    "drift_detected", "1 when the feature drifted at the last check, else 0.",
    ["model", "feature"], multiprocess_mode="livemax",
)  # fmt: skip
MODEL_DRIFTED = Gauge(
    "drift_model_drifted", "1 when any feature of the model drifted.", ["model"],
    multiprocess_mode="livemax",
)  # fmt: skip
WINDOW_TEXTS = Gauge(
    "drift_window_texts", "Texts in the model's drift window.", ["model"],
    multiprocess_mode="livesum",
)  # fmt: skip
CHECKS = Counter("drift_checks_total", "Drift checks run per model.", ["model"])
CHECK_SECONDS = Histogram(
    "drift_check_seconds", "CPU seconds of one drift check (all models).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)  # fmt: skip


def thresholds_of(settings: Settings) -> dict[str, float]:
    """Each feature's threshold from the settings (``DRIFT_<FEATURE>_THRESHOLD``)."""
    return {name: float(getattr(settings, f"drift_{name}_threshold")) for name in FEATURE_NAMES}


@dataclass(frozen=True)
class Check:
    """One check of one model's window."""

    at: str
    texts: int
    observed: int
    features: tuple[FeatureResult, ...]
    words: dict[str, list[dict[str, Any]]]
    verdict: bool | None  # None: the window is under DRIFT_MIN_WINDOW

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "texts": self.texts,
            "observed": self.observed,
            "drift": self.verdict,
            "drifted_features": [r.feature for r in self.features if r.drift]
            if self.verdict is not None
            else [],
            "features": [
                {**r.to_dict(), "drift": r.drift if self.verdict is not None else None}
                for r in self.features
            ],
            "words": self.words,
        }


@dataclass
class ModelWindow:
    """One monitored model: its reference, its window, and its last check."""

    name: str
    profile: ReferenceProfile
    describer: Describer
    window: deque[TextDescriptor]
    observed: int = 0
    checked_observed: int = 0
    last: Check | None = None
    reference_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))


class DriftMonitor:
    """Windows per model, the background checker, the report."""

    def __init__(
        self,
        settings: Settings,
        windows: Mapping[str, ModelWindow],
        unmonitored: Mapping[str, str],
    ) -> None:
        self._settings = settings
        self._windows = dict(windows)
        self._unmonitored = dict(unmonitored)  # model -> why it has no monitor
        self.thresholds = thresholds_of(settings)
        self.window_size = settings.drift_window
        self.min_window = settings.drift_min_window
        self.check_every = settings.drift_check_every
        self.check_interval = settings.drift_check_interval
        self._lock = threading.Lock()  # the windows: appended on the loop, read by the checker
        self._check_lock = threading.Lock()  # one check at a time
        self._pending = 0
        self._wake: asyncio.Event | None = None
        for name in self._windows:
            WINDOW_TEXTS.labels(name).set(0)

    @classmethod
    def for_registry(cls, settings: Settings, registry: Any) -> DriftMonitor:
        """A monitor for the models of ``registry`` (anything with ``names()`` and
        ``info(name).card``), their profiles read from ARTIFACTS_DIR or the package."""
        from service.models.artifacts import PACKAGE_ARTIFACTS

        root = Path(settings.artifacts_dir) if settings.artifacts_dir else PACKAGE_ARTIFACTS
        cards = {name: registry.info(name).card for name in registry.names()}
        return cls.for_models(settings, cards, root)

    @classmethod
    def for_models(
        cls, settings: Settings, cards: Mapping[str, Mapping[str, Any]], root: Path
    ) -> DriftMonitor:
        """A monitor for every model (``name -> card``) whose artifact folder under ``root``
        holds a reference profile made for its weights."""
        windows: dict[str, ModelWindow] = {}
        unmonitored: dict[str, str] = {}
        for name, card in cards.items():
            derived = _no_profile_of_its_own(card)
            if derived:
                unmonitored[name] = derived
                continue
            folder = root / name
            try:
                profile = ReferenceProfile.load(folder)
            except (ProfileError, OSError, ValueError, KeyError) as error:
                unmonitored[name] = f"no usable {PROFILE_FILE}: {error}"
                continue
            if not profile.matches(card):
                unmonitored[name] = (
                    f"{PROFILE_FILE} is stale: made for weights {profile.weights_sha256[:12]}, "
                    f"the card pins {str(card.get('weights_sha256'))[:12]}; rebuild it with "
                    "`python -m service drift-profile`"
                )
                logger.warning("drift profile stale", extra={"model": name})
                continue
            describer = Describer.for_artifact(folder)
            windows[name] = ModelWindow(
                name=name,
                profile=profile,
                describer=describer,
                window=deque(maxlen=settings.drift_window),
                reference_counts=np.asarray(profile.token_counts),
            )
        return cls(settings, windows, unmonitored)

    # --- the request path -------------------------------------------------------------
    def observe(self, model: str, texts: Sequence[str], scores: Sequence[float]) -> None:
        """Describe ``texts`` (classified by ``model`` with ``scores``) into its window."""
        state = self._windows.get(model)
        if state is None:
            return
        describe = state.describer.describe
        descriptors = [describe(text, score) for text, score in zip(texts, scores, strict=True)]
        with self._lock:
            state.window.extend(descriptors)
            state.observed += len(descriptors)
            self._pending += len(descriptors)
            due = self._pending >= self.check_every
        if due and self._wake is not None:
            self._wake.set()

    # --- off the request path ---------------------------------------------------------
    async def run(self) -> None:
        """Check whenever DRIFT_CHECK_EVERY texts arrived or DRIFT_CHECK_INTERVAL passed."""
        self._wake = asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await anyio.to_thread.run_sync(self.check)
            except Exception:  # a failed check must not end the monitor
                logger.exception("drift check failed")

    def check(self) -> None:
        """Test every model whose window changed since its last check (blocking)."""
        with self._check_lock:
            started = time.process_time()
            with self._lock:
                self._pending = 0
                due = [
                    (state, list(state.window), state.observed)
                    for state in self._windows.values()
                    if state.observed != state.checked_observed
                ]
            for state, descriptors, observed in due:
                self._check_one(state, descriptors, observed)
            if due:
                CHECK_SECONDS.observe(time.process_time() - started)

    def _check_one(
        self, state: ModelWindow, descriptors: list[TextDescriptor], observed: int
    ) -> None:
        described = state.describer.resolve(descriptors)
        token_counts = described.token_counts
        window = Window(
            texts=len(descriptors),
            numeric=described.numeric,
            token_counts=token_counts,
            score_counts=np.bincount(score_bins(described.numeric["score"]), minlength=SCORE_BINS),
        )
        results = tuple(evaluate(state.profile, window, self.thresholds))
        verdict = any(r.drift for r in results) if len(descriptors) >= self.min_window else None
        check = Check(
            at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            texts=len(descriptors),
            observed=observed,
            features=results,
            words=word_shifts(state.describer.vocabulary, state.reference_counts, token_counts),
            verdict=verdict,
        )
        before = state.last.verdict if state.last is not None else None
        state.last, state.checked_observed = check, observed
        CHECKS.labels(state.name).inc()
        WINDOW_TEXTS.labels(state.name).set(len(descriptors))
        for result in results:
            DRIFT_STATISTIC.labels(state.name, result.feature).set(result.statistic)
            DRIFT_THRESHOLD.labels(state.name, result.feature).set(result.threshold)
            if verdict is not None:
                DRIFT_DETECTED.labels(state.name, result.feature).set(int(result.drift))
        if verdict is None:
            return
        MODEL_DRIFTED.labels(state.name).set(int(verdict))
        if bool(verdict) != bool(before):
            extra = {
                "model": state.name,
                "window": len(descriptors),
                "features": [r.feature for r in results if r.drift],
                "statistics": {r.feature: round(r.statistic, 4) for r in results},
            }
            if verdict:
                logger.warning("drift entered", extra=extra)
            else:
                logger.info("drift left", extra=extra)

    # --- the report -------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        return [*self._windows, *self._unmonitored]

    def report(self, model: str | None = None) -> dict[str, Any]:
        """What GET /v1/drift answers: per model (or for ``model``), the window, each
        feature's statistic, threshold and verdict, and the words that shifted most."""
        names = [model] if model is not None else self.models
        return {
            "enabled": True,
            "settings": {
                "window": self.window_size,
                "min_window": self.min_window,
                "check_every": self.check_every,
                "check_interval_s": self.check_interval,
                "thresholds": self.thresholds,
                "tests": {feature.name: feature.test for feature in FEATURES},
            },
            "models": [self._model_report(name) for name in names],
        }

    def _model_report(self, name: str) -> dict[str, Any]:
        state = self._windows.get(name)
        if state is None:
            return {"model": name, "monitored": False, "reason": self._unmonitored[name]}
        with self._lock:
            texts, observed = len(state.window), state.observed
        profile = state.profile
        last = state.last
        return {
            "model": name,
            "monitored": True,
            "drift": last.verdict if last is not None else None,
            "window": {
                "texts": texts,
                "max_texts": self.window_size,
                "min_texts": self.min_window,
                "observed": observed,
            },
            "reference": {
                "texts": profile.texts,
                "score_texts": profile.score_texts,
                "weights_sha256": profile.weights_sha256,
                "created": profile.created,
            },
            "check": last.to_dict() if last is not None else None,
        }

    def knows(self, model: str) -> bool:
        return model in self._windows or model in self._unmonitored


def _no_profile_of_its_own(card: Mapping[str, Any]) -> str:
    """Why a model can have no reference profile (empty: it can): profiles are made for an
    artifact with its own weights and vocabulary, which a cascade and an adapter are not."""
    from service.models import adapters, cascade

    if card.get("architecture") == cascade.ARCHITECTURE:
        return "a cascade of two models has no drift profile of its own"
    if card.get("kind") == adapters.KIND:
        return "a LoRA adapter has no drift profile of its own (it reads its base's tokens)"
    return ""
