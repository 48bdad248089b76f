"""Synthesize: extend the train split with LLM-written examples, without leaking validation or test data.

A splits folder in (the sample step's: `<split>.examples.jsonl`, `<split>.jsonl` (Vertex), `<split>.messages.jsonl`),
a splits folder out in the same layout: validation and test are copied byte for byte, train gets synthetic examples
after its own. With `enabled` off, the folder is copied unchanged.

1. Prompts: `conversations` of them, each from a seeded choice (seed, prompt number), so a rerun builds the same ones.
   style: `few_shot` train examples (history, seller line, customer reply) and the system instruction of the first,
   which the synthetic call keeps; facts: one entry of facts_file (round robin over a seeded order) and the system
   instruction of a random train example. Each asks for one call, one turn a line, "Seller:" / "Customer:".
2. Requests: one per prompt (messages, temperature, max_tokens, a per-prompt seed); `prompt_sha` is the SHA-256 of
   the request as JSON with sorted keys. Answers are cached in SQLite in the state folder, keyed by generator and
   prompt_sha, each batch as soon as it is back: a rerun (after a crash too) sends only the prompts never answered.
3. Quality, per conversation (the first problem found is its reason): unparseable (no "Seller:"/"Customer:" line),
   role_order (two turns of one speaker in a row, or no customer turn answering a seller turn), length (a turn
   outside min_chars..max_chars), language (a stopword count, below, says it is in another language). A conversation
   that passes becomes examples exactly as turn-split makes them (calltune.conversation.windows.split_call).
4. Leaks and duplicates, compared by exchange (seller line + customer reply), both normalized (text.dedupe_key)
   and as all-MiniLM-L6-v2 embeddings (cosine):
   - a conversation with an exchange equal to (duplicate_heldout) or at least heldout_similarity like
     (near_duplicate_heldout) a validation or test exchange is removed whole: its later examples would carry that
     exchange in their history; all its examples count under that reason;
   - otherwise an example equal to or at least duplicate_similarity like a train exchange (duplicate_train,
     near_duplicate_train) or an earlier kept synthetic one (duplicate_synthetic, near_duplicate_synthetic) is removed.
5. Share: synthetic examples make up at most max_share of the final train split; the surplus (over_max_share) is
   taken from the last prompts.
Every synthetic example carries `synthetic: true`, `generator`, `prompt_id` and `prompt_sha`; `synthetic_trace.jsonl`
beside the splits holds each prompt's messages and answer and what became of each of its examples.

Language heuristic: for en, pt and es, the words of a conversation are counted against a short list of each
language's commonest function words; a conversation of 6 words or more is in the wrong language when another
language's count is higher than its own (and at least 2). Other languages are not checked.
"""
from __future__ import annotations

import logging
import math
import shutil
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from calltune.backends.generators import GenerateError, Generator, make_generator
from calltune.config import SplitConfig, SynthesizeConfig
from calltune.conversation.schema import Example
from calltune.conversation.windows import split_call
from calltune.core.db import KeyedCache, cache_key
from calltune.core.io import read_jsonl, write_jsonl
from calltune.data.sample import split_files, write_split
from calltune.data.synthesize.dedupe import REMOVAL_REASONS, removal_reasons
from calltune.data.synthesize.prompts import Prompt, build_prompts, canonical, read_facts
from calltune.data.synthesize.quality import QUALITY_REASONS, parse_conversation, quality_problem

log = logging.getLogger(__name__)

CACHE_FILE = "synthesize_cache.sqlite"
TRACE_FILE = "synthetic_trace.jsonl"
__all__ = ["CACHE_FILE", "TRACE_FILE", "read_facts", "synthesize"]


def generation_cache(state_dir: Path) -> KeyedCache:
    """(generator name, prompt_sha) -> answer; the request is kept beside it, so every answer traces to its prompt."""
    return KeyedCache(Path(state_dir).expanduser() / CACHE_FILE, "generations",
                      ("generator", "prompt_sha", "request", "answer"))


# ---------------------------------------------------------------- generation

def generate_answers(prompts: list[Prompt], generator: Generator, cache: KeyedCache, stats: Counter) -> dict[str, str]:
    """prompt_sha -> answer for every prompt: from the cache, else from the generator (cached as each batch is back).

    Raises GenerateError naming the first prompt that failed for good, after the others have finished and been cached.
    """
    answers = cache.get_many({cache_key(generator.name, p.sha): p.sha for p in prompts})
    stats["cache_hits"] += len(answers)
    todo = [p for p in prompts if p.sha not in answers]
    batches = [todo[i:i + generator.max_batch] for i in range(0, len(todo), generator.max_batch)]
    counters_before = Counter(generator.counters)
    pool = ThreadPoolExecutor(generator.concurrency, thread_name_prefix="synthesize")
    progress = tqdm(total=len(todo), desc=f"synthesize {generator.name}", unit="conv", file=sys.stderr, disable=None)
    failed: list[tuple[list[Prompt], BaseException]] = []
    try:
        futures = {pool.submit(generator.generate, [p.request for p in batch]): batch for batch in batches}
        for future in as_completed(futures):
            batch = futures[future]
            try:
                out = future.result()
                if len(out) != len(batch):
                    raise GenerateError(f"generator {generator.name} returned {len(out)} answers for {len(batch)} prompts")
            except Exception as exc:  # noqa: BLE001 - the others still finish and are cached first
                failed.append((batch, exc))
                continue
            cache.put_many((cache_key(generator.name, p.sha), generator.name, p.sha, canonical(p.request), a)
                            for p, a in zip(batch, out))
            answers.update((p.sha, a) for p, a in zip(batch, out))
            stats["generated_now"] += len(batch)
            progress.update(len(batch))
    finally:
        generator.close()
        pool.shutdown(wait=False, cancel_futures=True)
        progress.close()
        stats.update(Counter(generator.counters) - counters_before)
    if failed:
        batch, exc = min(failed, key=lambda f: f[0][0].number)
        raise GenerateError(
            f"synthesize prompt {batch[0].prompt_id} (prompt_sha {batch[0].sha[:12]}) failed: {exc}. "
            f"{len(failed) - 1} other request(s) failed too; the {stats['generated_now']} answered are cached, "
            f"so a rerun sends only the rest.") from exc
    return answers


