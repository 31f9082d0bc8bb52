"""The options of ``gis drift`` (the offline report, :mod:`service.drift.report`), apart from
the report so that building the command line imports neither torch nor numpy."""

from __future__ import annotations

import argparse


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--current", required=True, help="texts: .jsonl[.gz], .txt or aclImdb")
    parser.add_argument("--current-split", help="only rows of this split (train or test)")
    parser.add_argument("--reference", help="texts as --current; default: the model's profile")
    parser.add_argument("--reference-split", help="only rows of this split (train or test)")
    parser.add_argument(
        "--model", help="model whose vocabulary and scores count (default: DEFAULT_MODEL)"
    )
    parser.add_argument("--artifacts", help="artifacts folder (default: the package's own)")
    parser.add_argument("--sample", type=int, default=0, help="N random texts per side (0: all)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of --sample")
    parser.add_argument("--html", help="write Evidently's HTML report here")
    parser.add_argument("--json", help="write the report's figures as JSON here")
