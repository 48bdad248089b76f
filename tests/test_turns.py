"""Turn-split: causal pairing, merged turns, openings, history; proven on the real seed export too."""
from __future__ import annotations

import ast
import csv
import html
from collections import Counter
from pathlib import Path

import ftfy
import pytest

from calltune.config import DataConfig, SplitConfig
from calltune.conversation.render import to_messages, to_vertex
from calltune.conversation.windows import count_examples, split_call
from calltune.core.io import read_jsonl
from calltune.data.ingest import ingest
from calltune.data.turn_split import turn_split

FIXTURES = Path(__file__).parent / "fixtures" / "data"
REAL_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "salesmate" / "data_extract_calls_pt_test.csv"
OPEN = "[The phone rings.]"


def call(*turns: tuple[str, str], call_id: str = "c") -> dict:
    roles = {"S": "seller", "C": "customer"}
    return {"call_id": call_id, "source_row": 1, "persona": {}, "system": "sys",
            "turns": [{"role": roles[r], "text": t} for r, t in turns]}


# The opening (c0), merged seller turns (s1+s2), merged customer turns (c3+c4), an empty turn, and a
# trailing seller turn with nothing after it.
CALL = call(("C", "c0"), ("S", "s1"), ("S", "s2"), ("C", "c3"), ("C", ""), ("C", "c4"), ("S", "s5"), ("C", "c6"), ("S", "s7"))


def test_causal_pairing_with_merged_turns_and_opening():
    stats = Counter()
    examples = split_call(CALL, SplitConfig(history_turns=6, opening_prompt=OPEN), stats)
    assert [(e["turn_index"], e["prompt"], e["target"]) for e in examples] == [
        (0, OPEN, "c0"),           # the opening answers the phone ringing
        (2, "s1 s2", "c3 c4"),     # a customer reply follows the seller turn before it, never the one after
        (4, "s5", "c6"),
    ]
    assert [e["example_id"] for e in examples] == ["c:0", "c:2", "c:4"]
    assert all(e["system"] == "sys" and e["call_id"] == "c" for e in examples)
    # History starts with a seller turn: the opening appears as seller(opening prompt) + customer(opening).
    assert examples[1]["history"] == [{"role": "seller", "text": OPEN}, {"role": "customer", "text": "c0"}]
    assert [t["text"] for t in examples[2]["history"]] == [OPEN, "c0", "s1 s2", "c3 c4"]
    assert stats == Counter({"calls": 1, "examples": 3, "openings": 1, "openings_dropped": 0, "merged_turns": 2,
                             "empty_turns": 1, "calls_without_examples": 0, "ended_calls": 1})


def test_the_customers_closing_turn_carries_the_end_of_call_marker_that_the_renderings_teach():
    from calltune.runtime.encoding import window

    examples = split_call(CALL, SplitConfig(opening_prompt=OPEN, end_of_call="[hangs up]"))
    assert [e.get("end_of_call") for e in examples] == [None, None, "[hangs up]"]  # c6, the last customer turn
    last = examples[-1]
    assert last["target"] == "c6"  # the words the customer said: what the reply metrics compare
    assert to_messages(last)["messages"][-1] == {"role": "assistant", "content": "c6 [hangs up]"}
    assert to_vertex(last)["contents"][-1] == {"role": "model", "parts": [{"text": "c6 [hangs up]"}]}
    assert "end_of_call" not in split_call(CALL, SplitConfig(opening_prompt=OPEN, end_of_call=""))[-1]
    # A live conversation's next reply is not known to close the call.
    assert "end_of_call" not in window("sys", [{"role": "seller", "text": "hi"}], SplitConfig(end_of_call="[x]"))


def test_opening_dropped_without_opening_prompt():
    stats = Counter()
    examples = split_call(CALL, SplitConfig(history_turns=6, opening_prompt=""), stats)
    assert [(e["turn_index"], e["prompt"], e["target"]) for e in examples] == [(2, "s1 s2", "c3 c4"), (4, "s5", "c6")]
    assert examples[0]["history"] == []  # the lone opening cannot start a history: it is trimmed
    assert [t["text"] for t in examples[1]["history"]] == ["s1 s2", "c3 c4"]
    assert stats["openings_dropped"] == 1 and stats["openings"] == 0