# ---------------------------------------------------------------- the step

def synthesize(splits_in: str | Path, splits_out: str | Path, cfg: SynthesizeConfig, *, seed: int,
               state_dir: str | Path, split: SplitConfig | None = None) -> dict:
    """Splits folder -> splits folder with synthetic train examples (module docstring); returns the report."""
    splits_in, splits_out = Path(splits_in), Path(splits_out)
    train_path = split_files(splits_in, "train")[0]
    if not train_path.is_file():
        raise FileNotFoundError(f"{splits_in}: no train.examples.jsonl (expected the sample step's splits folder)")
    if splits_out.exists() and splits_out.resolve() == splits_in.resolve():
        raise ValueError(f"synthesize writes a new splits folder; {splits_out} is its input")
    if not cfg.enabled:
        shutil.copytree(splits_in, splits_out, dirs_exist_ok=True)
        n = sum(1 for _ in read_jsonl(train_path))
        return {"enabled": False, "train_real": n, "train": n, "kept": 0, "synthetic_share": 0.0}

    split = split or SplitConfig()
    train = list(read_jsonl(train_path))
    heldout = [e for name in ("validation", "test") if (p := split_files(splits_in, name)[0]).is_file()
               for e in read_jsonl(p)]
    prompts = build_prompts(train, cfg, seed)
    generator = make_generator(cfg, Path(state_dir).expanduser())
    stats: Counter = Counter()
    cache = generation_cache(state_dir)
    try:
        answers = generate_answers(prompts, generator, cache, stats)
    finally:
        cache.close()

    # Quality, then the candidate examples of the conversations that pass.
    trace, rejected, candidates = [], Counter(), []  # candidates: (trace row, example)
    for p in prompts:
        row = {"prompt_id": p.prompt_id, "prompt_sha": p.sha, "generator": generator.name,
               "messages": p.request["messages"], "answer": answers[p.sha], "rejected": None, "examples": []}
        trace.append(row)
        turns = parse_conversation(answers[p.sha])
        problem = quality_problem(turns, cfg)
        if problem:
            row["rejected"] = problem
            rejected[problem] += 1
            continue
        call = {"call_id": f"synthetic-{p.sha[:16]}", "source_row": 0, "persona": {}, "system": p.system, "turns": turns}
        for example in split_call(call, split):
            example.update(synthetic=True, generator=generator.name, prompt_id=p.prompt_id, prompt_sha=p.sha)
            candidates.append((row, example))

    reasons = removal_reasons([e for _, e in candidates], train, heldout, cfg)
    allowed = math.floor(cfg.max_share * len(train) / (1 - cfg.max_share) + 1e-9)
    kept: list[Example] = []
    removed: Counter = Counter()
    for (row, example), reason in zip(candidates, reasons):
        if reason is None and len(kept) >= allowed:
            reason = "over_max_share"
        if reason is None:
            kept.append(example)
        else:
            removed[reason] += 1
        row["examples"].append({"example_id": example["example_id"], "kept": reason is None, "reason": reason})

    _write(splits_in, splits_out, train + kept, trace)
    total = len(train) + len(kept)
    return {"enabled": True, "mode": cfg.mode, "backend": cfg.backend, "generator": generator.name,
            "prompts": len(prompts), "cache_hits": stats["cache_hits"], "requests": stats["requests"],
            "retries": stats["retries"], "failures": stats["failures"],
            "generated": len(prompts), "rejected": {r: rejected[r] for r in QUALITY_REASONS},
            "examples": len(candidates), "removed": {r: removed[r] for r in REMOVAL_REASONS}, "kept": len(kept),
            "heldout_examples": len(heldout), "train_real": len(train), "train": total,
            "synthetic_share": round(len(kept) / total, 4) if total else 0.0}


def _write(splits_in: Path, splits_out: Path, train: list[Example], trace: list[dict]) -> None:
    splits_out.mkdir(parents=True, exist_ok=True)
    for name in ("validation", "test"):
        for src, dst in zip(split_files(splits_in, name), split_files(splits_out, name)):
            if src.is_file():
                shutil.copyfile(src, dst)
            else:  # a stale split from an earlier run must not look like this run's
                dst.unlink(missing_ok=True)
    write_split(splits_out, "train", train)
    write_jsonl(splits_out / TRACE_FILE, trace)
