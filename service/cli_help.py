"""Help text of the command line (``gis``, ``python -m agents``, ``python -m service.server``).

Docstrings mark code up for Sphinx-style readers (double backquotes, ``:func:`` roles);
``--help`` shows them as plain text. ``serve --help`` ends with every setting and its
default, read from :class:`service.config.Settings`, so the list cannot fall behind.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)


def plain(text: str) -> str:
    """``code`` -> code, :func:`name` -> name (reStructuredText markup out of help text)."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))


def settings_epilog() -> str:
    """Every setting as NAME=default, for the end of ``serve --help``."""
    from service.config import Settings, settings_report

    defaults = settings_report(Settings.model_construct())  # the class's defaults only
    width = max(len(name) for name in defaults)
    lines = [
        "settings:",
        "  The service reads every setting from its environment variable (and from a .env",
        "  file in the working directory); an option above overrides its variable.",
        "  `gis config` prints the values in effect; docs/configuration.md says what each",
        f"  one does. All {len(defaults)} of them, with their defaults:",
        "",
    ]
    for name, value in defaults.items():
        shown = value.removesuffix(".0") if re.fullmatch(r"\d+\.0", value) else value
        lines.append(f"  {name:<{width}}  {shown or '(empty)'}")
    return "\n".join(lines)
