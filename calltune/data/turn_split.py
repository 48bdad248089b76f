"""The turn-split step: calls.jsonl -> examples.jsonl, by the windowing rules of calltune.conversation.windows."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from calltune.config import SplitConfig
from calltune.conversation.windows import split_call
from calltune.core.io import atomic_open, dumps, read_jsonl

STAT_KEYS = ("calls", "examples", "openings", "openings_dropped", "merged_turns", "empty_turns", "calls_without_examples",
             "ended_calls")


def turn_split(calls_in: str | Path, examples_out: str | Path, cfg: SplitConfig) -> dict:
    """calls.jsonl -> examples.jsonl (written atomically); returns the counts."""
    stats = Counter(dict.fromkeys(STAT_KEYS, 0))
    with atomic_open(examples_out) as fh:
        for call in read_jsonl(calls_in):
            for example in split_call(call, cfg, stats):
                fh.write(dumps(example) + "\n")
    return {**{k: stats[k] for k in STAT_KEYS}, "history_turns": cfg.history_turns, "opening_prompt": cfg.opening_prompt,
            "end_of_call": cfg.end_of_call}
