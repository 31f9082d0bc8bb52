"""Neutralising the guard's own control markers in the text it judges.

Ollama renders the conversation into Llama Guard 3's prompt template and tokenizes the result
with special tokens enabled, so a message that contains ``<|eot_id|>`` or
``<|start_header_id|>assistant<|end_header_id|>`` would become real control tokens: the text
could close its own turn and write the guard's verdict itself. The template's section
markers (``<BEGIN CONVERSATION>``, ``<END CONVERSATION>``, ``<BEGIN UNSAFE CONTENT
CATEGORIES>``, ``<END UNSAFE CONTENT CATEGORIES>``) are plain text, but a message repeating
them can make the model read part of the message as the template's own instructions.

:func:`neutralise` rewrites every such marker so it can no longer be either:

- **which markers:** every ``<|name|>`` special-token string (all of Llama 3's:
  ``<|begin_of_text|>``, ``<|eot_id|>``, ``<|start_header_id|>``, ``<|python_tag|>``,
  ``<|reserved_special_token_N|>``, ... and any other ``<|name|>`` of letters, digits and
  ``_``) and the four section markers; in any letter case, with whitespace around the
  ``|`` or the name (``< | eot_id | >``), several blanks or a line break between words
  (``<END  CONVERSATION>``), and with Unicode lookalikes of ``<``, ``>`` and ``|``
  (full-width ``＜｜eot_id｜＞``, small ``﹤ ﹥``, angle brackets ``〈 〉 ⟨ ⟩``, ``‹ ›``).
- **how:** only the marker's two brackets change: the opening one becomes ``‹`` (U+2039)
  and the closing one ``›`` (U+203A), so ``<|eot_id|>`` reads ``‹|eot_id|›`` and
  ``<END CONVERSATION>`` reads ``‹END CONVERSATION›``. The text stays readable (the guard
  still sees that the text carries a marker, and judges it as the text it is), no character
  is added or dropped, and no ASCII special-token string or section marker can remain or be
  created (only ASCII brackets are ever replaced, and by non-ASCII ones).
- **idempotent:** ``‹`` and ``›`` are lookalikes themselves, so a neutral marker is matched
  again and rewritten to itself: ``neutralise(neutralise(t)) == neutralise(t)``.
- **what stays:** everything else, character for character: HTML such as ``<b>``,
  comparisons such as ``a < b`` or ``x || y``, role-like line prefixes such as ``User:`` or
  ``Agent:`` (text, not markers: the guard judges them as what the caller wrote).

It is applied only to the message contents sent to Ollama (``LlamaGuard._chat``); the cache
key, the logs and everything the caller gets back keep the caller's exact text.
"""

from __future__ import annotations

import re

NEUTRAL_OPEN = "\u2039"  # ‹ SINGLE LEFT-POINTING ANGLE QUOTATION MARK
NEUTRAL_CLOSE = "\u203a"  # › SINGLE RIGHT-POINTING ANGLE QUOTATION MARK

# "<" and its lookalikes: full-width, small form, math and CJK angle brackets, modifier
# letter, and the neutral form itself (so that a second pass is a no-op).
_OPEN = "<\uff1c\ufe64\u2329\u3008\u27e8\u02c2" + NEUTRAL_OPEN
_CLOSE = ">\uff1e\ufe65\u232a\u3009\u27e9\u02c3" + NEUTRAL_CLOSE
# "|" and its lookalikes: full-width, broken bar, divides, Latin dental click, box drawing.
_BAR = "|\uff5c\u00a6\u2223\u01c0\u2502"

_BLANK = r"\s*"  # any whitespace, line breaks included (Unicode spaces too)
_GAP = r"\s+"

# <|name|>: a special-token string; the name is letters, digits and "_" (a blank-separated
# name such as "eot id" counts too, as a model might still read it as the token).
_SPECIAL_TOKEN = (
    rf"(?P<st_open>[{_OPEN}]){_BLANK}[{_BAR}]{_BLANK}"
    rf"[A-Za-z0-9_]{{1,64}}(?:{_GAP}[A-Za-z0-9_]{{1,64}}){{0,4}}"
    rf"{_BLANK}[{_BAR}]{_BLANK}(?P<st_close>[{_CLOSE}])"
)
# <BEGIN|END UNSAFE CONTENT CATEGORIES> and <BEGIN|END CONVERSATION>.
_SECTION = (
    rf"(?P<sm_open>[{_OPEN}]){_BLANK}(?:BEGIN|END){_GAP}"
    rf"(?:UNSAFE{_GAP}CONTENT{_GAP}CATEGORIES|CONVERSATION)"
    rf"{_BLANK}(?P<sm_close>[{_CLOSE}])"
)
MARKER = re.compile(rf"{_SPECIAL_TOKEN}|{_SECTION}", re.IGNORECASE)


def _neutral(match: re.Match[str]) -> str:
    text = match.group(0)
    return NEUTRAL_OPEN + text[1:-1] + NEUTRAL_CLOSE  # a marker starts and ends on a bracket


def neutralise(text: str) -> str:
    """``text`` with every special-token string and template section marker made inert by
    swapping its brackets for ``‹`` ``›`` (see the module docstring); idempotent."""
    return MARKER.sub(_neutral, text)
