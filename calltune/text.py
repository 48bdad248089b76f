"""Text repairs shared by ingest and translate."""
from __future__ import annotations

import html
import re

import ftfy

# Characters that only show up in mojibake (UTF-8 read as Latin-1/cp1252) or HTML entities.
# Checking for them first keeps ftfy (slow) off the clean majority of strings.
_SUSPECT = re.compile("[\u00c2\u00c3\u00e2\u00c5\u00cb\u00d0\u00d1\u00d8\u00d9\u00ef\ufffd&]")
_SPACE = re.compile(r"\s+")


def repair_text(text: str) -> str:
    """Fix mojibake (`AlÃ´` -> `Alô`), unescape HTML entities (`&#39;` -> `'`), collapse whitespace."""
    if _SUSPECT.search(text):
        text = html.unescape(ftfy.fix_text(text))
    return _SPACE.sub(" ", text).strip()


def dedupe_key(text: str) -> str:
    """Case- and whitespace-insensitive form used to spot duplicate examples."""
    return _SPACE.sub(" ", text).strip().casefold()
