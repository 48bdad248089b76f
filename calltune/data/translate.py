"""Translate step: calls.jsonl -> calls.jsonl with the configured fields translated, originals kept beside them
(`text_original` in each turn, `system_original`, `persona_original`, `evaluation_original`).

Every distinct text is translated once: the texts of a window of calls are looked up in a persistent SQLite
cache in the state folder (shared by all backends, keyed by backend+model, languages and text), and only the
misses go to the translator, packed into batches as large as the backend allows and sent `concurrency` at a
time. Each batch is written to the cache as soon as it is back, so a crash loses nothing finished and a rerun
(or a run after a crash) sends the translator only what it has never translated. A text longer than one request
may hold (Cloud Translation: 30,000 code points) is split at sentence boundaries (else at spaces, else anywhere),
its pieces translated like any other text and joined back with the spaces and line breaks they were split at.
"""
from __future__ import annotations

import re
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from calltune.backends.translators import TranslateError, Translator, make_translator
from calltune.config import TranslateConfig
from calltune.conversation.schema import Call
from calltune.core.db import KeyedCache, cache_key
from calltune.core.io import read_jsonl, write_jsonl
from calltune.core.text import repair_text

CACHE_FILE = "translate_cache.sqlite"
STAT_KEYS = ("segments", "unique_segments", "cache_hits", "translated", "characters",
             "requests", "failures", "retries", "characters_billed")
