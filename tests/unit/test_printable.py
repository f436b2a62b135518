"""Device text made safe to show: control characters, bidi overrides and rich markup never act."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

import hub.dashboard
from hub.cli.control import _state_text, _text
from hub.control.tail import as_json_line, describe
from hub.core.contract import Ack, Presence, encode
from hub.core.printable import printable, printable_json, printable_values

TITLE = "\x1b]0;pwned\x07"


def rendered(*parts: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200, highlight=False, color_system=None).print(*parts)
    return out.getvalue()


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (TITLE, "\\x1b]0;pwned\\x07"),
        ("a\x00b\tc\nd\re", "a\\x00b\\x09c\\x0ad\\x0de"),
        ("del\x7f csi\x9b nel\x85", "del\\x7f csi\\x9b nel\\x85"),
        ("abc\u202edcba \u2066x\u2069 \u200f \u061c", "abc\\u202edcba \\u2066x\\u2069 \\u200f \\u061c"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
    ],
)
def test_every_character_a_terminal_could_act_on_is_a_visible_escape(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_text_is_left_as_it_is() -> None:
    text = "21.5 °C · Grüße 温度 🌡️ [bold]x[/bold] C:\\path"
    assert printable(text) == text


def test_printable_json_is_the_same_json_without_a_raw_control_character() -> None:
    value = {"detail": f"{TITLE} \x9b31m \u202e", "n": 1, "kéy\x85": ["ok"]}
    line = printable_json(value)
    assert json.loads(line) == value, "a parser reads the same value"
    assert not any(ch in line for ch in "\x1b\x07\x9b\u202e\x85")
    assert "°" in printable_json({"unit": "°C"}), "non-ASCII stays readable"


def test_printable_values_escapes_every_string_of_a_json_tree_keys_included() -> None:
    tree = {"rows": [{"detail": TITLE, "rtt_ms": 1.5, "ok": True}], f"k{TITLE}": None}
    assert printable_values(tree) == {
        "rows": [{"detail": "\\x1b]0;pwned\\x07", "rtt_ms": 1.5, "ok": True}],
        "k\\x1b]0;pwned\\x07": None,
    }


def test_tail_shows_an_escape_sequence_from_a_device_escaped() -> None:
    ack = Ack(id="c-1", device="dev-1", status="error", detail=f"{TITLE}[bold]x[/bold]", ts=1)
    line = describe("acks.dev-1", encode(ack))
    assert "\x1b" not in line.text and "\\x1b]0;pwned\\x07[bold]x[/bold]" in line.text
    presence = Presence(
        device="dev-1", state="online", protocol="mqtt", kind="environment", site="s", interval_ms=1, fw=TITLE, ts=1
    )
    assert "fw \\x1b]0;pwned\\x07" in describe("status.dev-1", encode(presence)).text
    invalid = describe("telemetry.s.environment.dev-1", b"not json " + TITLE.encode())
    assert invalid.text.startswith("invalid (bad_json)") and "\x1b" not in invalid.text
    as_json = as_json_line("acks.dev-1", encode(ack), None, 5)
    assert "\x1b" not in as_json and json.loads(as_json)["body"]["detail"].startswith(TITLE)


def test_a_table_cell_from_device_data_is_neither_markup_nor_a_control_sequence() -> None:
    shown = rendered(_text(f"{TITLE}[bold red]loud[/]"), _state_text({"note\x1b": "\x1b[2J"}))
    assert "\x1b" not in shown
    assert "[bold red]loud[/]" in shown, "markup in device text is shown, not obeyed"
    assert "note\\x1b=" in shown and '"\\u001b[2J"' in shown


def test_the_dashboard_page_puts_values_in_as_text_never_as_html() -> None:
    script = (Path(hub.dashboard.__file__).parent / "static" / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script.replace("No libraries and no innerHTML", ""), sink
