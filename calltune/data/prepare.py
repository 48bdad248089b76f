"""prepare: ingest -> translate -> turn-split -> sample in one streaming pass, without KFP.

No intermediate files: calls flow from the parser processes through the translator and the splitter
into the sampler, which holds only what the splits need (see calltune.data.sample), so memory stays flat
however large the input. Writes into out_dir: the split files (train/validation/test, each as
.jsonl (Vertex), .messages.jsonl and .examples.jsonl), quarantine.jsonl, report.json and, when translating,
calls.jsonl (the translated calls with each turn's original text in text_original).

Without translation the parser processes also split the calls and, knowing the sampler's current
threshold, send back the examples only of calls that could still be sampled (a count for the others):
the same result as splitting in the parent, without shipping every example between processes.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from calltune.config import Config, SplitConfig
from calltune.conversation.windows import count_examples, split_call
from calltune.core.io import atomic_open, dumps, write_json
from calltune.data.ingest import (
    Quarantine,
    Source,
    check,
    default_workers,
    iter_calls,
    map_chunks,
    parse_chunk,
    resolve_input,
)
from calltune.data.sample import Sampler, call_key
from calltune.data.turn_split import STAT_KEYS


def _split_chunk(state: tuple[Source, SplitConfig, int], chunk, threshold: int | None):
    """Parse and split a chunk: [(call_id, examples)] of the calls at or below threshold, the rejects, and
    the split stats of those calls and of the others (only counted: the sampler would not keep them)."""
    src, split_cfg, seed = state
    calls, rejects = parse_chunk(src, chunk)
    kept, kept_stats, skipped_stats = [], Counter(), Counter()
    for call in calls:
        if threshold is None or call_key(seed, call["call_id"]) <= threshold:
            kept.append((call["call_id"], split_call(call, split_cfg, kept_stats)))
        else:
            count_examples(call, split_cfg, skipped_stats)
    return kept, rejects, kept_stats, skipped_stats


def prepare(input_path: str | Path, out_dir: str | Path, cfg: Config, *, workers: int | None = None) -> dict:
    """Raw input -> training-ready splits in out_dir; returns (and writes) the report.

    Raises calltune.data.ingest.IngestError, after writing quarantine.jsonl, when nothing usable is left or the
    quarantined share passes data.max_bad_fraction. workers: parser processes (None: default_workers).
    """
    start = time.perf_counter()
    path, out_dir = resolve_input(input_path), Path(out_dir)
    workers = default_workers(path) if workers is None else workers
    ingest_stats: dict = {}
    translate_stats: dict = {}
    split_stats = Counter(dict.fromkeys(STAT_KEYS, 0))
    sampler = Sampler(cfg.sample, cfg.seed)
    progress = tqdm(desc="prepare", unit=" rows", file=sys.stderr, disable=None, mininterval=2)
    with Quarantine(out_dir / "quarantine.jsonl") as quarantine, progress:
        if cfg.translate.backend == "none":
            src = Source(path, cfg.data)
            ingest_stats.update(format=src.fmt, rows=0)
            for kept, rejects, kept_stats, skipped in map_chunks(
                    _split_chunk, (src, cfg.split, cfg.seed), src.chunks(), workers, extra=lambda: (sampler.threshold(),)):
                for reject in rejects:
                    quarantine.add(str(path), *reject)
                for call_id, examples in kept:
                    sampler.add(call_id, examples)
                sampler.skip(skipped["calls"], skipped["examples"])
                split_stats.update(kept_stats)
                split_stats.update(skipped)
                rows = kept_stats["calls"] + skipped["calls"] + len(rejects)
                ingest_stats["rows"] += rows
                progress.update(rows)
        else:
            from calltune.data.translate import translate_stream  # only a translating run needs the backends
            calls = iter_calls(path, cfg.data, quarantine, workers=workers, stats=ingest_stats)
            # The translated calls too, each turn's original text beside it, as the pipeline's translate step keeps.
            with atomic_open(out_dir / "calls.jsonl") as calls_out:
                for call in translate_stream(calls, cfg.translate, cfg.state_path(), translate_stats):
                    calls_out.write(dumps(call) + "\n")
                    sampler.add(call["call_id"], split_call(call, cfg.split, split_stats))
                    progress.update()
    check(path, ingest_stats["rows"], split_stats["calls"], quarantine, cfg.data.max_bad_fraction)
    splits = sampler.write(out_dir)
    seconds = time.perf_counter() - start
    report = {
        "input": str(path), "format": ingest_stats["format"], "rows": ingest_stats["rows"],
        "calls": split_stats["calls"], "examples": split_stats["examples"],
        "train": splits["train"], "validation": splits["validation"], "test": splits["test"],
        "overlap_calls": splits["overlap_calls"], "duplicates_dropped": splits["duplicates_dropped"],
        "quarantined": quarantine.count, "by_reason": dict(quarantine.by_reason),
        "split": {k: split_stats[k] for k in STAT_KEYS if k not in ("calls", "examples")},
        "sample": {k: splits[k] for k in ("calls_per_split", "fallback", "seed", "max_held_calls")},
        "translate": {"backend": cfg.translate.backend, **translate_stats},
        "workers": workers, "seconds": round(seconds, 3),
        "calls_per_s": round(split_stats["calls"] / seconds, 1) if seconds else None,
    }
    write_json(out_dir / "report.json", report)
    return report