TRANSLATOR_COUNTERS = ("requests", "failures", "retries", "characters_billed")
# A break after a sentence's end (. ! ? … and their CJK forms, closing quotes or brackets allowed), else any space.
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+|(?<=[.!?…。！？][\"'”’)\]])\s+")
_SPACE = re.compile(r"\s+")


def translation_cache(state_dir: Path) -> KeyedCache:
    """(translator name, source, target, text) -> translation, in the state folder."""
    return KeyedCache(Path(state_dir) / CACHE_FILE, "translations",
                      ("translator", "source", "target", "text", "translation"))


def field_texts(call: Call, fields: list[str]) -> list[str]:
    """The texts of `call` that `fields` (translate.fields) selects, in a fixed order."""
    texts = [t["text"] for t in call["turns"]] if "turns" in fields else []
    if "system" in fields and isinstance(call.get("system"), str):
        texts.append(call["system"])
    persona = call.get("persona") or {}
    texts.extend(persona[k] for k in _persona_keys(persona, fields))
    if "evaluation" in fields and call.get("evaluation"):
        texts.extend(_evaluation_texts(call["evaluation"]))
    return texts


def _evaluation_texts(evaluation: dict) -> list[str]:
    """The texts of a graded call's evaluation (calltune.conversation.schema.Evaluation), in a fixed order."""
    texts = [evaluation[k] for k in ("overview", "positive", "negative")]
    for f in evaluation["feedbacks"]:
        texts += [f["title"], f["summary"], *(c["type"] for c in f["checklist"])]
    return texts


def _translate_evaluation(evaluation: dict, tr: Callable[[str], str]) -> dict:
    return {**evaluation, **{k: tr(evaluation[k]) for k in ("overview", "positive", "negative")},
            "feedbacks": [{"title": tr(f["title"]), "summary": tr(f["summary"]),
                           "checklist": [{**c, "type": tr(c["type"])} for c in f["checklist"]]}
                          for f in evaluation["feedbacks"]]}


def _persona_keys(persona: dict, fields: list[str]) -> list[str]:
    every = "persona" in fields
    return [k for k, v in persona.items() if isinstance(v, str) and (every or f"persona.{k}" in fields)]


def _apply(call: Call, fields: list[str], tr: Callable[[str], str]) -> Call:
    out = dict(call)
    if "turns" in fields:
        out["turns"] = [{**t, "text": tr(t["text"]), "text_original": t["text"]} for t in call["turns"]]
    if "system" in fields and isinstance(call.get("system"), str):
        out["system"], out["system_original"] = tr(call["system"]), call["system"]
    persona = call.get("persona") or {}
    if keys := _persona_keys(persona, fields):
        out["persona"] = {**persona, **{k: tr(persona[k]) for k in keys}}
        out["persona_original"] = {k: persona[k] for k in keys}
    if "evaluation" in fields and call.get("evaluation"):
        out["evaluation"], out["evaluation_original"] = _translate_evaluation(call["evaluation"], tr), call["evaluation"]
    return out


def split_long(text: str, limit: int) -> tuple[list[str], list[str]]:
    """(pieces of at most `limit` code points, the separators between them): text == p0 + s0 + p1 + s1 + ... .
    Cut at the last sentence end that fits, else the last space, else at the limit itself."""
    pieces, seps, start = [], [], 0
    while len(text) - start > limit:
        window = text[start:start + limit + 1]  # a break right after the limit still fits
        cut = None
        for pattern in (_SENTENCE_END, _SPACE):
            if (breaks := [m for m in pattern.finditer(window) if 0 < m.start() <= limit]):
                cut = breaks[-1]
                break
        if cut is None:
            pieces.append(text[start:start + limit])
            seps.append("")
            start += limit
        else:
            pieces.append(text[start:start + cut.start()])
            seps.append(cut.group())
            start += cut.end()
    pieces.append(text[start:])
    return pieces, seps


def pack(texts: list[str], max_batch: int, max_chars: int | None) -> list[list[str]]:
    """Greedy batches of at most `max_batch` texts and `max_chars` code points (a longer text goes alone)."""
    batches: list[list[str]] = []
    size = 0
    for text in texts:
        if not batches or len(batches[-1]) >= max_batch or (max_chars and size + len(text) > max_chars):
            batches.append([])
            size = 0
        batches[-1].append(text)
        size += len(text)
    return batches


def translate_stream(calls: Iterable[Call], cfg: TranslateConfig, state_dir: Path, stats: dict,
                     translator: Translator | None = None) -> Iterator[Call]:
    """Yield the calls translated, in order.

    Calls are buffered while their distinct untranslated texts gather; once there are enough for
    `concurrency + 1` full batches, the cache is asked, the misses are packed and sent (but for a last batch with
    room left, which waits for more texts, so the request count stays ceil(misses / batch) overall),
    and the calls whose texts are all translated are yielded.
    `stats` gets: segments (texts selected), unique_segments (distinct non-blank texts = cache_hits +
    translated), cache_hits, translated (texts sent), characters (their code points), and the translator's
    requests (retries included), failures (failed requests), retries, characters_billed (by a cloud API)
    and detected_languages (source detection). `translator` overrides the configured backend (the config still
    names the languages and fields). Raises TranslateError naming the batch that failed for good, after the
    batches sent with it have finished and been cached.
    """
    for k in STAT_KEYS:
        stats.setdefault(k, 0)
    own = translator is None
    translator = translator or make_translator(cfg)
    if translator is None:
        yield from calls
        return
    src, tgt, fields, name = cfg.source_lang, cfg.target_lang, cfg.fields, translator.name
    limit = min(cfg.batch_size or translator.max_batch, translator.max_batch)
    window = limit * (translator.concurrency + 1)
    counters_before = Counter(translator.counters)
    cache = translation_cache(state_dir)
    pool = ThreadPoolExecutor(translator.concurrency, thread_name_prefix="translate")
    progress = tqdm(desc=f"translate {src}->{tgt}", unit="seg", file=sys.stderr, disable=None)
    buffer: deque[tuple[Call, list[str]]] = deque()  # calls waiting for their translations, in input order
    need: dict[str, bool] = {}  # untranslated texts of buffered calls (FIFO) -> first seen in this run?
    done: dict[str, str] = {}   # translations of buffered calls' texts
    long: dict[str, tuple[list[str], list[str]]] = {}  # buffered texts over max_chars: (pieces, separators)
    seen: set[int] = set()      # hashes of every distinct text so far, for unique_segments
    batches_sent = 0

    def one(text: str) -> str:
        return repair_text(done[text]) if text.strip() else text

    def tr(text: str) -> str:
        if text not in long:
            return one(text)
        pieces, seps = long[text]
        return one(pieces[0]) + "".join(sep + one(p) for sep, p in zip(seps, pieces[1:]))

    def parts(text: str) -> list[str]:
        """What is sent for `text`: itself, or its pieces when it is longer than one request may hold."""
        if translator.max_chars and len(text) > translator.max_chars:
            if text not in long:
                long[text] = split_long(text, translator.max_chars)
            return long[text][0]
        return [text]

    def ready(text: str) -> bool:
        return all(p in done or not p.strip() for p in long[text][0]) if text in long else text in done or not text.strip()

    def send(batches: list[list[str]]) -> None:
        nonlocal batches_sent
        futures = {}
        for batch in batches:
            batches_sent += 1
            futures[pool.submit(translator.translate, batch, src, tgt)] = (batches_sent, batch)
        failed = []
        for future in as_completed(futures):
            number, batch = futures[future]
            try:
                out = future.result()
                if len(out) != len(batch):
                    raise TranslateError(f"translator {name} returned {len(out)} translations for {len(batch)} texts")
            except Exception as exc:  # noqa: BLE001 - the others still finish and are cached first
                failed.append((number, batch, exc))
                continue
            cache.put_many((cache_key(name, src, tgt, t), name, src, tgt, t, tr) for t, tr in zip(batch, out))
            done.update(zip(batch, out))
            for text in batch:
                del need[text]
            stats["translated"] += len(batch)
            stats["characters"] += sum(map(len, batch))
        if failed:
            number, batch, exc = min(failed, key=lambda f: f[0])
            raise TranslateError(
                f"translation batch {number} ({len(batch)} texts, {sum(map(len, batch))} code points, first {batch[0][:60]!r}) "
                f"failed: {exc}. {len(failed) - 1} other batch(es) failed too; {len(batches) - len(failed)} sent with it "
                f"finished and are cached with the earlier ones, so a rerun sends only the rest.") from exc

    def resolve(final: bool) -> Iterator[Call]:
        found = cache.get_many({cache_key(name, src, tgt, t): t for t in need})
        stats["cache_hits"] += sum(need[t] for t in found)
        done.update(found)
        for text in found:
            del need[text]
        batches = pack(list(need), limit, translator.max_chars)
        if not final and batches and len(batches[-1]) < limit:
            batches.pop()  # a last batch with room left waits for the next window's texts
        send(batches)
        while buffer and all(ready(t) for t in buffer[0][1]):
            call, texts = buffer.popleft()
            progress.update(len(texts))
            yield _apply(call, fields, tr)
        buffered = {t for _, texts in buffer for t in texts}
        keep = {p for t in buffered for p in parts(t)}
        for text in [t for t in done if t not in keep]:
            del done[text]
        for text in [t for t in long if t not in buffered]:
            del long[text]

    try:
        for call in calls:
            texts = field_texts(call, fields)
            stats["segments"] += len(texts)
            for text in (p for t in texts for p in parts(t)):
                if text.strip() and text not in done and text not in need:
                    h = hash(text)
                    need[text] = h not in seen
                    if need[text]:
                        seen.add(h)
                        stats["unique_segments"] += 1
            buffer.append((call, texts))
            if len(need) >= window:
                yield from resolve(final=False)
            elif len(buffer) >= 2 * window:  # calls that bring (almost) nothing new: send what there is, bound memory
                yield from resolve(final=True)
        yield from resolve(final=True)
    finally:
        if own and hasattr(translator, "close"):
            translator.close()
        pool.shutdown(wait=False, cancel_futures=True)
        progress.close()
        cache.close()
        delta = translator.counters - counters_before
        stats.update({k: stats[k] + delta[k] for k in TRANSLATOR_COUNTERS})
        detected = {k.split(":", 1)[1]: v for k, v in delta.items() if k.startswith("detected:")}
        if detected:
            stats["detected_languages"] = detected


def translate_calls(calls_in: str | Path, calls_out: str | Path, cfg: TranslateConfig, state_dir: str | Path) -> dict:
    """calls.jsonl -> translated calls.jsonl (written atomically); returns the report."""
    stats: dict = {}
    n = write_jsonl(calls_out, translate_stream(read_jsonl(calls_in), cfg, Path(state_dir).expanduser(), stats))
    return {"backend": cfg.backend, "source_lang": cfg.source_lang, "target_lang": cfg.target_lang,
            "fields": ",".join(cfg.fields), "calls": n, **stats}
