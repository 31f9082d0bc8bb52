"""The drift report as an answer: the monitor's state, its one-line summary, and the text the
guard judges before it is returned (everything the answer says in words)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.core.outcomes import screen_dict
from service.guard.scanner import ScanResult

DISABLED: dict[str, Any] = {"enabled": False, "models": []}


def summarize(report: dict[str, Any]) -> str:
    """One line per model: its verdict, the drifted features and the window."""
    if not report.get("enabled"):
        return "drift monitoring is off (DRIFT_ENABLED=false)"
    lines = []
    for model in report["models"]:
        name = model["model"]
        if not model["monitored"]:
            lines.append(f"{name}: not monitored ({model['reason']})")
            continue
        check, window = model["check"], model["window"]
        texts = f"window {window['texts']} of {window['max_texts']} texts"
        if check is None or check["drift"] is None:
            lines.append(f"{name}: no verdict yet ({texts}, at least {window['min_texts']})")
        elif check["drift"]:
            lines.append(f"{name}: drift in {', '.join(check['drifted_features'])} ({texts})")
        else:
            lines.append(f"{name}: no drift ({texts})")
    return "; ".join(lines) or "no models"


def screened_text(report: dict[str, Any]) -> str:
    """The summary and every word the report names: what the output screen judges."""
    words = []
    for model in report.get("models", []):
        check = model.get("check") or {}
        shifts = check.get("words") or {}
        for direction in ("gained", "lost"):
            listed = [entry["word"] for entry in shifts.get(direction, [])]
            if listed:
                words.append(f"{model['model']} words {direction}: {', '.join(listed)}")
    return ". ".join([summarize(report), *words])


@dataclass(frozen=True)
class DriftOutcome:
    report: dict[str, Any]
    input_screen: ScanResult
    output_screen: ScanResult

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.report,
            "screens": {
                "input": screen_dict(self.input_screen),
                "output": screen_dict(self.output_screen),
            },
        }

    def summary(self) -> str:
        return summarize(self.report)
