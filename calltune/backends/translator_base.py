"""The translator interface: a list of strings in, the same number of translations out, in order."""
from __future__ import annotations

from collections import Counter
from typing import Protocol


class TranslateError(RuntimeError):
    """A translation request that failed for good (after its retries, if the backend retries)."""


class Translator(Protocol):
    name: str  # backend and model, part of the cache key: a new model never reuses an old model's translations
    max_batch: int  # most texts in one translate() call
    max_chars: int | None  # most code points in one translate() call (None: no limit)
    concurrency: int  # translate() calls that may run at once
    counters: Counter  # requests, failures, retries, characters_billed, detected:<lang>, since the translator was made

    def translate(self, texts: list[str], source: str, target: str) -> list[str]: ...
