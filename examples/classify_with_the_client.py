"""Classify and moderate with the service's Python client (gis_client), handling refusals.

    python examples/classify_with_the_client.py "A moving, beautifully acted film." \
        "Two hours I will never get back." [--url http://127.0.0.1:8080] [--token T]

Prints one line per text (label, score, both screens' verdicts), then the guard's verdict
on the first text as a user's message. A text the guard blocks is reported with its
categories; nothing is returned for any text of that request (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from gis_client import AsyncClient, Client, ContentBlocked, ServiceError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default=os.environ.get("GIS_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("GIS_TOKEN"))
    parser.add_argument("--model", help="a model of GET /v1/models (default: the service's)")
    args = parser.parse_args()
    with Client(args.url, token=args.token) as gis:
        try:
            answer = gis.classify(args.texts, model=args.model)
        except ContentBlocked as refused:
            codes = ", ".join(f"{c.code} {c.name}" for c in refused.categories)
            print(f"blocked at the {refused.stage} screen: {codes} (texts {refused.indices})")
            return 1
        except ServiceError as error:
            print(f"refused: {error}", file=sys.stderr)
            return 2
        for result in answer.results:
            screens = [s.safe if s else None for s in (result.input_screen, result.output_screen)]
            print(f"{answer.model}: {result.label} ({result.score:.2f}) safe screens {screens}")
        verdict = gis.moderate(args.texts[0])
        print(f"moderation: {'unsafe' if not verdict.safe else 'safe'}")
    # The same with the asyncio client, several requests at once.
    print(f"async: {asyncio.run(_classify_each(args.url, args.token, args.texts))}")
    return 0


async def _classify_each(url: str, token: str | None, texts: list[str]) -> list[str]:
    async with AsyncClient(url, token=token) as gis:
        answers = await asyncio.gather(*(gis.classify(text) for text in texts))
    return [answer.results[0].label for answer in answers]


if __name__ == "__main__":
    sys.exit(main())
