"""How much of the guard model's context a screen can need, so that no screen is cut short.

Ollama does not refuse a prompt longer than the model's context (``num_ctx``): it drops
tokens and runs on the rest, and the guard then judges part of the conversation (a harmful
request at the start of a long text, or the question a reply answers, may be gone). The
service therefore asks for a context of ``GUARD_NUM_CTX`` tokens on every screen and never
sends a conversation that might not fit it.

Counting the real tokens would need the guard's tokenizer. An upper bound does not: Llama 3's
tokenizer is a byte-level BPE, every token stands for at least one byte, so a text has at most
as many tokens as it has UTF-8 bytes. Around the conversation, Llama Guard 3's prompt (the
instructions, the fourteen hazard categories, the section markers) takes about 300 tokens;
:data:`PROMPT_TOKENS` leaves room for more, and each turn adds its role label and separators.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from service.guard.template import neutralise

PROMPT_TOKENS = 512  # the guard's prompt around the conversation, with room to spare
TURN_TOKENS = 8  # per message: its role label and separators
REPLY_RESERVE_BYTES = 64  # a classification's rendered reply ("positive (0.97)") and more
# A chat reply's room, per token it may have: about what English text takes. A reply that
# needs more is cut where the guard's context ends (finish_reason "length").
CHAT_REPLY_BYTES_PER_TOKEN = 4


def tokens_bound(contents: Iterable[str]) -> int:
    """At most how many prompt tokens the guard needs for a conversation of ``contents``."""
    return PROMPT_TOKENS + sum(TURN_TOKENS + len(text.encode("utf-8")) for text in contents)


def guard_bytes(contents: Sequence[str], limit: int) -> int:
    """The UTF-8 size of ``contents`` together as the guard reads them (markers neutralised).
    Neutralising turns a marker's ASCII brackets into 3-byte ones, so it can at most triple
    the size: only contents that could then pass ``limit`` are neutralised to count exactly.
    (Over the whole conversation, not per message: each message under a third of the limit
    does not keep their sum under it.)"""
    size = sum(len(text.encode("utf-8")) for text in contents)
    if 3 * size <= limit:
        return size
    return sum(len(neutralise(text).encode("utf-8")) for text in contents)


def conversation_bytes_limit(num_ctx: int, num_predict: int, turns: int = 1) -> int:
    """The most UTF-8 bytes ``turns`` messages may hold together and still fit a context of
    ``num_ctx`` tokens, with ``num_predict`` left for the verdict."""
    return num_ctx - num_predict - PROMPT_TOKENS - turns * TURN_TOKENS
