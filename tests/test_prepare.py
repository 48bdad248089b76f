"""prepare: ingest -> translate (none) -> turn-split -> sample in one pass, and what it writes."""
from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import ftfy
import pytest

from calltune.config import load_config
from calltune.conversation.render import reply_text
from calltune.core.io import read_jsonl
from calltune.data.ingest import IngestError
from calltune.data.prepare import prepare

FIXTURES = Path(__file__).parent / "fixtures" / "data"
REAL_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "salesmate" / "data_extract_calls_pt_test.csv"
REPORT_KEYS = {"calls", "examples", "train", "validation", "test", "overlap_calls", "quarantined",
               "duplicates_dropped", "by_reason", "translate"}


def config(*overrides: str):
    return load_config(overrides=["translate.backend=none", *overrides])


def test_prepare_writes_the_splits_quarantine_and_report(tmp_path):
    report = prepare(FIXTURES / "seed_calls.csv", tmp_path, config("data.max_bad_fraction=0.7"))
    assert REPORT_KEYS <= report.keys()
    assert (report["rows"], report["calls"], report["quarantined"]) == (8, 3, 5)
    assert report["examples"] == 3 + 3 + 2  # an opening and two replies; three merged replies; two replies
    assert report["overlap_calls"] == 0 and report["sample"]["fallback"] is True
    assert report["train"] + report["validation"] + report["test"] == report["examples"]
    assert report == json.loads((tmp_path / "report.json").read_text())

    quarantine = list(read_jsonl(tmp_path / "quarantine.jsonl"))
    assert [q["row"] for q in quarantine] == [3, 4, 5, 6, 7] and report["by_reason"]["no usable turn"] == 2

    for split in ("train", "test"):
        vertex = list(read_jsonl(tmp_path / f"{split}.jsonl"))
        messages = list(read_jsonl(tmp_path / f"{split}.messages.jsonl"))
        examples = list(read_jsonl(tmp_path / f"{split}.examples.jsonl"))
        assert len(vertex) == len(messages) == len(examples) == report[split] > 0
        for v, m, e in zip(vertex, messages, examples):
            assert v["systemInstruction"]["parts"][0]["text"] == e["system"] == m["messages"][0]["content"]
            # The reply as the model learns it: the call's closing turn ends with the end-of-call marker.
            assert v["contents"][0]["role"] == "user" and v["contents"][-1] == {"role": "model", "parts": [{"text": reply_text(e)}]}
            assert m["messages"][-2:] == [{"role": "user", "content": e["prompt"]}, {"role": "assistant", "content": reply_text(e)}]


def test_parallel_prepare_matches_serial(tmp_path, monkeypatch):
    monkeypatch.setattr("calltune.data.ingest.CHUNK_ROWS", 2)  # several chunks over two processes
    cfg = config("data.max_bad_fraction=0.7", "sample.train_size=2", "sample.validation_size=1", "sample.test_size=2")
    reports = [prepare(FIXTURES / "seed_calls.csv", tmp_path / str(w), cfg, workers=w) for w in (1, 2)]
    for key in ("calls", "examples", "train", "validation", "test", "quarantined", "by_reason", "split", "sample"):
        assert reports[0][key] == reports[1][key]
    for name in ("train.jsonl", "test.jsonl", "validation.jsonl", "quarantine.jsonl"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()


def test_prepare_fails_clearly_when_nothing_is_usable(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(",transcription,id\n0,[],1\n1,\"[{'message': 'x', 'role': 'bot'\",2\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"bad\.csv: no usable call in 2 rows.*no usable turn: 1.*unparseable transcript: 1"):
        prepare(bad, tmp_path / "out", config())
    assert len(list(read_jsonl(tmp_path / "out" / "quarantine.jsonl"))) == 2
    assert not (tmp_path / "out" / "report.json").exists() and not (tmp_path / "out" / "train.jsonl").exists()


def test_prepare_fails_past_the_bad_share(tmp_path):
    with pytest.raises(IngestError, match=r"5 of 8 rows quarantined \(62\.5%\), more than data\.max_bad_fraction=0\.2"):
        prepare(FIXTURES / "seed_calls.csv", tmp_path, config())


@pytest.mark.skipif(not REAL_CSV.is_file(), reason="../shared/data is not available")
def test_prepare_real_export_targets_follow_their_prompts(tmp_path):
    """The issue's acceptance check: every target is the customer turn that follows the prompt's last seller
    turn in the original call, no mojibake is left, and no call is in two splits."""
    report = prepare(REAL_CSV, tmp_path, config())
    assert report["calls"] == 4 and report["quarantined"] == 0 and report["overlap_calls"] == 0
    with open(REAL_CSV, encoding="utf-8-sig", newline="") as fh:
        originals = {row["id"]: ast.literal_eval(row["transcription"]) for row in csv.DictReader(fh)}
    seen = 0
    for split in ("train", "validation", "test"):
        if not (tmp_path / f"{split}.jsonl").exists():
            continue
        for v, e in zip(read_jsonl(tmp_path / f"{split}.jsonl"), read_jsonl(tmp_path / f"{split}.examples.jsonl")):
            original, i = originals[e["call_id"]], e["turn_index"]
            contents = [c["parts"][0]["text"] for c in v["contents"]]
            assert original[i]["role"] == "bot" and e["target"] == " ".join(ftfy.fix_text(original[i]["message"]).split())
            assert contents[-1] == reply_text(e)  # the closing turn with the end-of-call marker
            if i > 0:  # the prompt is the seller line right before
                assert original[i - 1]["role"] == "user"
                assert contents[-2] == " ".join(ftfy.fix_text(original[i - 1]["message"]).split())
            assert all("Ã" not in t and ftfy.fix_text(t) == t for t in contents)
            seen += 1
    # Small data: everything is used but the repeated openings ("Alô, aqui é a Beatriz...") kept once.
    assert seen == report["train"] + report["validation"] + report["test"] == report["examples"] - report["duplicates_dropped"]
    assert report["duplicates_dropped"] > 0


def test_prepare_translates_through_the_cache(tmp_path):
    cfg = load_config(overrides=["translate.backend=local", f"state_dir={tmp_path / 'state'}", "data.max_bad_fraction=1",
                                 "data.qa_input_key=input_text", "data.qa_output_key=output_text"])
    first = prepare(FIXTURES / "qa.json", tmp_path / "a", cfg)
    again = prepare(FIXTURES / "qa.json", tmp_path / "b", cfg)
    assert first["translate"]["translated"] == first["translate"]["segments"] == 4
    assert again["translate"]["translated"] == 0 and again["translate"]["cache_hits"] == 4
    targets = [row["contents"][-1]["parts"][0]["text"] for s in ("train", "test") for row in read_jsonl(tmp_path / "a" / f"{s}.jsonl")]
    assert len(targets) == 2 and not {"Se for cara, não quero.", "Quinta não dá, prefiro sexta."} & set(targets)
    # The translated calls are kept too, each turn's Portuguese original beside its translation.
    calls = list(read_jsonl(tmp_path / "a" / "calls.jsonl"))
    turns = [t for call in calls for t in call["turns"]]
    assert len(calls) == first["calls"] and all(t["text_original"] != t["text"] for t in turns)
    assert {"Se for cara, não quero.", "Quinta não dá, prefiro sexta."} <= {t["text_original"] for t in turns}
