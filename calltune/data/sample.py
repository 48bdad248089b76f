"""Sample: examples -> train / validation / test, split by call, duplicates dropped, seeded.

How it works, in one pass with flat memory:
- Every call gets a key, a hash of (seed, call_id) (blake2b, stable across runs and machines), and calls
  are taken in key order: a seeded shuffle in which a call's place does not depend on the others.
- Duplicates: an example whose dedupe key (system, history, prompt and target; case and whitespace ignored)
  is already held is dropped on arrival, so no identical example can be in two splits (or twice in one).
  `duplicates_dropped` counts those met among the calls looked at (see the next point).
- Only the lowest-key calls that can fill the sizes are held (a max-heap by key): a call is evicted as soon
  as the others still hold enough examples, plus a slack of two calls' worth for the split boundaries;
  a call with a higher key than every held one, once that much is held, is not looked at. So memory is
  bounded by the sizes, not by the input.
- Splits are filled in key order, test first, then validation, then train, each with whole calls; the call
  that crosses a split's size is trimmed to it (its other examples go nowhere, so no call is in two splits).
- Fallback, when the data holds fewer distinct examples than train + validation + test: the splits
  become shares of what there is: test gets test_fraction, validation validation_fraction (if enabled),
  train the rest, still by whole calls in key order; a split never takes the last call, so train is never
  empty.
"""
from __future__ import annotations

import hashlib
import heapq
from itertools import combinations, groupby
from pathlib import Path

from calltune.config import SampleConfig
from calltune.conversation.render import to_messages, to_vertex
from calltune.conversation.schema import Example
from calltune.core.io import read_jsonl, write_jsonl
from calltune.core.text import dedupe_key

SPLITS = ("train", "validation", "test")
_FILL_ORDER = ("test", "validation", "train")


