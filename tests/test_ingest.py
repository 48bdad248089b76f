"""Ingest: every input format, the repairs, the quarantine and its failure modes."""
from __future__ import annotations

import ast
import csv
import html
import json
from pathlib import Path

import ftfy
import pytest

from calltune.config import DataConfig
from calltune.core.io import read_jsonl
from calltune.core.text import repair_text
from calltune.data.ingest import (
    IngestError,
    Quarantine,
    bundled_sample_path,
    detect_format,
    ingest,
    iter_calls,
    parse_transcript,
    resolve_input,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_CSV = SHARED / "salesmate" / "data_extract_calls_pt_test.csv"
MOJIBAKE = ("Ã", "Â", "â€")


def run(tmp_path: Path, name: str | Path, **cfg) -> tuple[dict, list[dict], list[dict]]:
    cfg.setdefault("max_bad_fraction", 1.0)
    report = ingest(FIXTURES / name, tmp_path / "calls.jsonl", tmp_path / "quarantine.jsonl", DataConfig(**cfg))
    return report, list(read_jsonl(tmp_path / "calls.jsonl")), list(read_jsonl(tmp_path / "quarantine.jsonl"))


def texts(call: dict) -> list[str]:
    return [t["text"] for t in call["turns"]] + list(call["persona"].values()) + [call["system"]]


def test_seed_csv_fixture(tmp_path):
    report, calls, bad = run(tmp_path, "seed_calls.csv")
    assert report["format"] == "seed_csv"
    assert (report["rows"], report["calls"], report["quarantined"]) == (8, 3, 5)
    assert [c["call_id"] for c in calls] == ["101", "102", "m-108"]  # id, else meeting_id
    assert [c["source_row"] for c in calls] == [1, 2, 8]             # the row after a two-line field counts right

    first = calls[0]  # the export's mojibake, repaired, persona included
    assert first["turns"][0] == {"role": "customer", "text": "Alô, aqui é a Beatriz Almeida, quem fala?"}
    assert [t["role"] for t in first["turns"]] == ["customer", "seller"] * 3
    assert first["persona"] == {"character": "Beatriz Almeida", "meeting_type": "FirstContact"}
    assert first["system"].startswith("You are Beatriz Almeida, a prospective customer on a FirstContact sales call.")
    assert not any(m in t for c in calls for t in texts(c) for m in MOJIBAKE)

    assert "It's free, a gente é remunerado pelas gestoras." in texts(calls[1])  # &#39; unescaped
    assert texts(calls[2])[1] == 'Aqui é o André, da "Invest" — posso falar da taxa de 0,5%?'
    assert texts(calls[2])[2] == "Pode, mas seja rápido, estou no trânsito. It's ok \\ sério."

    assert [(q["row"], q["reason"]) for q in bad] == [
        (3, "unparseable transcript"), (4, "unknown role 'agent'"), (5, "no usable turn"),
        (6, "missing field 'transcription'"), (7, "no usable turn")]
    assert all(q["source"].endswith("seed_calls.csv") and q["raw"] for q in bad)
    assert "'role': 'agent'" in bad[1]["raw"]
    assert report["by_reason"] == {"unparseable transcript": 1, "unknown role 'agent'": 1, "no usable turn": 2,
                                   "missing field 'transcription'": 1}


def test_persona_placeholders_missing_are_left_blank(tmp_path):
    _, calls, _ = run(tmp_path, "seed_calls.csv", persona_fields=["character"],
                      system_prompt="Você é {character} ({nowhere}).")
    assert calls[0]["system"] == "Você é Beatriz Almeida ()."
    with pytest.raises(IngestError, match="system_prompt"):
        run(tmp_path, "seed_calls.csv", system_prompt="You are {0}")


@pytest.mark.skipif(not REAL_CSV.is_file(), reason="../shared/data is not available")
def test_seed_csv_real_export(tmp_path):
    report = ingest(REAL_CSV, tmp_path / "calls.jsonl", tmp_path / "q.jsonl", DataConfig())
    calls = list(read_jsonl(tmp_path / "calls.jsonl"))
    with open(REAL_CSV, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert report["calls"] == len(rows) == 4 and report["quarantined"] == 0
    for call, row in zip(calls, rows):
        raw = ast.literal_eval(row["transcription"])
        assert call["call_id"] == row["id"]
        assert [t["role"] for t in call["turns"]] == [{"bot": "customer", "user": "seller"}[m["role"]] for m in raw]
        assert any(m in m_raw["message"] for m_raw in raw for m in MOJIBAKE)  # the file really is broken...
        assert not any(m in t for t in texts(call) for m in MOJIBAKE)          # ...and we are not
    assert calls[0]["turns"][0]["text"] == "Alô, aqui é a Beatriz Almeida, é que fala?"
    assert "tangíveis" in calls[0]["turns"][2]["text"]  # "tangÃ\xadveis": a soft hyphen inside the mojibake


REPAIRS = {
    "AlÃ´, aqui Ã© a Beatriz": "Alô, aqui é a Beatriz",          # UTF-8 read as Latin-1
    "tangÃ\xadveis e Ã\xa0 vista": "tangíveis e à vista",         # ...with a soft hyphen, a no-break space
    "devido Ã  interaÃ§Ã£o": "devido à interação",               # ...whose no-break space was lost
    "ItÃ¢â‚¬â„¢s ÃƒÂ©": "It's é",                                    # twice broken, cp1252 glyphs (ftfy)
    "I don&#39;t &amp; you?": "I don't & you?",                  # HTML entities from a translation
    "importância, NÃO, Nº 1, câmbio": "importância, NÃO, Nº 1, câmbio",  # clean Portuguese stays as it is
    "  two\n lines\t and\u00a0spaces ": "two lines and spaces",
}


@pytest.mark.parametrize("broken, fixed", REPAIRS.items())
def test_repair_text(broken, fixed):
    assert repair_text(broken) == fixed
    # The fast paths give what ftfy alone gives.
    assert repair_text(broken) == " ".join(html.unescape(ftfy.fix_text(broken)).split())


@pytest.mark.parametrize("value", [
    [{"message": "simple", "role": "bot"}],
    [{"message": "it's \"quoted\" and a \\ backslash", "role": "user"}, {"message": "tab\there\nnew line", "role": "bot"}],
    [{"message": "AlÃ´ \xad soft hyphen, ünïcödé ✓ 😀", "role": "bot"}],
    [{"message": "", "role": "user"}],
    [],
])
def test_parse_transcript_reads_python_literals_like_literal_eval(value):
    text = repr(value)
    assert parse_transcript(text) == ast.literal_eval(text) == value


def test_parse_transcript_never_evaluates_code():
    for text in ["[{'message': 'x', 'role': 'bot'}, __import__('os').getcwd()]", "__import__('os')", "[{'message': 'x',"]:
        with pytest.raises((ValueError, SyntaxError)):
            parse_transcript(text)
    # Other literal shapes (key order, spacing) still parse, through literal_eval.
    assert parse_transcript("[{ 'role':'bot' , 'message':'oi' }]") == [{"role": "bot", "message": "oi"}]


def test_calls_jsonl_with_role_map(tmp_path):
    report, calls, bad = run(tmp_path, "calls.jsonl", role_map={"agent": "seller", "client": "customer"})
    assert report["format"] == "calls_jsonl" and report["rows"] == 6  # the blank line is not a row
    assert [c["call_id"] for c in calls] == ["c1", "c2"]
    assert calls[0]["turns"] == [{"role": "customer", "text": "Alô?"}, {"role": "seller", "text": "Oi Ana, aqui é o Carlos."},
                                 {"role": "customer", "text": "Pois não?"}]
    assert calls[0]["system"].startswith("You are Ana, a prospective customer on a FirstContact")
    assert calls[1]["system"] == "Você é um cliente impaciente."  # a call's own system instruction wins
    assert [(q["row"], q["reason"]) for q in bad] == [
        (4, "bad JSON line"), (5, "unknown role 'robot'"), (6, "no usable turn"), (7, "missing field 'text'")]


def test_calls_jsonl_unknown_roles_leave_nothing(tmp_path):
    with pytest.raises(IngestError, match=r"calls\.jsonl: no usable call in 6 rows .*unknown role 'agent': 2"):
        run(tmp_path, "calls.jsonl")  # the default role map knows neither agent nor client
    reasons = {q["reason"] for q in read_jsonl(tmp_path / "quarantine.jsonl")}
    assert reasons >= {"unknown role 'client'", "unknown role 'agent'"}


def test_role_map_must_target_calltune_roles(tmp_path):
    with pytest.raises(IngestError, match="role_map"):
        run(tmp_path, "calls.jsonl", role_map={"agent": "vendor"})


def test_qa_json_with_configured_keys(tmp_path):
    report, calls, bad = run(tmp_path, "qa.json", qa_input_key="input_text", qa_output_key="output_text")
    assert report["format"] == "qa_json" and report["calls"] == 2
    assert calls[1]["turns"] == [{"role": "seller", "text": "Podemos marcar na quinta?"},
                                 {"role": "customer", "text": "Quinta não dá, prefiro sexta."}]
    assert calls[1]["system"] == ""
    assert [(q["row"], q["reason"]) for q in bad] == [(3, "missing field 'output_text'")]


def test_acronym_format(tmp_path):
    report, calls, bad = run(tmp_path, "acronym.json")
    assert report["format"] == "acronym"
    assert [c["call_id"] for c in calls] == ["CGT-1", "CGT-2"]
    assert calls[1]["turns"] == [{"role": "seller", "text": "Is CGT about cooking?"},
                                 {"role": "customer", "text": "Yes: Cooking Gourmet Taste."}]
    assert [(q["row"], q["reason"]) for q in bad] == [(2, "unknown role 'bot'"), (3, "missing field 'acronym'")]


@pytest.mark.skipif(not (SHARED / "acronym").is_dir(), reason="../shared/data is not available")
def test_acronym_shared_dataset(tmp_path):
    data = json.loads((SHARED / "acronym" / "train_dataset.json").read_text(encoding="utf-8"))
    report = ingest(SHARED / "acronym" / "train_dataset.json", tmp_path / "c.jsonl", tmp_path / "q.jsonl", DataConfig())
    calls = list(read_jsonl(tmp_path / "c.jsonl"))
    assert report["calls"] == sum(len(item["conversation"]) for item in data) and report["quarantined"] == 0
    assert calls[0]["call_id"] == f"{data[0]['acronym']}-1"
    assert calls[0]["turns"][-1] == {"role": "customer", "text": data[0]["conversation"][0][-1]["content"]}


def test_messages_format(tmp_path):
    report, calls, bad = run(tmp_path, "messages.jsonl")
    assert report["format"] == "messages"
    assert calls[0]["system"] == "You are a busy customer."
    assert [t["role"] for t in calls[0]["turns"]] == ["seller", "customer", "seller", "customer"]
    assert calls[0]["turns"][3]["text"] == "I'm not interested."
    assert [(q["row"], q["reason"]) for q in bad] == [(2, "unknown role 'tool'"), (3, "missing field 'messages'")]


def test_vertex_format(tmp_path):
    report, calls, bad = run(tmp_path, "vertex.jsonl")
    assert report["format"] == "vertex"
    assert calls[0]["system"] == "You are Ana."
    assert calls[0]["turns"][2:] == [{"role": "seller", "text": "I'm calling about your investments."},
                                     {"role": "customer", "text": "I don't have time now."}]
    assert [(q["row"], q["reason"]) for q in bad] == [(2, "no usable turn")]


@pytest.mark.skipif(not (SHARED / "salesmate").is_dir(), reason="../shared/data is not available")
def test_vertex_shared_sample_repairs_entities(tmp_path):
    path = SHARED / "salesmate" / "data_sample-calls_sample_1k_test.jsonl"
    report = ingest(path, tmp_path / "c.jsonl", tmp_path / "q.jsonl", DataConfig())
    lines = sum(1 for line in open(path, encoding="utf-8") if line.strip())
    assert report["format"] == "vertex" and report["calls"] == lines
    assert "&#39;" in path.read_text(encoding="utf-8")
    assert not any("&#39;" in t["text"] for c in read_jsonl(tmp_path / "c.jsonl") for t in c["turns"])


def test_detect_format():
    expected = {"seed_calls.csv": "seed_csv", "calls.jsonl": "calls_jsonl", "qa.json": "qa_json",
                "acronym.json": "acronym", "messages.jsonl": "messages", "vertex.jsonl": "vertex"}
    assert {name: detect_format(FIXTURES / name) for name in expected} == expected


def test_detect_format_refuses_unknown(tmp_path):
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"foo": 1}\n')
    with pytest.raises(IngestError, match=r"odd\.jsonl.*\['foo'\].*data\.format"):
        detect_format(odd)


def test_resolve_input(tmp_path):
    assert bundled_sample_path().parts[-3:] == ("data", "bundled", "sample_calls_pt.csv")
    with pytest.raises(IngestError, match="/gcs/bucket/calls.csv"):
        resolve_input("gs://bucket/calls.csv")
    with pytest.raises(IngestError, match="nowhere.csv"):
        resolve_input(str(tmp_path / "nowhere.csv"))
    (tmp_path / "x.csv").write_text("a\n")
    assert resolve_input(str(tmp_path / "x.csv")) == tmp_path / "x.csv"


def test_too_many_bad_rows_fails_but_keeps_the_quarantine(tmp_path):
    with pytest.raises(IngestError) as err:
        ingest(FIXTURES / "seed_calls.csv", tmp_path / "calls.jsonl", tmp_path / "q.jsonl", DataConfig(max_bad_fraction=0.5))
    message = str(err.value)
    assert "seed_calls.csv" in message and "5 of 8 rows" in message and "max_bad_fraction=0.5" in message
    assert "unknown role 'agent': 1" in message
    assert len(list(read_jsonl(tmp_path / "q.jsonl"))) == 5  # the evidence is kept...
    assert not (tmp_path / "calls.jsonl").exists()           # ...no half-good output is


def test_nothing_usable_fails(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"call_id": 1, "turns": []}\nnot json\n')
    with pytest.raises(IngestError, match=r"bad\.jsonl: no usable call in 2 rows.*no usable turn: 1.*bad JSON line: 1"):
        ingest(bad, tmp_path / "calls.jsonl", tmp_path / "q.jsonl", DataConfig(format="calls_jsonl", max_bad_fraction=1))


def test_not_utf8_names_the_row(tmp_path):
    lines = (FIXTURES / "seed_calls.csv").read_bytes().splitlines(keepends=True)
    broken = tmp_path / "latin1.csv"
    broken.write_bytes(b"".join(lines[:3]) + "Alô".encode("latin-1") + b"," + b"".join(lines[3:]))
    with pytest.raises(IngestError, match=r"latin1\.csv: row 3 is not UTF-8"):
        ingest(broken, tmp_path / "c.jsonl", tmp_path / "q.jsonl", DataConfig())


def test_missing_transcription_column(tmp_path):
    f = tmp_path / "x.csv"
    f.write_text("id,text\n1,hello\n")
    with pytest.raises(IngestError, match=r"x\.csv: no 'transcription' column"):
        ingest(f, tmp_path / "c.jsonl", tmp_path / "q.jsonl", DataConfig())


def test_quarantine_truncates_raw(tmp_path):
    with Quarantine(tmp_path / "q.jsonl") as q:
        q.add("f.csv", 7, "unparseable transcript", "x" * 100_000)
        q.add("f.csv", 9, "unparseable transcript", {"transcription": "[oops"})
    rows = list(read_jsonl(tmp_path / "q.jsonl"))
    assert q.count == 2 and q.by_reason == {"unparseable transcript": 2}
    assert len(rows[0]["raw"]) < 10_000 and rows[1]["raw"] == '{"transcription":"[oops"}'


def test_parallel_parsing_gives_the_same_calls(tmp_path, monkeypatch):
    monkeypatch.setattr("calltune.data.ingest.CHUNK_ROWS", 3)  # several chunks across the processes
    results = []
    for workers in (1, 2):
        with Quarantine(tmp_path / f"q{workers}.jsonl") as q:
            results.append(list(iter_calls(FIXTURES / "seed_calls.csv", DataConfig(), q, workers=workers)))
        results.append((tmp_path / f"q{workers}.jsonl").read_text())
    assert results[0] == results[2] and results[1] == results[3]
    assert len(results[0]) == 3
