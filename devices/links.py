"""What the fleet's event loop needs from a device's broker connection, whichever the protocol.

A link is one connection attempt: it is opened once, reports back through its `LinkEvents`
(always on the event loop's thread), and is discarded when it goes down; the next attempt is
a new link. Every message a link publishes goes to a routing key of exchange `iot`.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol


class LinkDown(Exception):
    """The connection is not (or no longer) able to take a message."""


class LinkEvents(Protocol):
    """What a link reports; every call happens on the event loop's thread."""

    def link_up(self, link: Link) -> None: ...

    def link_down(self, link: Link, reason: str) -> None: ...

    def link_confirmed(self, link: Link, token: Hashable) -> None: ...

    def link_command(self, link: Link, body: bytes) -> None: ...


class Link(Protocol):
    #: True once the broker refused the login (unknown, wrong or revoked credential, or its auth service down).
    refused: bool

    def open(self) -> None:
        """Start connecting; `link_up` or `link_down` follows. May raise OSError right away."""

    def publish(self, routing_key: str, body: bytes, token: Hashable | None = None) -> Hashable:
        """Hand a message to the broker; `link_confirmed(token)` follows when it is safe. Raises LinkDown."""
        ...

    def close(self, last_words: bytes) -> None:
        """Publish `last_words` (an offline status) and disconnect cleanly; `link_down` follows."""

    def cut(self) -> None:
        """Drop the connection abruptly, like a pulled cable (the broker sees no DISCONNECT)."""

    def tick(self) -> None:
        """Periodic housekeeping (keep-alives), on the loop's thread."""
