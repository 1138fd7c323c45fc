"""Quoting user data (captions, cells) in error messages without pasting all of it."""
from typing import Any

EXCERPT_CHARS = 80


def excerpt(value: Any, max_chars: int = EXCERPT_CHARS) -> str:
    """``repr`` of ``value`` (a str: its first ``max_chars`` characters) for an error message; a longer
    str is marked ``… (N characters)`` so a 1.8M-character caption gives a one-line message."""
    if not isinstance(value, str):
        text = repr(value)
        return text if len(text) <= max_chars else f"{text[:max_chars]}… ({len(text)} characters)"
    if len(value) <= max_chars:
        return repr(value)
    return f"{value[:max_chars]!r}… ({len(value)} characters)"
