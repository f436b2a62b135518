"""The reference in docs/ and the code agree, and every link between the docs leads somewhere.

No servers: the Markdown is read (tests/markdown_doc.py) and compared with `Settings`
(hub/core/config.py), the click commands of `python -m hub` and `python -m devices.sim`, and the
files of the repository. Like test_contract_doc.py, a failure names the document, the line and
what differs; a new setting or subcommand fails here until the reference has it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest

from hub.cli.main import SUBCOMMANDS
from hub.core.config import Settings
from tests import cli_reference, markdown_doc

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
CLI = ROOT / "docs" / "cli.md"
#: Every Markdown file whose links are checked.
DOCUMENTS = sorted([README, *(ROOT / "docs").glob("*.md"), ROOT / "deploy" / "README.md"])
#: The README is a guide: the reference lives in docs/.
README_MAX_LINES = 300
#: `IOT_*` names the docs print on purpose although no setting has them.
NOT_SETTINGS = {"IOT_MQTT_PROT": "the example of a mistyped variable and its warning"}


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- settings: docs/configuration.md -------------------------------------------------------------


def _code_settings() -> dict[str, Any]:
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix == "IOT_", f"Settings read {prefix!r}* variables, the docs document IOT_*"
    return {f"IOT_{name.upper()}": field.default for name, field in Settings.model_fields.items()}


def _documented_settings() -> dict[str, tuple[int, str]]:
    """variable -> (line of its table, its development default cell), from every `variable` table."""
    tables = [t for t in markdown_doc.tables(CONFIGURATION.read_text(encoding="utf-8")) if t.header[0] == "variable"]
    assert tables, "docs/configuration.md has no table whose first column is 'variable'"
    documented: dict[str, tuple[int, str]] = {}
    for table in tables:
        assert "development default" in table.header, (
            f"docs/configuration.md line {table.line}: a settings table needs a 'development default' column"
        )
        default = table.header.index("development default")
        for row in table.rows:
            spans = markdown_doc.code_spans(row[0])
            assert len(spans) == 1, f"docs/configuration.md line {table.line}: one `IOT_...` per row, got {row[0]!r}"
            assert spans[0] not in documented, (
                f"docs/configuration.md line {table.line}: {spans[0]} is also at line {documented[spans[0]][0]}"
            )
            documented[spans[0]] = (table.line, row[default])
    return documented


def test_every_setting_is_documented_and_every_documented_setting_exists() -> None:
    documented, code = _documented_settings(), _code_settings()
    undocumented = sorted(set(code) - set(documented))
    unknown = sorted(set(documented) - set(code))
    assert not undocumented, f"docs/configuration.md: fields of Settings missing from its tables: {undocumented}"
    assert not unknown, f"docs/configuration.md: its tables name variables Settings does not have: {unknown}"


def _documented_default(cell: str) -> str | None:
    if cell == "unset":
        return None
    if cell == "empty":
        return ""
    spans = markdown_doc.code_spans(cell)
    assert len(spans) == 1, f"a development default is `value`, unset or empty; got {cell!r}"
    return spans[0]


def test_development_defaults_are_the_code_defaults() -> None:
    documented = _documented_settings()
    problems = []
    for variable, default in _code_settings().items():
        if variable not in documented:
            continue  # reported by the test above
        line, cell = documented[variable]
        in_doc, in_code = _documented_default(cell), None if default is None else str(default)
        if in_doc != in_code:
            problems.append(f"line {line}: {variable} is {in_doc!r} in the doc, {in_code!r} in the code")
    assert not problems, "docs/configuration.md: development defaults differ:\n  " + "\n  ".join(problems)


def test_every_iot_variable_the_docs_name_is_a_setting() -> None:
    settings = set(_code_settings())
    problems = []
    for document in DOCUMENTS:
        for line in markdown_doc.prose_lines(document.read_text(encoding="utf-8")):
            for name in re.findall(r"\bIOT_[A-Z0-9_]*[A-Z0-9]\b", line.text):
                if name not in settings and name not in NOT_SETTINGS:
                    problems.append(f"{_relative(document)} line {line.number}: {name}")
    assert not problems, "the docs name IOT_* variables that are no setting:\n  " + "\n  ".join(problems)


# --- commands: docs/cli.md -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def help_blocks() -> dict[str, cli_reference.Block]:
    blocks = cli_reference.blocks(CLI.read_text(encoding="utf-8").splitlines())
    found: dict[str, cli_reference.Block] = {}
    for block in blocks:
        assert block.command not in found, f"docs/cli.md line {block.marker_line}: a second block for {block.command}"
        found[block.command] = block
    return found


def test_every_subcommand_has_its_help_in_the_cli_reference(help_blocks: dict[str, cli_reference.Block]) -> None:
    from hub.stack.cli import stack

    stack_commands = stack.list_commands(click.Context(stack))
    expected = {
        "python -m hub",
        *(f"python -m hub {name}" for _module, name in SUBCOMMANDS),
        *(f"python -m hub stack {name}" for name in stack_commands),
        "python -m devices.sim",
    }
    assert {"up", "down", "status"} <= set(stack_commands)
    missing = sorted(expected - set(help_blocks))
    assert not missing, (
        f"docs/cli.md has no section for {missing}: add a heading, a `<!-- help: ... -->` marker and a "
        "```text block, then run `.venv/bin/python -m tests.cli_reference`"
    )


def test_every_help_block_is_the_command_s_help(
    help_blocks: dict[str, cli_reference.Block], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `send --help` lists the commands of the device models: the shipped ones, whatever this shell says.
    monkeypatch.delenv("IOT_MODELS_FILE", raising=False)
    commands = cli_reference.commands()
    unknown = sorted(set(help_blocks) - set(commands))
    assert not unknown, f"docs/cli.md has help blocks for commands that do not exist: {unknown}"
    stale = [
        f"line {block.marker_line}: {name}"
        for name, block in help_blocks.items()
        if block.text != cli_reference.render(commands[name])
    ]
    assert not stale, (
        "docs/cli.md: these help blocks differ from the commands' --help; run "
        "`.venv/bin/python -m tests.cli_reference`:\n  " + "\n  ".join(stale)
    )


def test_rewriting_the_cli_reference_changes_only_help_blocks(tmp_path: Path) -> None:
    text = "# t\n\nprose\n\n<!-- help: python -m hub stack down -->\n```text\nold\n```\n\nmore prose\n"
    rewritten, missing = cli_reference.rewritten(text, cli_reference.commands())
    assert rewritten.startswith("# t\n\nprose\n\n<!-- help: python -m hub stack down -->\n```text\nUsage: ")
    assert rewritten.endswith("```\n\nmore prose\n")
    assert "python -m hub send" in missing and "python -m hub stack down" not in missing


# --- the README and the links --------------------------------------------------------------------


def test_the_readme_is_a_guide_of_at_most_300_lines() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, more than {README_MAX_LINES}: it is the guide; move reference "
        "material to docs/ (cli.md, configuration.md, operations.md, performance.md, security.md)"
    )


def test_the_readme_keeps_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text, "README.md lost `make demo` or `make test`"
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("document", DOCUMENTS, ids=_relative)
def test_every_relative_link_leads_to_a_file_and_its_anchor(document: Path) -> None:
    broken = markdown_doc.broken_links(document, ROOT)
    assert not broken, "broken links:\n  " + "\n  ".join(broken)


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# The `hub run` guide\n\n## Two words\n\n## Two words\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#the-hub-run-guide) [ok](b.md#two-words-1) [ok](#local) [web](https://example.com/x#y)\n"
        "[gone](c.md) [no anchor](b.md#three-words)\n\n## Local\n\n```sh\n[not a link](d.md)\n```\n"
    )
    assert markdown_doc.broken_links(page, tmp_path) == [
        "a.md line 2: (c.md): no file c.md",
        "a.md line 2: (b.md#three-words): b.md has no heading or anchor #three-words",
    ]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("`python -m hub send` (also `iot-hub send`)", "python--m-hub-send-also-iot-hub-send"),
        ("Rules (`rules.yaml`, `IOT_RULES_FILE`)", "rules-rulesyaml-iot_rules_file"),
        ("Where a command's round trip goes", "where-a-commands-round-trip-goes"),
        ("Chronograf (with Docker): http://localhost:8888", "chronograf-with-docker-httplocalhost8888"),
    ],
)
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert markdown_doc.slug(heading) == anchor
