"""Sample: grouped split with zero overlap, seeded determinism, dedupe, bounded memory, fallback."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from calltune.config import SampleConfig
from calltune.core.io import read_jsonl, write_jsonl
from calltune.data.sample import SPLITS, Sampler, call_key, example_digest, sample


def make_call(call_id: str, n: int, text: str = "") -> list[dict]:
    return [{"example_id": f"{call_id}:{2 * i + 1}", "call_id": call_id, "turn_index": 2 * i + 1, "system": "sys",
             "history": [], "prompt": f"seller {call_id} {i}", "target": text or f"customer {call_id} {i}"}
            for i in range(n)]


def make_calls(n: int, seed: int = 0) -> list[tuple[str, list[dict]]]:
    rng = random.Random(seed)
    return [(f"call-{i}", make_call(f"call-{i}", rng.randint(1, 5))) for i in range(n)]


def run(calls, out: Path, seed: int = 42, **sizes) -> dict:
    sampler = Sampler(SampleConfig(**sizes), seed)
    for call_id, examples in calls:
        sampler.add(call_id, examples)
    return sampler.write(out)


def written(out: Path) -> dict[str, list[dict]]:
    return {s: list(read_jsonl(out / f"{s}.examples.jsonl")) if (out / f"{s}.examples.jsonl").exists() else []
            for s in SPLITS}


SIZES = dict(train_size=200, validation_size=30, test_size=100)


def test_split_by_call_with_exact_sizes_and_zero_overlap(tmp_path):
    report = run(make_calls(600), tmp_path, **SIZES)
    splits = written(tmp_path)
    assert {s: len(splits[s]) for s in SPLITS} == {"train": 200, "validation": 30, "test": 100}
    assert {s: report[s] for s in SPLITS} == {"train": 200, "validation": 30, "test": 100}
    ids = {s: {e["call_id"] for e in splits[s]} for s in SPLITS}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["validation"] and not ids["validation"] & ids["test"]
    assert report["overlap_calls"] == 0 and report["fallback"] is False
    assert report["calls_per_split"] == {s: len(ids[s]) for s in SPLITS}
    # The other renderings hold the same examples, in the same order.
    for s in SPLITS:
        vertex = list(read_jsonl(tmp_path / f"{s}.jsonl"))
        messages = list(read_jsonl(tmp_path / f"{s}.messages.jsonl"))
        assert [v["contents"][-1]["parts"][0]["text"] for v in vertex] == [e["target"] for e in splits[s]]
        assert [m["messages"][-1]["content"] for m in messages] == [e["target"] for e in splits[s]]


def test_deterministic_under_a_seed_and_independent_of_input_order(tmp_path):
    calls = make_calls(600)
    run(calls, tmp_path / "a", **SIZES)
    run(calls, tmp_path / "b", **SIZES)
    shuffled = calls[:]
    random.Random(7).shuffle(shuffled)
    run(shuffled, tmp_path / "c", **SIZES)
    run(calls, tmp_path / "d", seed=43, **SIZES)
    for s in SPLITS:
        assert (tmp_path / "a" / f"{s}.jsonl").read_bytes() == (tmp_path / "b" / f"{s}.jsonl").read_bytes()
        assert (tmp_path / "a" / f"{s}.jsonl").read_bytes() == (tmp_path / "c" / f"{s}.jsonl").read_bytes()
    a, d = written(tmp_path / "a"), written(tmp_path / "d")
    assert {e["call_id"] for e in a["test"]} != {e["call_id"] for e in d["test"]}


def test_bounded_heap_matches_sorting_everything(tmp_path):
    """Streaming with a bounded heap picks exactly what sorting every call by its key would."""
    calls = make_calls(3000)
    run(calls, tmp_path, **SIZES)
    order = sorted(calls, key=lambda c: call_key(42, c[0]))
    expected, targets = {s: [] for s in SPLITS}, {"test": 100, "validation": 30, "train": 200}
    fill = iter(["test", "validation", "train"])
    name = next(fill)
    for _, examples in order:
        while name != "train" and len(expected[name]) >= targets[name]:
            name = next(fill)
        expected[name] += examples[:targets[name] - len(expected[name])]
    assert {s: [e["example_id"] for e in v] for s, v in written(tmp_path).items()} == \
           {s: [e["example_id"] for e in v] for s, v in expected.items()}


def test_memory_stays_bounded_as_input_grows(tmp_path):
    sizes = dict(train_size=50, validation_size=10, test_size=50)
    held = []
    for n in (2_000, 20_000):
        sampler = Sampler(SampleConfig(**sizes), 1)
        for call_id, examples in make_calls(n, seed=n):
            sampler.add(call_id, examples)
        held.append(sampler.max_held_calls)
    # At most the sizes, plus two calls of slack and the call being added (calls have 1-5 examples).
    assert max(held) <= 110 + 2 * 5 + 5
    assert held[1] <= held[0] + 5  # ten times the input, no more held


def test_duplicates_never_in_two_splits(tmp_path):
    calls = make_calls(300)
    # Thirty calls share one reply to one prompt (spelled with other case and spacing): one example.
    for i in range(30):
        dup = make_call(f"dup-{i}", 1)[0] | {"prompt": "Bom dia!" if i % 2 else "  BOM   dia!", "target": "Quem fala?"}
        calls.append((f"dup-{i}", [dup]))
    report = run(calls, tmp_path, train_size=300, validation_size=50, test_size=100)
    digests = [example_digest(e) for s in written(tmp_path).values() for e in s]
    assert len(digests) == len(set(digests))
    assert report["duplicates_dropped"] >= 1
    kept = [e for s in written(tmp_path).values() for e in s if e["target"] == "Quem fala?"]
    assert len(kept) == 1


def test_fallback_splits_small_data_by_fractions(tmp_path):
    calls = [(f"c{i}", make_call(f"c{i}", 3)) for i in range(10)]  # 30 examples < 1000 + 100 + 1000
    report = run(calls, tmp_path)
    splits = written(tmp_path)
    assert report["fallback"] is True and report["overlap_calls"] == 0
    assert sum(len(v) for v in splits.values()) == 30  # nothing left out
    assert len(splits["test"]) == 6 and len(splits["validation"]) == 3 and len(splits["train"]) == 21  # 20% / 10% / rest


def test_fallback_keeps_train_non_empty(tmp_path):
    report = run([("only", make_call("only", 2))], tmp_path)
    assert (report["train"], report["validation"], report["test"]) == (2, 0, 0)
    assert not (tmp_path / "test.jsonl").exists()


def test_validation_disabled_removes_a_stale_split(tmp_path):
    run(make_calls(600), tmp_path, **SIZES)
    assert (tmp_path / "validation.jsonl").exists()
    report = run(make_calls(600), tmp_path, **{**SIZES, "validation_size": 0})
    assert report["validation"] == 0
    assert not any((tmp_path / f"validation{ext}").exists() for ext in (".jsonl", ".messages.jsonl", ".examples.jsonl"))


def test_sample_reads_examples_jsonl(tmp_path):
    calls = make_calls(400)
    write_jsonl(tmp_path / "examples.jsonl", (e for _, examples in calls for e in examples))
    report = sample(tmp_path / "examples.jsonl", tmp_path / "out", SampleConfig(**SIZES), seed=42)
    direct = run(calls, tmp_path / "direct", **SIZES)
    assert report == direct
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == (tmp_path / "direct" / "train.jsonl").read_bytes()


def test_no_examples_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to sample: 2 calls gave 0 examples"):
        run([("a", []), ("b", [])], tmp_path)
