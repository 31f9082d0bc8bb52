"""Reading Llama Guard's answer into a verdict, and applying the blocking policy.

Llama Guard 3 answers ``safe``, or ``unsafe`` followed, on the next line, by the violated
hazard codes (``S1,S10``). The rules, strictest first:

- Surrounding whitespace and letter case are ignored (``"  UNSAFE \\n s1, s10 "``).
- ``safe`` must be the whole answer; ``safe`` followed by anything is unparseable.
- ``unsafe`` must be alone on its line and be followed by one or more codes of the taxonomy
  (``S1`` to ``S14``), separated by commas or whitespace, on one or several lines. Codes are
  upper-cased, kept in order, de-duplicated, and named from the taxonomy.
- A code outside S1..S14 (``S99``, ``S01``, ``S0``) is ``unparseable``: the policy cannot
  place it, and with a block list it would otherwise pass as "not listed".
- ``unsafe`` with no code is a guard error (``unparseable``), so the request fails closed with
  a 503: it is neither a pass nor a block without a reason, because a model that cannot name
  the hazard is not answering in the format the policy relies on.
- Anything else (an empty answer, prose, a stray token among the codes) is ``unparseable``.

Policy: with an empty block list every unsafe verdict blocks. With an explicit list only those
codes block; an unsafe verdict whose codes all fall outside it is reported (``safe=False,
blocked=False``) and let through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from service.guard.scanner import Category, Decision, GuardError, ScanResult, ScanStatus
from service.guard.taxonomy import hazard_name

_CODE = re.compile(r"^S(?:[1-9]|1[0-4])$")  # the taxonomy's codes, exactly as written
_SEPARATORS = re.compile(r"[,\s]+")


def parse_answer(text: str) -> tuple[bool, tuple[Category, ...]]:
    """``(safe, categories)`` from the model's answer; raises GuardError("unparseable")."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    if not lines:
        raise GuardError("unparseable", "empty answer from the guard model")
    head = lines[0].lower()
    if head == "safe":
        if len(lines) > 1:
            raise GuardError("unparseable", f"'safe' followed by other text: {_excerpt(text)}")
        return True, ()
    if head != "unsafe":
        raise GuardError("unparseable", f"answer is neither safe nor unsafe: {_excerpt(text)}")
    tokens = [token for line in lines[1:] for token in _SEPARATORS.split(line) if token]
    if not tokens:
        raise GuardError("unparseable", "'unsafe' without any hazard category code")
    codes: list[str] = []
    for token in tokens:
        code = token.upper()
        if not _CODE.match(code):
            raise GuardError(
                "unparseable",
                f"not a hazard code of S1..S14: {_excerpt(token)} in {_excerpt(text)}",
            )
        if code not in codes:
            codes.append(code)
    return False, tuple(Category(code, hazard_name(code)) for code in codes)


def is_blocked(categories: Iterable[Category], block_categories: Iterable[str]) -> bool:
    """Policy: does any of these categories block? An empty block list blocks everything."""
    categories = tuple(categories)
    blocking = {code.upper() for code in block_categories}
    if not blocking:
        return bool(categories)
    return any(category.code in blocking for category in categories)


def parse_verdict(text: str, *, model: str, block_categories: Iterable[str] = ()) -> ScanResult:
    """The scan result for the model's raw answer under the given blocking policy."""
    safe, categories = parse_answer(text)
    if safe:
        return ScanResult(Decision.ALLOW, (), "safe", ScanStatus.OK, model)
    names = ", ".join(f"{c.code} {c.name}" for c in categories)
    if is_blocked(categories, block_categories):
        return ScanResult(Decision.BLOCK, categories, f"unsafe: {names}", ScanStatus.OK, model)
    reason = f"unsafe, not blocked by the policy: {names}"
    return ScanResult(Decision.FLAG, categories, reason, ScanStatus.OK, model)


def _excerpt(text: str, limit: int = 80) -> str:
    flat = " ".join((text or "").split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")
