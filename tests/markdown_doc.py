"""Reading the project's Markdown the way GitHub renders it: tables, headings and their anchors, links.

Pure functions over text, for the tests that keep the docs and the code in agreement. Fenced code
blocks are skipped (a `# comment` in a shell example is no heading, a `[x](y)` in one is no link),
and so are inline code spans when links are looked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
#: `[text](target)` and `![alt](target)`, with an optional "title".
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
TABLE_RULE = re.compile(r"^\|[\s|:-]+\|$")


@dataclass(frozen=True)
class Line:
    number: int
    text: str


@dataclass(frozen=True)
class Table:
    line: int
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Link:
    line: int
    target: str


def prose_lines(text: str) -> list[Line]:
    """The lines outside fenced code blocks, with their numbers (from 1)."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(Line(number, line))
    return lines


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(text: str) -> list[Table]:
    found: list[Table] = []
    lines = prose_lines(text)
    index = 0
    while index < len(lines):
        line = lines[index]
        following = lines[index + 1].text if index + 1 < len(lines) else ""
        if line.text.startswith("|") and TABLE_RULE.match(following):
            rows = []
            index += 2
            while index < len(lines) and lines[index].text.startswith("|"):
                rows.append(cells(lines[index].text))
                index += 1
            found.append(Table(line.number, cells(line.text), rows))
            continue
        index += 1
    return found


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces become hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every `#anchor` the document has: its headings (repeated ones get -1, -2, ...) and <a id>."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(text):
        heading = HEADING.match(line.text)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ANCHOR.findall(line.text))
    return found


def links(text: str) -> list[Link]:
    """Every link and image target of the prose (not in code), in order."""
    return [
        Link(line.number, match.group(1))
        for line in prose_lines(text)
        for match in LINK.finditer(CODE_SPAN.sub("", line.text))
    ]


def is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target) is not None


def broken_links(document: Path, root: Path) -> list[str]:
    """The relative links of `document` whose file, or whose #anchor in a Markdown file, does not exist."""
    problems = []
    for link in links(document.read_text(encoding="utf-8")):
        if is_external(link.target):
            continue
        path_part, _, anchor = link.target.partition("#")
        target = (document.parent / path_part).resolve() if path_part else document
        where = f"{document.relative_to(root)} line {link.line}: ({link.target})"
        if not target.exists():
            problems.append(f"{where}: no file {path_part}")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text(encoding="utf-8")):
            problems.append(f"{where}: {target.relative_to(root)} has no heading or anchor #{anchor}")
        elif anchor and target.suffix != ".md":
            problems.append(f"{where}: an #anchor into a file that is not Markdown")
    return problems
