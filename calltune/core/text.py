"""Text repairs shared by ingest and translate."""
from __future__ import annotations

import html
import re

import ftfy

# What a UTF-8 character looks like once read as Latin-1/cp1252: a lead byte (Â..ï) followed by a
# continuation byte (U+0080-U+00BF, or cp1252's glyph for 0x80-0x9F); also "Ã " (a lost no-break space)
# and the replacement character. Clean Portuguese ("importância", "NÃO") never matches,
# which keeps ftfy (slow, ~100 µs a string) off the clean majority.
_CONTINUATION = "\u0080-\u00bf\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d" \
                "\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178"
_MOJIBAKE = re.compile(f"[\u00c2-\u00ef][{_CONTINUATION}]|\u00c3 |\ufffd")
_MAYBE_MOJIBAKE = re.compile(f"[{_CONTINUATION}\u00c3\ufffd]")  # one character class: twice as fast to rule out


def repair_text(text: str) -> str:
    """Fix mojibake (`AlÃ´` -> `Alô`), unescape HTML entities (`&#39;` -> `'`), collapse whitespace."""
    if "&" in text:
        text = html.unescape(text)
    if _MAYBE_MOJIBAKE.search(text) and _MOJIBAKE.search(text):
        try:  # the usual fault, UTF-8 read as Latin-1, undone directly; ftfy gets whatever is left
            text = text.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
        if _MOJIBAKE.search(text):
            text = ftfy.fix_text(text)
    # Only " " is both whitespace and printable: a printable text without doubled or outer spaces is done.
    if not text.isprintable() or "  " in text or text[:1] == " " or text[-1:] == " ":
        text = " ".join(text.split())  # 5x faster than re.sub(r"\s+", " "), same result
    return text


def dedupe_key(text: str) -> str:
    """Case- and whitespace-insensitive form used to spot duplicate examples."""
    return " ".join(text.split()).casefold()
