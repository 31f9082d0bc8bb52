"""The documentation stays true to the repository.

- README.md stays a front page: at most 10 KB, linking every page under docs/.
- Every relative link in README.md and docs/*.md points to a file that exists, and every
  anchor to a heading that exists.
- docs/configuration.md has exactly one table row per field of ``service.config.Settings``,
  in the class's order, naming the upper-case variable and the field's default.
- Every variable in .env.example is a setting or a documented Compose-only variable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
DEPLOYMENT = DOCS / "deployment.md"
README_MAX_BYTES = 10 * 1024

DOC_PAGES = sorted(DOCS.glob("*.md"))
MARKDOWN_FILES = [README, *DOC_PAGES]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
TABLE_ROW = re.compile(r"^\s*\|(.*)\|\s*$")
VARIABLE_CELL = re.compile(r"^`([A-Z][A-Z0-9_]*)`$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        reference = REFERENCE_LINK.match(line)
        if reference:
            targets.append(reference.group(1))
            continue
        # Code spans are not links: `[a](b)` inside backticks stays text.
        line = INLINE_CODE.sub("", line)
        targets.extend(match.group(1) for match in INLINE_LINK.finditer(line))
    return targets


def relative_links(path: Path) -> list[str]:
    return [target for target in links(path) if target and not SCHEME.match(target)]


def linked_files(path: Path) -> set[Path]:
    return {
        (path.parent / target.split("#", 1)[0]).resolve()
        for target in relative_links(path)
        if target.split("#", 1)[0]
    }


def table_rows(path: Path) -> list[list[str]]:
    """Every Markdown table row of a file, as stripped cells (separator rows left out)."""
    rows = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = TABLE_ROW.match(line)
        if not match:
            continue
        cells = [cell.strip() for cell in match.group(1).split("|")]
        if all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
            continue
        rows.append(cells)
    return rows


def render_default(value: Any) -> str:
    """A field's default as docs/configuration.md writes it."""
    if value is None or value == "" or value == []:
        return "empty"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, list | tuple):
        text = ",".join(str(item) for item in value)
    else:
        text = str(value)
    return f"`{text}`"


def expected_settings() -> dict[str, str]:
    """Variable name -> rendered default, in the order the class defines its fields."""
    return {
        name.upper(): render_default(field.get_default(call_default_factory=True))
        for name, field in Settings.model_fields.items()
    }


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of every table row of docs/configuration.md."""
    documented = []
    for cells in table_rows(CONFIGURATION):
        match = VARIABLE_CELL.match(cells[0])
        if not match:
            continue
        assert len(cells) == 3, (
            f"configuration row {cells!r} is not | Variable | Default | Meaning |"
        )
        documented.append((match.group(1), cells[1], cells[2]))
    return documented


# --- README ---------------------------------------------------------------------------------


def test_readme_is_a_front_page() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move detail to docs/"
    )


@pytest.mark.parametrize(
    "index", [README, DOCS / "README.md"], ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_docs_page_is_linked(index: Path) -> None:
    linked = linked_files(index)
    pages = [page for page in DOC_PAGES if page.resolve() != index.resolve()]
    missing = [page.name for page in pages if page.resolve() not in linked]
    assert not missing, f"{index.relative_to(ROOT)} does not link docs/{missing}"


# --- links ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.name}")
    assert not broken, f"{path.relative_to(ROOT)}: broken links {broken}"


def test_slugs_follow_github() -> None:
    assert github_slug("Examples (curl, HTTP/2)") == "examples-curl-http2"
    assert (
        github_slug("The guard as a service: `/v1/moderate`") == "the-guard-as-a-service-v1moderate"
    )
    assert github_slug("A2A and authentication") == "a2a-and-authentication"


# --- configuration --------------------------------------------------------------------------


def test_configuration_documents_every_setting_once() -> None:
    expected = expected_settings()
    names = [name for name, _, _ in documented_settings()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    missing = [name for name in expected if name not in names]
    extra = [name for name in names if name not in expected]
    assert not duplicates, f"docs/configuration.md has more than one row for {duplicates}"
    assert not missing, f"settings not documented in docs/configuration.md: {missing}"
    assert not extra, f"docs/configuration.md has rows for variables that are not settings: {extra}"
    assert names == list(expected), (
        "docs/configuration.md lists the settings in another order than service/config.py"
    )


def test_configuration_defaults_match_the_class() -> None:
    expected = expected_settings()
    wrong = {
        name: (default, expected[name])
        for name, default, _ in documented_settings()
        if name in expected and default != expected[name]
    }
    assert not wrong, f"documented default != class default (documented, expected): {wrong}"


def test_configuration_explains_every_setting() -> None:
    unexplained = [name for name, _, meaning in documented_settings() if not meaning]
    assert not unexplained, f"no meaning given for {unexplained}"


def test_errors_lists_every_problem_type_with_its_status() -> None:
    from service.core.errors import ERRORS

    rows = {
        cells[1].strip("`"): cells[0] for cells in table_rows(DOCS / "errors.md") if len(cells) > 1
    }
    for spec in ERRORS.values():
        assert spec.uri in rows, f"docs/errors.md has no row for {spec.uri}"
        expected = "(A2A only)" if spec.a2a_only else str(spec.status)
        assert rows[spec.uri] == expected, f"{spec.uri}: {rows[spec.uri]} in docs/errors.md"


def test_glibc_tunables_documented_as_make_sets_them() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^export GLIBC_TUNABLES\s*:?=\s*(\S+)", makefile, re.MULTILINE)
    assert match, "the Makefile no longer exports GLIBC_TUNABLES"
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert f"GLIBC_TUNABLES={match.group(1)}" in text


def test_env_example_names_only_documented_variables() -> None:
    settings = set(expected_settings())
    compose_only = {
        name
        for cells in table_rows(DEPLOYMENT)
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
    }
    variables = re.findall(
        r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(encoding="utf-8"), re.MULTILINE
    )
    assert variables, ".env.example lists no variables"
    unknown = [name for name in variables if name not in settings | compose_only]
    assert not unknown, (
        f".env.example names {unknown}: neither settings nor Compose-only variables "
        "documented in docs/deployment.md"
    )
