"""``python -m service guard-check "text"``: ask the guard about one text from the shell."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, TextIO

from service.guard.llama_guard import LlamaGuard
from service.guard.scanner import GuardError, Message

if TYPE_CHECKING:
    from service.config import Settings

EXIT_ALLOWED = 0  # safe, or unsafe with no blocking category
EXIT_BLOCKED = 1
EXIT_GUARD_ERROR = 2


async def guard_check(
    text: str, settings: Settings, reply: str | None = None, out: TextIO | None = None
) -> int:
    """Print the verdict on ``text`` (or on ``reply`` to it) as JSON; return the exit code:
    0 allowed, 1 blocked, 2 no verdict (guard error). Screens even when GUARD_SCREEN_INPUT or
    GUARD_SCREEN_OUTPUT is off: the check is asked for explicitly."""
    out = out or sys.stdout
    conversation = [Message("user", text)]
    if reply is not None:
        conversation.append(Message("assistant", reply))
    async with LlamaGuard(settings) as guard:
        try:
            verdict = await guard.screen(conversation)
        except GuardError as error:
            print(json.dumps({"error": error.to_dict(), "model": guard.model}), file=out)
            return EXIT_GUARD_ERROR
    print(json.dumps(verdict.to_dict()), file=out)
    return EXIT_BLOCKED if verdict.blocked else EXIT_ALLOWED