def call_key(seed: int, call_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{call_id}".encode(), digest_size=8).digest(), "big")


def example_digest(example: Example) -> bytes:
    parts = [example["system"], *(f"{t['role']}: {t['text']}" for t in example["history"]),
             example["prompt"], example["target"]]
    return hashlib.blake2b(dedupe_key("\x1f".join(parts)).encode(), digest_size=16).digest()


class Sampler:
    """Streaming grouped sampler: `add` each call's examples, then `write` the splits."""

    def __init__(self, cfg: SampleConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.sizes = {"train": cfg.train_size, "validation": cfg.validation_size, "test": cfg.test_size}
        self.need = sum(self.sizes.values())
        self._held: dict[str, tuple[int, list[Example], list[bytes]]] = {}
        self._heap: list[tuple[int, str]] = []   # (-key, call_id): the highest key on top
        self._digests: set[bytes] = set()        # of the held examples, each held once
        self._slack = 0
        self.calls_in = self.examples_in = self.duplicates = self.max_held_calls = 0

    def add(self, call_id: str, examples: list[Example]) -> None:
        self.calls_in += 1
        self.examples_in += len(examples)
        key = call_key(self.seed, call_id)
        if not examples or (call_id not in self._held and self._full() and key > -self._heap[0][0]):
            return  # never among the lowest keys: no need to look further
        kept, digests = [], []
        for example in examples:
            digest = example_digest(example)
            if digest in self._digests:
                self.duplicates += 1
                continue
            self._digests.add(digest)
            kept.append(example)
            digests.append(digest)
        if call_id in self._held:  # the same call_id again (non-adjacent rows): one group
            self._held[call_id][1].extend(kept)
            self._held[call_id][2].extend(digests)
        elif kept:
            self._held[call_id] = (key, kept, digests)
            heapq.heappush(self._heap, (-key, call_id))
        self._slack = max(self._slack, 2 * len(examples))
        self._evict()
        self.max_held_calls = max(self.max_held_calls, len(self._held))

    def skip(self, calls: int, examples: int) -> None:
        """Count calls known to be above threshold() when they were read: `add` would not keep them."""
        self.calls_in += calls
        self.examples_in += examples

    def threshold(self) -> int | None:
        """Calls with a higher key than this are not kept (None: any call may be). It only ever falls."""
        return -self._heap[0][0] if self._full() else None

    def _full(self) -> bool:
        return len(self._digests) >= self.need + self._slack

    def _evict(self) -> None:
        while self._heap:
            digests = self._held[self._heap[0][1]][2]
            if len(self._digests) - len(digests) < self.need + self._slack:
                return
            del self._held[heapq.heappop(self._heap)[1]]
            self._digests.difference_update(digests)

    def _targets(self, distinct: int) -> tuple[dict[str, int], bool]:
        if distinct >= self.need:
            return dict(self.sizes), False
        cfg = self.cfg
        test = max(1, round(cfg.test_fraction * distinct))
        validation = round(cfg.validation_fraction * distinct) if cfg.validation_size else 0
        return {"test": test, "validation": validation, "train": distinct}, True

    def assign(self) -> tuple[dict[str, list[Example]], dict]:
        """The splits and their report."""
        order = sorted(self._held.values(), key=lambda held: held[0])
        targets, fallback = self._targets(len(self._digests))
        splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
        names = iter(_FILL_ORDER)
        name = next(names)
        for i, (_, examples, _) in enumerate(order):
            # Next split when this one is full; in the fallback, also when only the last call is left (for train).
            while name != "train" and (len(splits[name]) >= targets[name] or (fallback and i == len(order) - 1)):
                name = next(names)
            room = targets[name] - len(splits[name])
            if room <= 0:
                break
            splits[name].extend(examples if fallback else examples[:room])
        calls = {name: {e["call_id"] for e in examples} for name, examples in splits.items()}
        overlap = set().union(*(calls[a] & calls[b] for a, b in combinations(SPLITS, 2)))
        report = {**{n: len(splits[n]) for n in SPLITS},
                  "calls_per_split": {n: len(calls[n]) for n in SPLITS},
                  "calls_in": self.calls_in, "examples_in": self.examples_in,
                  "duplicates_dropped": self.duplicates, "overlap_calls": len(overlap),
                  "fallback": fallback, "seed": self.seed, "max_held_calls": self.max_held_calls}
        return splits, report

    def write(self, out_dir: str | Path) -> dict:
        """Write each non-empty split as <split>.examples.jsonl, <split>.jsonl (Vertex), <split>.messages.jsonl."""
        out_dir = Path(out_dir)
        splits, report = self.assign()
        if not splits["train"]:
            raise ValueError(f"nothing to sample: {self.calls_in} calls gave {self.examples_in} examples")
        for name, examples in splits.items():
            write_split(out_dir, name, examples)
        return report


def split_files(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A split's three renderings: <name>.examples.jsonl, <name>.jsonl (Vertex), <name>.messages.jsonl."""
    return folder / f"{name}.examples.jsonl", folder / f"{name}.jsonl", folder / f"{name}.messages.jsonl"


def write_split(folder: Path, name: str, examples: list[Example]) -> None:
    """Write a split in its three renderings; an empty one removes them (a stale split from an earlier run must
    not look like this run's)."""
    examples_path, vertex_path, messages_path = split_files(folder, name)
    if not examples:
        for path in (examples_path, vertex_path, messages_path):
            path.unlink(missing_ok=True)
        return
    write_jsonl(examples_path, examples)
    write_jsonl(vertex_path, map(to_vertex, examples))
    write_jsonl(messages_path, map(to_messages, examples))


def sample(examples_in: str | Path, out_dir: str | Path, cfg: SampleConfig, seed: int) -> dict:
    """examples.jsonl -> the split files in out_dir (see Sampler.write); returns the report."""
    sampler = Sampler(cfg, seed)
    for call_id, examples in groupby(read_jsonl(examples_in), key=lambda e: e["call_id"]):
        sampler.add(call_id, list(examples))
    return sampler.write(out_dir)
