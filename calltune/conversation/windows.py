"""Windows: a call -> its examples, one per customer turn, paired causally (the turn-split step, calltune.data.turn_split,
writes them; the runtime windows a live conversation the same way).

Rules (see SplitConfig):
1. Empty turns are skipped and consecutive turns of the same speaker are merged (texts joined with a space),
   so the merged turns alternate seller/customer. `turn_index` counts these merged turns.
2. Every customer turn is a target. Its prompt is the seller turn just before it: the customer's line
   *answers* the seller (the seed system paired backwards, training the line said before the seller's).
3. The opening: a customer turn that no seller turn precedes (the customer picks up the phone) gets
   `split.opening_prompt` as its prompt. With an empty opening_prompt it is dropped, and counted.
4. History is the turns before the prompt, at most `split.history_turns` of them, trimmed so that it
   starts with a seller turn (Gemini `contents` must start with `user`). Where the opening is in it and
   opening_prompt is set, it appears as seller(opening_prompt) + customer(opening), so roles keep
   alternating from the seller.
5. Seller turns after the last customer turn have no target and are not used.
6. The customer's closing turn (the last customer turn of the call) carries `split.end_of_call` in the example's
   `end_of_call` field: the renderings put the marker after the reply (calltune.conversation.render.reply_text), so
   the model learns to end a call, while `target` stays the words the customer said.
"""
from __future__ import annotations

from collections import Counter
from itertools import islice

from calltune.config import SplitConfig
from calltune.conversation.schema import Call, Example, Turn


def merge_turns(turns: list[Turn], stats: Counter) -> list[Turn]:
    """Drop empty turns, join consecutive turns of one speaker; only role and text are kept."""
    merged: list[Turn] = []
    empty = joined = 0
    for turn in turns:
        text = turn["text"]
        if not text:
            empty += 1
        elif merged and merged[-1]["role"] == turn["role"]:
            merged[-1]["text"] += " " + text
            joined += 1
        else:
            merged.append({"role": turn["role"], "text": text})
    stats["empty_turns"] += empty
    stats["merged_turns"] += joined
    return merged


def _dialogue(call: Call, cfg: SplitConfig, stats: Counter) -> tuple[list[Turn], int]:
    """The merged turns, behind a seller turn saying the opening prompt when the customer speaks first
    (so every customer turn follows a seller turn), and how many turns were put in front (0 or 1)."""
    merged = merge_turns(call["turns"], stats)
    opening = bool(merged) and merged[0]["role"] == "customer"
    lead: list[Turn] = [{"role": "seller", "text": cfg.opening_prompt}] if opening and cfg.opening_prompt else []
    stats["openings"] += bool(lead)
    stats["openings_dropped"] += opening and not lead
    return lead + merged, len(lead)


def _count(stats: Counter, n: int) -> None:
    stats["calls"] += 1
    stats["examples"] += n
    stats["calls_without_examples"] += not n


def split_call(call: Call, cfg: SplitConfig, stats: Counter | None = None) -> list[Example]:
    """The call's examples (rules in the module docstring); `stats`, if given, accumulates the counts."""
    stats = Counter() if stats is None else stats
    dialogue, offset = _dialogue(call, cfg, stats)
    call_id, system, limit = call["call_id"], call["system"], cfg.history_turns
    examples: list[Example] = []
    for j in range(1, len(dialogue)):  # a customer turn at 0 is an opening without a prompt: dropped
        turn = dialogue[j]
        if turn["role"] != "customer":
            continue
        start = max(0, j - 1 - limit)
        if start < j - 1 and dialogue[start]["role"] == "customer":
            start += 1
        index = j - offset
        examples.append({"example_id": f"{call_id}:{index}", "call_id": call_id, "turn_index": index,
                         "system": system, "history": dialogue[start:j - 1],
                         "prompt": dialogue[j - 1]["text"], "target": turn["text"]})
    if examples and cfg.end_of_call:
        examples[-1]["end_of_call"] = cfg.end_of_call
        stats["ended_calls"] += 1
    _count(stats, len(examples))
    return examples


def count_examples(call: Call, cfg: SplitConfig, stats: Counter | None = None) -> int:
    """len(split_call(call, cfg, stats)), with the same stats, without building the examples."""
    stats = Counter() if stats is None else stats
    dialogue, _ = _dialogue(call, cfg, stats)
    n = sum(turn["role"] == "customer" for turn in islice(dialogue, 1, None))
    stats["ended_calls"] += bool(n and cfg.end_of_call)
    _count(stats, n)
    return n
