"""Text from devices made safe to show: control characters become visible escapes.

A device chooses the strings it sends (an ack's `detail`, a status's `fw`, a body that is not
JSON, even a word of its topic), and a terminal obeys what it prints: `ESC ] 0 ; … BEL` retitles
the window, other sequences move the cursor, rewrite lines, or switch the character set, and a
bidirectional override makes the text read in another order than it is stored (the "Trojan
Source" trick). So every output that shows device data passes it through `printable` first:
each C0 and C1 control character, DEL, each bidirectional control and the line and paragraph
separators, and each lone surrogate, is shown as the escape Python would write for it
(`\\x1b`, `\\u202e`). Printable text, non-ASCII letters and emoji are left as they are, and so is
a backslash: a device writing a literal `\\x1b` fools no terminal.

This does not stop rich's markup (`[bold]`): print device text as a `rich.text.Text`, never
inside a markup string.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: What a terminal may act on or that reorders what is shown: C0 controls, DEL, C1 controls, the
#: bidirectional marks, embeddings, overrides and isolates, the line and paragraph separators,
#: and lone surrogates (which no terminal encoding can even write).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every character a terminal could act on written as a visible escape."""
    return UNSAFE.sub(_escape, text)


def printable_json(value: Any) -> str:
    """One line of JSON with no character a terminal could act on: still the same JSON for a parser.

    `json.dumps` already writes C0 controls as `\\u001b`; DEL, C1 and the bidirectional controls
    are written the same way here (they can only appear inside strings, where `\\uXXXX` means them).
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def printable_values(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings, numbers) with every string, key included, `printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_values(key): printable_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [printable_values(item) for item in value]
    return value
