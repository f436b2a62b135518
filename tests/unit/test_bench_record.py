"""`python -m bench.record`: a bench's printed tables become its "latest run" block of docs/performance.md.

No servers: a stand-in bench module prints rich tables the way the real ones do.
"""

from __future__ import annotations

import datetime
import sys
import types
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from bench import record

DOC = Path(__file__).resolve().parents[2] / "docs" / "performance.md"
#: The benches `make bench` runs, each through bench.record.
MAKE_BENCH = ["sim_scale", "tls_cost", "chaos", "fanout", "cluster_compare", "hub_throughput"]


def _summary() -> Table:
    table = Table(title="summary, 2026-12-03: 2 cores")
    for column in ("figure", "measured", ""):
        table.add_column(column)
    table.add_row("hub end to end", "4,662/s", "[green]met[/]")
    table.add_row("a | in a cell", "1\n2", "[red]not met[/]")
    return table


def _conditions(exit_code: int = 0) -> record.Conditions:
    return record.Conditions(
        started=datetime.datetime(2026, 12, 3, 19, 40, tzinfo=datetime.UTC),
        command="python -m bench.tiny --quick",
        cores=2,
        machine="Linux x86_64",
        python="3.11.7",
        versions={"RabbitMQ": "3.10.8", "InfluxDB": None},
        load_before=0.4,
        load_after=3.4,
        exit_code=exit_code,
    )


def test_a_table_becomes_markdown_without_its_markup() -> None:
    assert record.markdown_table(_summary()) == (
        "**summary, 2026-12-03: 2 cores**\n\n"
        "| figure | measured |  |\n"
        "|---|---|---|\n"
        "| hub end to end | 4,662/s | met |\n"
        "| a \\| in a cell | 1<br>2 | not met |\n"
    )


def test_the_conditions_say_when_where_with_what_and_how_it_ended() -> None:
    assert _conditions(exit_code=1).line() == (
        "Recorded by `python -m bench.record` on 2026-12-03 at 19:40 UTC: `python -m bench.tiny --quick`, "
        "2 cores (Linux x86_64), Python 3.11.7, RabbitMQ 3.10.8, InfluxDB ?; "
        "load average 0.4 before and 3.4 after; exit code 1."
    )


def test_a_run_replaces_only_its_own_block() -> None:
    document = (
        "# P\n\n<!-- bench:tiny -->\nold run\n<!-- /bench:tiny -->\n\nhand-written analysis\n\n"
        "<!-- bench:other -->\nother run\n<!-- /bench:other -->\n"
    )
    updated = record.with_run(document, "tiny", "new run\n")
    assert updated == document.replace("old run", "new run")


def test_a_bench_without_a_block_gets_a_section_at_the_end() -> None:
    updated = record.with_run("# P\n\ntext\n", "tiny", "new run\n")
    assert updated == (
        "# P\n\ntext\n\n## Latest run of `bench.tiny`\n\n<!-- bench:tiny -->\nnew run\n<!-- /bench:tiny -->\n"
    )


def test_every_bench_make_bench_runs_is_recorded_into_its_block() -> None:
    makefile = (DOC.parents[1] / "Makefile").read_text(encoding="utf-8")
    text = DOC.read_text(encoding="utf-8")
    for name in MAKE_BENCH:
        assert f"$(PY) -m bench.record bench.{name}\n" in makefile, f"make bench does not record bench.{name}"
        start, end = record.markers(name)
        assert text.count(start) == 1 and text.count(end) == 1, f"docs/performance.md needs one block for {name}"


def _tiny_bench(exit_code: int | None, tables: bool = True) -> types.ModuleType:
    module = types.ModuleType("bench.tiny")

    def main() -> int | None:
        console = Console(width=80, file=open("/dev/null", "w"))  # noqa: SIM115 - the bench's own console
        console.print("starting a stack in /tmp/x ...")
        if tables:
            console.print(_summary())
        console.print(f"[bold]tiny:[/] 1 drill, argv {sys.argv[1:]}")
        return exit_code

    module.main = main  # type: ignore[attr-defined]
    return module


def test_record_runs_the_bench_and_writes_its_tables_and_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bench.tiny", _tiny_bench(exit_code=1))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    doc = tmp_path / "performance.md"
    doc.write_text("# P\n\n<!-- bench:tiny -->\nnot run yet\n<!-- /bench:tiny -->\n\nanalysis\n")

    assert record.record("bench.tiny", ["--quick"], doc) == 1

    text = doc.read_text()
    block = text.split("<!-- bench:tiny -->\n")[1].split("<!-- /bench:tiny -->")[0]
    assert block.startswith("Recorded by `python -m bench.record` on ")
    assert "`python -m bench.tiny --quick`" in block and "exit code 1." in block
    assert "| hub end to end | 4,662/s | met |" in block
    assert "    tiny: 1 drill, argv ['--quick']" in block
    assert "starting a stack" not in block, "lines before the last table are progress, not results"
    assert text.endswith("<!-- /bench:tiny -->\n\nanalysis\n")
    assert Console.print is not None and "print_and_keep" not in Console.print.__qualname__


def test_a_bench_that_printed_no_table_leaves_the_doc_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bench.tiny", _tiny_bench(exit_code=None, tables=False))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    doc = tmp_path / "performance.md"
    doc.write_text("# P\n\n<!-- bench:tiny -->\nnot run yet\n<!-- /bench:tiny -->\n")

    assert record.record("bench.tiny", ["--help"], doc) == 0
    assert doc.read_text() == "# P\n\n<!-- bench:tiny -->\nnot run yet\n<!-- /bench:tiny -->\n"


@pytest.mark.parametrize(("raised", "code"), [(None, 0), (0, 0), (3, 3), ("a message", 1)])
def test_a_bench_s_exit_code_is_the_record_s(raised: int | str | None, code: int) -> None:
    def main() -> None:
        raise SystemExit(raised)

    assert record.run_bench(main) == code
