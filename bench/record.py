"""Run a bench and write what it printed into docs/performance.md: `python -m bench.record bench.<name> [args]`.

`make bench` runs every bench through this. The bench runs in this process, unchanged: every rich
`Table` it prints is kept, and so are the lines it prints after its last table (its verdict).
When it ends, with whatever exit code, the block between `<!-- bench:<name> -->` and
`<!-- /bench:<name> -->` of docs/performance.md becomes those tables as Markdown, under one line
of conditions: when, the command, the machine, the versions, the load average before and after,
the exit code. A bench with no marker yet gets a new section at the end.

Nothing is written when the bench printed no table (`--help`), is stopped (Ctrl-C, SIGTERM) or
crashes: the last recorded run stays. A bench run by hand (`python -m bench.<name>`) writes nothing.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.errors import MarkupError
from rich.table import Table
from rich.text import Text

from hub.core.signals import interrupt_on_stop_signals

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
#: The Debian packages whose versions a run is recorded with.
PACKAGES = {"RabbitMQ": "rabbitmq-server", "InfluxDB": "influxdb"}


# --- what a bench printed, as Markdown (pure) ------------------------------------------------------


def plain(renderable: Any) -> str:
    """The text of a cell, a header or a line as a reader sees it: rich markup gone."""
    if isinstance(renderable, Text):
        return renderable.plain
    if isinstance(renderable, str):
        try:
            return Text.from_markup(renderable).plain
        except MarkupError:
            return renderable
    return str(renderable)


def _cell(renderable: Any) -> str:
    return plain(renderable).strip().replace("|", "\\|").replace("\n", "<br>")


def markdown_table(table: Table) -> str:
    """A rich table as a Markdown table, its title in bold above it."""
    header = [_cell(column.header) for column in table.columns]
    rows = zip(*(list(column.cells) for column in table.columns), strict=True)
    lines = [f"**{_cell(table.title)}**", ""] if table.title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Conditions:
    """What a reader needs to judge a run's figures."""

    started: datetime.datetime
    command: str
    cores: int
    machine: str
    python: str
    versions: dict[str, str | None]
    load_before: float
    load_after: float
    exit_code: int

    def line(self) -> str:
        versions = ", ".join(f"{name} {version or '?'}" for name, version in self.versions.items())
        return (
            f"Recorded by `python -m bench.record` on {self.started:%Y-%m-%d} at {self.started:%H:%M} UTC: "
            f"`{self.command}`, {self.cores} cores ({self.machine}), Python {self.python}, {versions}; "
            f"load average {self.load_before:.1f} before and {self.load_after:.1f} after; "
            f"exit code {self.exit_code}."
        )


def run_block(conditions: Conditions, printed: list[Table | str]) -> str:
    """The recorded run: the conditions, every table, then the lines printed after the last table."""
    tables = [item for item in printed if isinstance(item, Table)]
    last_table = max(index for index, item in enumerate(printed) if isinstance(item, Table))
    verdict = [item for item in printed[last_table + 1 :] if isinstance(item, str) and item.strip()]
    parts = [conditions.line(), *(markdown_table(table) for table in tables)]
    if verdict:
        parts.append("\n".join(f"    {line}" for text in verdict for line in text.splitlines()) + "\n")
    return "\n\n".join(part.rstrip("\n") for part in parts) + "\n"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def with_run(document: str, name: str, block: str) -> str:
    """The document with bench `name`'s block replaced by `block` (a new section at the end if it has none)."""
    start, end = markers(name)
    opening = document.find(start)
    closing = document.find(end, opening + len(start)) if opening >= 0 else -1
    if opening < 0 or closing < 0:
        return f"{document.rstrip()}\n\n## Latest run of `bench.{name}`\n\n{start}\n{block}{end}\n"
    return f"{document[: opening + len(start)]}\n{block}{document[closing:]}"


# --- running a bench in this process -------------------------------------------------------------


@dataclass
class Recorder:
    """Keeps what any rich Console prints: tables, and text lines (plain)."""

    printed: list[Table | str] = field(default_factory=list)

    @contextmanager
    def recording(self) -> Iterator[None]:
        original: Callable[..., None] = Console.print

        def print_and_keep(console: Console, *objects: Any, **kwargs: Any) -> None:
            for item in objects:
                if isinstance(item, Table):
                    self.printed.append(item)
                elif isinstance(item, str | Text):
                    self.printed.append(plain(item))
            original(console, *objects, **kwargs)

        Console.print = print_and_keep  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            Console.print = original  # type: ignore[method-assign]

    @property
    def has_tables(self) -> bool:
        return any(isinstance(item, Table) for item in self.printed)


def package_version(package: str) -> str | None:
    try:
        found = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    if found.returncode != 0 or not found.stdout:
        return None
    return found.stdout.rsplit("-", 1)[0]  # the upstream version, without Debian's revision


def run_bench(main: Callable[[], object]) -> int:
    """Call a bench's `main` as `python -m` would, and return its exit code."""
    try:
        returned = main()
    except SystemExit as exc:
        returned = exc.code
    if returned is None:
        return 0
    return returned if isinstance(returned, int) else 1


def record(module_name: str, args: list[str], doc: Path = DOC) -> int:
    module = importlib.import_module(module_name)
    name = module_name.removeprefix("bench.")
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()[0]
    sys.argv = [f"python -m {module_name}", *args]
    recorder = Recorder()
    with recorder.recording():
        exit_code = run_bench(module.main)
    if not recorder.has_tables:
        print(f"bench.record: {module_name} printed no table; {doc.name} is left as it is", file=sys.stderr)
        return exit_code
    conditions = Conditions(
        started=started,
        command=" ".join(["python", "-m", module_name, *map(shlex.quote, args)]),
        cores=os.cpu_count() or 0,
        machine=f"{platform.system()} {platform.machine()}",
        python=platform.python_version(),
        versions={label: package_version(package) for label, package in PACKAGES.items()},
        load_before=load_before,
        load_after=os.getloadavg()[0],
        exit_code=exit_code,
    )
    doc.write_text(with_run(doc.read_text(encoding="utf-8"), name, run_block(conditions, recorder.printed)))
    print(f"bench.record: the run of {module_name} is in {doc}", file=sys.stderr)
    return exit_code


def main() -> None:
    interrupt_on_stop_signals()
    if len(sys.argv) < 2 or not sys.argv[1].startswith("bench.") or sys.argv[1] == "bench.record":
        print("usage: python -m bench.record bench.<name> [the bench's arguments]", file=sys.stderr)
        sys.exit(2)
    sys.exit(record(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
