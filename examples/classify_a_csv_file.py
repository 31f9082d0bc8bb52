"""Classify every row of a CSV file in batches, with a progress bar, writing the labels.

    python examples/classify_a_csv_file.py reviews.csv labelled.csv [--column text]
        [--batch 32] [--url http://127.0.0.1:8080] [--token T]

The output has the input's columns plus ``label``, ``score`` and ``status``: ``ok``,
``blocked:S1,S10`` for a row the guard refused, or ``invalid: <reason>`` for a text the
service does not take (blank, or longer than MAX_TEXT_CHARS). A batch with a blocked or an
invalid text is answered for none of its texts, so that batch is sent again one text at a
time and only those rows stay unlabelled. A guard that is down (503) is waited out as its
Retry-After says.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Iterator

from tqdm import tqdm

from gis_client import Client, ContentBlocked, InvalidRequest, TextResult, Unavailable


def _batches(rows: list[dict[str, str]], size: int) -> Iterator[list[dict[str, str]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


Outcome = TextResult | ContentBlocked | InvalidRequest


def classify_rows(gis: Client, texts: list[str]) -> list[Outcome]:
    """One result per text; the refusal in place of each blocked or invalid one."""
    for attempt in range(5):
        try:
            return list(gis.classify(texts).results)
        except (ContentBlocked, InvalidRequest) as refused:
            if len(texts) == 1:
                return [refused]
            return [item for text in texts for item in classify_rows(gis, [text])]
        except Unavailable as busy:
            if attempt == 4:
                raise
            time.sleep(busy.retry_after or 1.0)
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--column", default="text")
    parser.add_argument("--batch", type=int, default=32, help="texts per request (<= MAX_BATCH)")
    parser.add_argument("--url", default=os.environ.get("GIS_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("GIS_TOKEN"))
    args = parser.parse_args()
    with open(args.source, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    if args.column not in columns:
        print(f"no column {args.column!r} in {args.source} (columns: {columns})", file=sys.stderr)
        return 2
    with (
        Client(args.url, token=args.token) as gis,
        open(args.target, "w", newline="", encoding="utf-8") as out,
        tqdm(total=len(rows), unit="row", file=sys.stderr) as progress,
    ):
        writer = csv.DictWriter(out, fieldnames=[*columns, "label", "score", "status"])
        writer.writeheader()
        for batch in _batches(rows, args.batch):
            for row, result in zip(
                batch, classify_rows(gis, [row[args.column] for row in batch]), strict=True
            ):
                if isinstance(result, ContentBlocked):
                    codes = ",".join(c.code for c in result.categories)
                    writer.writerow({**row, "label": "", "score": "", "status": f"blocked:{codes}"})
                elif isinstance(result, InvalidRequest):
                    reason = "; ".join(str(e.get("msg", "")) for e in result.errors) or "refused"
                    status = f"invalid: {reason}"
                    writer.writerow({**row, "label": "", "score": "", "status": status})
                else:
                    writer.writerow(
                        {
                            **row,
                            "label": result.label,
                            "score": f"{result.score:.4f}",
                            "status": "ok",
                        }
                    )
            progress.update(len(batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
