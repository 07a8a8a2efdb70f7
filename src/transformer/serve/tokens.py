"""Byte-level BPE tokens made readable for people (the web page and the attention API).

The tokenizer's byte-level alphabet writes every byte as one printable character: a space is `Ġ`,
a newline `Ċ`, and a non-ASCII letter becomes two or more such characters (`ä` is `Ã¤`). To show
a token, map its characters back to bytes and decode them as UTF-8; a token that holds only part
of a character shows its bytes as `\\xNN`, and control characters are escaped (`\\n`). A leading
space becomes `▁` so word starts stay visible.
"""

from __future__ import annotations

from functools import lru_cache

SPACE_MARK = "\u2581"  # ▁, the mark sentencepiece uses for a word start


@lru_cache(maxsize=1)
def _char_to_byte() -> dict[str, int]:
    """The inverse of the byte-level alphabet: printable Latin-1 bytes stand for themselves, the
    other bytes (controls, space, soft hyphen...) take the code points 256, 257, ... in order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + shifted)] = b
            shifted += 1
    return mapping


def readable_token(token: str) -> str:
    """A byte-level token as text: `Ġdog` → `▁dog`, `Ã¤` → `ä`; special tokens (`<s>`, `</s>`)
    and anything outside the byte alphabet are returned unchanged."""
    table = _char_to_byte()
    if not token or any(c not in table for c in token):
        return token
    text = bytes(table[c] for c in token).decode("utf-8", errors="backslashreplace")
    if text.startswith(" "):
        text = SPACE_MARK + text[1:]
    # control characters (newline, tab, stray bytes of a poor model) as escapes, not invisible
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
