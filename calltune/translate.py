"""Translate step: calls.jsonl -> calls.jsonl with every turn translated and its original kept in `text_original`.

Translations go through a persistent SQLite cache in the state folder, written batch by batch, so a rerun
(or a run after a crash) sends the translator only what it has never translated.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from calltune.backends import connect_sqlite, write_transaction
from calltune.backends.translators import Translator, make_translator
from calltune.config import TranslateConfig
from calltune.io import read_jsonl, write_jsonl
from calltune.schema import Call
from calltune.text import repair_text

CACHE_FILE = "translate_cache.sqlite"
_SQL_VARS = 500  # keys per lookup, well below SQLite's bound-parameter limit
STAT_KEYS = ("segments", "unique_segments", "cache_hits", "translated", "characters")


class TranslationCache:
    """(translator name, source, target, text) -> translation; the key is a SHA-256 of the four, the text is kept beside it."""

    def __init__(self, path: Path):
        self._db = connect_sqlite(path)
        self._db.execute("""CREATE TABLE IF NOT EXISTS translations (
            key BLOB PRIMARY KEY, translator TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL,
            text TEXT NOT NULL, translation TEXT NOT NULL) WITHOUT ROWID""")

    @staticmethod
    def key(translator: str, source: str, target: str, text: str) -> bytes:
        return hashlib.sha256("\0".join((translator, source, target, text)).encode()).digest()

    def get_many(self, translator: str, source: str, target: str, texts: list[str]) -> dict[str, str]:
        keys = {self.key(translator, source, target, t): t for t in texts}
        found: dict[str, str] = {}
        items = list(keys)
        for i in range(0, len(items), _SQL_VARS):
            chunk = items[i:i + _SQL_VARS]
            rows = self._db.execute(f"SELECT key, translation FROM translations WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((keys[k], tr) for k, tr in rows)
        return found

    def put_many(self, translator: str, source: str, target: str, pairs: Iterable[tuple[str, str]]) -> None:
        with write_transaction(self._db) as db:
            db.executemany("INSERT OR REPLACE INTO translations VALUES (?, ?, ?, ?, ?, ?)",
                           ((self.key(translator, source, target, t), translator, source, target, t, tr) for t, tr in pairs))

    def close(self) -> None:
        self._db.close()


def translate_stream(calls: Iterable[Call], cfg: TranslateConfig, state_dir: Path, stats: dict,
                     translator: Translator | None = None) -> Iterator[Call]:
    """Yield the calls translated, in order.

    Calls are buffered until their distinct texts reach `cfg.batch_size`; those are looked up in the cache and
    the misses go to the translator in chunks of at most `cfg.batch_size`, each chunk stored as soon as it is back.
    `stats` gets: segments (turns), unique_segments (distinct texts per batch = cache_hits + translated),
    cache_hits, translated (texts sent to the translator) and characters (their length, what cloud APIs bill).
    `translator` overrides the configured backend (the config still names the languages).
    """
    for k in STAT_KEYS:
        stats.setdefault(k, 0)
    translator = translator or make_translator(cfg)
    if translator is None:
        yield from calls
        return
    src, tgt = cfg.source_lang, cfg.target_lang
    cache = TranslationCache(Path(state_dir) / CACHE_FILE)
    progress = tqdm(desc=f"translate {src}->{tgt}", unit="seg", file=sys.stderr, disable=None)

    def flush(batch: list[Call], texts: dict[str, None]) -> Iterator[Call]:
        done = cache.get_many(translator.name, src, tgt, list(texts))
        stats["cache_hits"] += len(done)
        misses = [t for t in texts if t not in done]
        for i in range(0, len(misses), cfg.batch_size):
            chunk = misses[i:i + cfg.batch_size]
            out = translator.translate(chunk, src, tgt)
            if len(out) != len(chunk):
                raise RuntimeError(f"translator {translator.name} returned {len(out)} translations for {len(chunk)} texts")
            cache.put_many(translator.name, src, tgt, zip(chunk, out))
            done.update(zip(chunk, out))
            stats["translated"] += len(chunk)
            stats["characters"] += sum(map(len, chunk))
        stats["unique_segments"] += len(texts)
        for call in batch:
            turns = [{**turn, "text": repair_text(done[turn["text"]]), "text_original": turn["text"]} for turn in call["turns"]]
            progress.update(len(turns))
            yield {**call, "turns": turns}

    try:
        batch: list[Call] = []
        texts: dict[str, None] = {}  # insertion-ordered set of this batch's distinct texts
        for call in calls:
            batch.append(call)
            for turn in call["turns"]:
                texts[turn["text"]] = None
            stats["segments"] += len(call["turns"])
            if len(texts) >= cfg.batch_size:
                yield from flush(batch, texts)
                batch, texts = [], {}
        yield from flush(batch, texts)
    finally:
        progress.close()
        cache.close()


def translate_calls(calls_in: str | Path, calls_out: str | Path, cfg: TranslateConfig, state_dir: str | Path) -> dict:
    """calls.jsonl -> translated calls.jsonl (written atomically); returns the report."""
    stats: dict = {}
    n = write_jsonl(calls_out, translate_stream(read_jsonl(calls_in), cfg, Path(state_dir).expanduser(), stats))
    return {"backend": cfg.backend, "source_lang": cfg.source_lang, "target_lang": cfg.target_lang, "calls": n, **stats}
