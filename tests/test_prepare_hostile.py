"""prepare on hostile input: every bad row is quarantined with a reason naming file and row, every unreadable file
is refused with one line naming file and row; never a traceback, and no control character reaches training data."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from calltune.cli import main
from calltune.config import load_config
from calltune.core.io import read_jsonl
from calltune.data.prepare import prepare

GOOD = [{"call_id": f"c{i}", "turns": [{"role": "seller", "text": f"Hello {i}"},
                                        {"role": "customer", "text": f"Who is this? {i}"}]} for i in range(4)]


def config(*overrides: str):
    return load_config(overrides=["translate.backend=none", "data.max_bad_fraction=0.9", *overrides])


def jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def quarantined(out: Path) -> dict[int, dict]:
    return {q["row"]: q for q in read_jsonl(out / "quarantine.jsonl")}


def refused(capsys, path: Path, out: Path, *overrides: str) -> str:
    """Run `calltune prepare`; it must fail with exit 1 and one line on stderr (no traceback)."""
    assert main(["prepare", "--input", str(path), "--out", str(out), "translate.backend=none", *overrides]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("calltune: ") and "Traceback" not in err, err
    return err


def test_cr_only_csv_is_refused_naming_the_file(tmp_path, capsys):
    path = tmp_path / "mac.csv"
    path.write_bytes(b"id,transcription\r1,\"[{'message': 'oi', 'role': 'bot'}]\"\r")
    err = refused(capsys, path, tmp_path / "out")
    assert str(path) in err and "row 0" in err and "CR-only" in err


def test_deeply_nested_json_line_is_quarantined(tmp_path):
    deep = '{"call_id": "deep", "turns": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = jsonl(tmp_path / "calls.jsonl", [json.dumps(GOOD[0]), deep, json.dumps(GOOD[1])])
    report = prepare(path, tmp_path / "out", config())
    assert report["calls"] == 2
    bad = quarantined(tmp_path / "out")
    assert bad[2]["reason"] == "bad JSON line (nested too deeply)" and bad[2]["source"] == str(path)


def test_deeply_nested_qa_json_is_refused(tmp_path, capsys):
    path = tmp_path / "qa.json"
    path.write_text('[{"question": "a", "answer": ' + "[" * 100_000 + "]" * 100_000 + "}]", encoding="utf-8")
    err = refused(capsys, path, tmp_path / "out", "data.format=qa_json")
    assert str(path) in err and "nested too deeply" in err


def test_lone_surrogate_is_quarantined_and_the_rest_kept(tmp_path):
    bad = {"call_id": "s", "turns": [{"role": "seller", "text": "hi"}, {"role": "customer", "text": "\ud800 oops"}]}
    path = jsonl(tmp_path / "calls.jsonl", [json.dumps(GOOD[0]), json.dumps(bad), json.dumps(GOOD[1])])
    report = prepare(path, tmp_path / "out", config())
    assert (report["calls"], report["quarantined"]) == (2, 1)
    row = quarantined(tmp_path / "out")[2]
    assert "lone surrogate" in row["reason"] and "turn 2 text" in row["reason"]
    assert "\\ud800" in row["raw"]  # kept visible, and the file is valid UTF-8


def test_binary_input_is_refused_naming_file_and_row(tmp_path, capsys):
    path = tmp_path / "dump.bin"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 50)
    err = refused(capsys, path, tmp_path / "out")
    assert str(path) in err and "row 1 is not UTF-8" in err


def test_huge_literal_is_quarantined_before_parsing(tmp_path):
    # 2 MB of a literal that misses the fast path (double-quoted keys); literal_eval would take ~360 MB.
    items = ", ".join(f'{{"message": "palavra {i} " , "role": "bot"}}' for i in range(50_000))
    path = tmp_path / "big.csv"
    path.write_text('id,transcription\n1,"[{\'message\': \'oi\', \'role\': \'bot\'}]"\n'
                    f'2,"[{items.replace(chr(34), 2 * chr(34))}]"\n', encoding="utf-8")  # CSV doubles quotes
    tracemalloc.start()
    report = prepare(path, tmp_path / "out", config())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (report["calls"], report["quarantined"]) == (1, 1)
    assert peak < 100 << 20, peak  # bounded: the literal was never parsed
    assert "over data.max_field_chars=100000" in quarantined(tmp_path / "out")[2]["reason"]


def test_field_size_limit_comes_from_the_config(tmp_path):
    long = {"call_id": "long", "turns": [{"role": "seller", "text": "hi"}, {"role": "customer", "text": "x" * 5000}]}
    path = jsonl(tmp_path / "calls.jsonl", [json.dumps(GOOD[0]), json.dumps(long)])
    report = prepare(path, tmp_path / "out", config("data.max_field_chars=4000"))
    assert report["calls"] == 1
    assert quarantined(tmp_path / "out")[2]["reason"] == "turn 2 text of 5000 characters, over data.max_field_chars=4000"
    assert prepare(path, tmp_path / "out2", config())["calls"] == 2  # the default is generous


@pytest.mark.parametrize("name", ["calls.csv", "calls.jsonl"])
def test_nul_and_control_characters_never_reach_training_data(tmp_path, name):
    if name.endswith(".csv"):
        path = tmp_path / name
        path.write_text("id,transcription\n1,\"[{'message': 'Ol\x00a\x07!', 'role': 'user'}, "
                        "{'message': 'Quem\x1b fala?\tSim', 'role': 'bot'}]\"\n", encoding="utf-8")
    else:
        call = {"call_id": "n\x00", "turns": [{"role": "seller", "text": "Ol\x00a\x07!"},
                                              {"role": "customer", "text": "Quem\x1b fala?\tSim"}]}
        path = jsonl(tmp_path / name, [json.dumps(call)])
    report = prepare(path, tmp_path / "out", config())
    assert report["calls"] == 1 and report["quarantined"] == 0
    text = "".join(f.read_text(encoding="utf-8") for f in (tmp_path / "out").glob("*.jsonl"))
    assert "Quem fala?" in text and "Ola!" in text
    assert not any(c in text for c in "\x00\x07\x1b") and "\\u0000" not in text and "\\u001b" not in text
