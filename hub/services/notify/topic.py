"""AMQP topic patterns: words separated by dots, `*` one word, `#` zero or more words."""

from __future__ import annotations

from functools import lru_cache

from hub.core.errors import ConfigError


def check_pattern(pattern: str) -> str:
    """`pattern` if every word is non-empty and a wildcard stands alone as a word; else `ConfigError`."""
    words = pattern.split(".")
    for word in words:
        if not word or (word not in ("*", "#") and ("*" in word or "#" in word)):
            raise ConfigError(
                f"{pattern!r} is not a topic pattern: words separated by dots, `*` or `#` alone as a word"
            )
    return pattern


@lru_cache(maxsize=1024)
def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split("."))


def matches(pattern: str, routing_key: str) -> bool:
    """Whether the broker would route `routing_key` to a binding of `pattern`."""
    return _match(_words(pattern), _words(routing_key))


def _match(pattern: tuple[str, ...], key: tuple[str, ...]) -> bool:
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, key[skip:]) for skip in range(len(key) + 1))
    if not key:
        return False
    return (head == "*" or head == key[0]) and _match(rest, key[1:])