@pytest.mark.parametrize("limit, expected", [(0, []), (1, []), (2, ["s1 s2", "c3 c4"]), (3, ["s1 s2", "c3 c4"]),
                                             (4, [OPEN, "c0", "s1 s2", "c3 c4"])])
def test_history_limit_keeps_the_latest_turns_from_a_seller_turn(limit, expected):
    last = split_call(CALL, SplitConfig(history_turns=limit, opening_prompt=OPEN))[-1]
    assert [t["text"] for t in last["history"]] == expected
    assert len(last["history"]) <= limit


def test_every_rendering_alternates_from_the_seller_and_ends_on_the_target():
    for example in split_call(CALL, SplitConfig(opening_prompt=OPEN, end_of_call="")):
        vertex = to_vertex(example)["contents"]
        assert [c["role"] for c in vertex] == ["user", "model"] * (len(vertex) // 2)
        assert vertex[-1]["parts"][0]["text"] == example["target"]
        messages = to_messages(example)["messages"]
        assert messages[0] == {"role": "system", "content": "sys"} and messages[-1]["content"] == example["target"]


@pytest.mark.parametrize("opening_prompt", [OPEN, ""])
@pytest.mark.parametrize("the_call", [CALL, call(("S", "a"), ("C", "b")), call(("C", "a")), call(("S", "a")), call()])
def test_count_examples_agrees_with_split_call(the_call, opening_prompt):
    cfg = SplitConfig(opening_prompt=opening_prompt)
    built, counted = Counter(), Counter()
    assert count_examples(the_call, cfg, counted) == len(split_call(the_call, cfg, built))
    assert counted == built


def test_seller_only_call_gives_no_example():
    stats = Counter()
    assert split_call(call(("S", "alô?"), ("S", "alô??")), SplitConfig(), stats) == []
    assert stats["calls_without_examples"] == 1


def test_chat_formats_give_one_example_per_assistant_turn(tmp_path):
    for name, n in (("messages.jsonl", 2), ("vertex.jsonl", 2)):
        ingest(FIXTURES / name, tmp_path / "calls.jsonl", tmp_path / "q.jsonl", DataConfig(max_bad_fraction=1))
        report = turn_split(tmp_path / "calls.jsonl", tmp_path / "examples.jsonl", SplitConfig())
        examples = list(read_jsonl(tmp_path / "examples.jsonl"))
        assert report["examples"] == len(examples) == n and report["openings"] == 0
        assert examples[-1]["history"][0]["role"] == "seller"


@pytest.mark.skipif(not REAL_CSV.is_file(), reason="../shared/data is not available")
def test_real_export_pairs_causally(tmp_path):
    """Each target is the customer turn right after the prompt's seller turn in the original call."""
    ingest(REAL_CSV, tmp_path / "calls.jsonl", tmp_path / "q.jsonl", DataConfig())
    report = turn_split(tmp_path / "calls.jsonl", tmp_path / "examples.jsonl", SplitConfig(opening_prompt=OPEN))
    examples = list(read_jsonl(tmp_path / "examples.jsonl"))

    # The originals, read independently of calltune: literal_eval + ftfy + html.unescape.
    with open(REAL_CSV, encoding="utf-8-sig", newline="") as fh:
        originals = {row["id"]: ast.literal_eval(row["transcription"]) for row in csv.DictReader(fh)}

    def fixed(m: dict) -> str:
        return " ".join(html.unescape(ftfy.fix_text(m["message"])).split())

    assert report["examples"] == len(examples) == sum(m["role"] == "bot" for t in originals.values() for m in t)
    for e in examples:
        original = originals[e["call_id"]]  # its turns alternate already, so merged index == original index
        i = e["turn_index"]
        assert original[i]["role"] == "bot" and e["target"] == fixed(original[i])
        if i == 0:
            assert e["prompt"] == OPEN
        else:
            assert original[i - 1]["role"] == "user" and e["prompt"] == fixed(original[i - 1])
        for text in [e["prompt"], e["target"], *(t["text"] for t in e["history"])]:
            assert "Ã" not in text and "Â" not in text and ftfy.fix_text(text) == text
    # The seed paired backwards: the "model" line was the customer turn said *before* the seller's.
    backwards = {(fixed(t[i]), fixed(t[i - 1])) for t in originals.values() for i in range(1, len(t)) if t[i]["role"] == "user"}
    assert not backwards & {(e["prompt"], e["target"]) for e in examples}
