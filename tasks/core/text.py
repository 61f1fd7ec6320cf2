"""Text from messages and stored records made safe to print or log, and small enough to.

Anything a producer sent (a keyword name, an error quoting an argument, a message body) may hold
terminal escape sequences, newlines that forge log lines, or bidi overrides that reorder what an
operator reads; and it may be megabytes long. ``printable`` escapes the first, ``clip`` caps the
second; both are plain functions so the CLI, the task base and the log formatter share them.
"""

from __future__ import annotations

import unicodedata

# Unicode categories never shown raw: Cc (C0, DEL, C1 controls: ESC starts terminal sequences),
# Cf (format: bidi overrides and isolates, zero-width characters), Zl/Zp (line and paragraph
# separators, which some viewers break lines on), Cs (lone surrogates, which cannot be encoded).
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control, format and separator character escaped Python-style
    (``\\x1b``, ``\\n``, ``\\u202e``); other characters, accents and emoji included, kept.

    ``multiline`` keeps newlines and tabs (a traceback shown as the lines it is made of).
    A backslash already in the text is left as it is: the escapes are for eyes, not parsers.
    """
    if text.isprintable():  # the common case, checked in C: nothing to escape
        return text
    keep = "\n\t" if multiline else ""
    return "".join(
        ch if ch in keep or unicodedata.category(ch) not in _HIDDEN else _escape(ch)
        for ch in text)


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was left off."""
    if len(text) <= limit:
        return text
    keep = limit
    for _ in range(2):  # the note's own length depends on the count it states
        note = f"...[{len(text) - keep:,} more chars]"
        keep = max(0, limit - len(note))
    return text[:keep] + f"...[{len(text) - keep:,} more chars]"


def safe(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters, escaped: clipped first (escaping megabytes
    would cost time for nothing), then again once escapes have widened it."""
    return clip(printable(clip(text, limit)), limit)
