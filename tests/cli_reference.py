"""The generated part of docs/cli.md: every command's `--help`, exactly as a user sees it.

After each `<!-- help: python -m hub send -->` marker, docs/cli.md holds a ```text block with that
command's help rendered at `HELP_WIDTH` columns. `tests/unit/test_reference_docs.py` fails when a
command has no block or its block differs from the code; rewrite every block with

    .venv/bin/python -m tests.cli_reference

(a command with no marker yet is named, and gets none: give it a section and a marker by hand).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from devices.sim import sim
from hub.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
#: Columns the help is rendered at, whatever the terminal running the test.
HELP_WIDTH = 100
MARKER = re.compile(r"^<!-- help: (?P<command>.+) -->$")
FENCE = "```"


def _context(command: click.Command, info_name: str, parent: click.Context | None = None) -> click.Context:
    settings = dict(command.context_settings)
    if parent is None:
        settings.update(terminal_width=HELP_WIDTH, max_content_width=HELP_WIDTH)
    return click.Context(command, info_name=info_name, parent=parent, **settings)


def commands() -> dict[str, click.Context]:
    """Every command line a user can type, `python -m hub` and each (sub)subcommand, and the
    simulator, with the context its help renders in."""
    found: dict[str, click.Context] = {}

    def walk(context: click.Context) -> None:
        found[context.command_path] = context
        command = context.command
        if isinstance(command, click.Group):
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                assert sub is not None, f"{context.command_path} lists {name!r} but has no such command"
                walk(_context(sub, name, context))

    walk(_context(cli, "python -m hub"))
    walk(_context(sim, "python -m devices.sim"))
    return found


def render(context: click.Context) -> str:
    return context.command.get_help(context).rstrip() + "\n"


@dataclass(frozen=True)
class Block:
    """A generated help block: lines `start` (the fence's first line) up to `end` (excluded)."""

    command: str
    marker_line: int
    start: int
    end: int
    text: str


def blocks(lines: list[str]) -> list[Block]:
    """The help blocks of docs/cli.md, in order. A marker must be followed at once by a ```text block."""
    found: list[Block] = []
    for index, line in enumerate(lines):
        marker = MARKER.match(line)
        if not marker:
            continue
        opening = index + 1
        if opening >= len(lines) or lines[opening] != f"{FENCE}text":
            raise ValueError(f"docs/cli.md line {index + 1}: a help marker must be followed by a ```text line")
        closing = opening + 1
        while closing < len(lines) and lines[closing] != FENCE:
            closing += 1
        if closing == len(lines):
            raise ValueError(f"docs/cli.md line {opening + 1}: the ```text block never closes")
        text = "".join(f"{body}\n" for body in lines[opening + 1 : closing])
        found.append(Block(marker["command"], index + 1, opening, closing + 1, text))
    return found


def rewritten(text: str, known: dict[str, click.Context]) -> tuple[str, list[str]]:
    """The document with every help block rendered afresh, and the commands it has no marker for."""
    lines = text.splitlines()
    out: list[str] = []
    done = 0
    documented = set()
    for block in blocks(lines):
        if block.command not in known:
            raise ValueError(f"docs/cli.md line {block.marker_line}: no command {block.command!r}")
        documented.add(block.command)
        out += lines[done : block.start]
        out += [f"{FENCE}text", *render(known[block.command]).splitlines(), FENCE]
        done = block.end
    out += lines[done:]
    return "\n".join(out) + "\n", sorted(set(known) - documented)


def main() -> None:
    text, missing = rewritten(DOC.read_text(encoding="utf-8"), commands())
    DOC.write_text(text, encoding="utf-8")
    print(f"rewrote the help blocks of {DOC.relative_to(ROOT)}")
    if missing:
        print(f"no section yet for: {', '.join(missing)} (add `<!-- help: ... -->` and a ```text block)")
        sys.exit(1)


if __name__ == "__main__":
    main()
