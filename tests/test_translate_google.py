"""The google backend: the real google-cloud-translate client (REST) against a loopback Cloud Translation v3 fake."""
import json
import math
import random
import sys
import threading
import time

import pytest

from calltune.backends.translators import TranslateError, make_translator
from calltune.config import TranslateConfig
from calltune.core.db import cache_key
from calltune.core.io import read_jsonl, write_jsonl
from calltune.data.translate import CACHE_FILE, translate_calls, translate_stream, translation_cache

from conftest import crash_when_cached
from fakes.translate import MAX_CODEPOINTS, FakeTranslation, detect, fake_translation

pytest.importorskip("google.cloud.translate_v3")

GLOSSARY = "projects/calltune-test/locations/us-central1/glossaries/brands"
SELLER = ["Bom dia, aqui é a Ana da Solar Mais, tudo bem?", "Quanto você paga de luz por mês?",
          "Posso te mandar uma simulação pelo WhatsApp?", "A instalação é gratuita & sem fidelidade.",
          "Que tal na quinta às 10h?", "O desconto é de até 20% na conta d'água e de luz."]
CUSTOMER = ["Não tenho interesse, obrigado.", "Pode me ligar amanhã? Estou ocupado agora.",
            "Quanto custa? Se for < R$ 100 eu penso.", "Minha esposa decide essas coisas.",
            "Já tenho placa solar em casa.", "Hum... tá, pode mandar.", "Alô? Quem fala?"]


def make_calls(n: int = 40, seed: int = 0) -> list[dict]:
    """Calls that repeat common lines, as real calls do, plus a line unique to each call."""
    rng = random.Random(seed)
    calls = []
    for i in range(n):
        turns = []
        for k in range(rng.randint(3, 7)):
            role = ("seller", "customer")[k % 2]
            turns.append({"role": role, "text": rng.choice(SELLER if role == "seller" else CUSTOMER)})
        turns.append({"role": "customer", "text": f"Meu número é {1000 + i}, anota aí."})
        calls.append({"call_id": f"c{i}", "source_row": i + 1, "system": f"Você é o cliente {i}.",
                      "persona": {"character": f"Cliente {i}, dona de padaria", "meeting_type": "FirstContact"},
                      "turns": turns})
    return calls


def unique_texts(calls) -> list[str]:
    return list(dict.fromkeys(t["text"] for c in calls for t in c["turns"]))


def gcfg(fake, **kw) -> TranslateConfig:
    return TranslateConfig(**{"backend": "google", "project": "calltune-test", "endpoint": fake.endpoint,
                              "retry_backoff_s": 0.01, "timeout_s": 5, **kw})


def run(calls, cfg, state_dir):
    stats: dict = {}
    return list(translate_stream(calls, cfg, state_dir, stats)), stats


@pytest.fixture
def fake():
    with FakeTranslation(glossaries={GLOSSARY: ["Solar Mais"]}, lifetime_s=60) as f:
        yield f


@pytest.fixture
def fake2():  # a second service for reruns, so request counts start from zero
    with FakeTranslation(lifetime_s=60) as f:
        yield f


def test_cold_cache_sends_each_unique_text_once_in_full_batches_then_warm_sends_nothing(tmp_path, fake, fake2):
    calls = make_calls()
    uniq = unique_texts(calls)
    out, stats = run(calls, gcfg(fake, batch_size=16, max_concurrency=3), tmp_path)

    assert len(fake.requests) == stats["requests"] == math.ceil(len(uniq) / 16)
    assert sorted(fake.sent_texts()) == sorted(uniq)  # every distinct text once, nothing else
    for r in fake.requests:
        assert r.path == "/v3/projects/calltune-test/locations/global:translateText"
        assert r.body["mimeType"] == "text/plain" and r.body["sourceLanguageCode"] == "pt"
        assert r.body["targetLanguageCode"] == "en" and len(r.body["contents"]) <= 16
    # order of calls and turns kept; each turn carries its own translation and its original
    assert [c["call_id"] for c in out] == [c["call_id"] for c in calls]
    for before, after in zip(calls, out):
        assert [t["role"] for t in after["turns"]] == [t["role"] for t in before["turns"]]
        assert [t["text_original"] for t in after["turns"]] == [t["text"] for t in before["turns"]]
        assert [t["text"] for t in after["turns"]] == [fake_translation(t["text"], "en") for t in before["turns"]]
        assert after["persona"] == before["persona"] and after["system"] == before["system"]  # not asked for
    assert any("'" in t["text"] and "&" in u["text"] for c in out for t in c["turns"] for u in c["turns"])
    assert "&#" not in json.dumps(out) and "&amp;" not in json.dumps(out)
    assert stats["segments"] == sum(len(c["turns"]) for c in calls)
    assert stats["unique_segments"] == stats["translated"] == len(uniq) and stats["cache_hits"] == 0
    assert stats["characters_billed"] == stats["characters"] == sum(map(len, uniq))
    assert stats["failures"] == stats["retries"] == 0

    again, warm = run(calls, gcfg(fake2, batch_size=16), tmp_path)
    assert fake2.requests == [] and warm["requests"] == warm["characters_billed"] == 0
    assert warm["cache_hits"] == warm["unique_segments"] == len(uniq)
    assert again == out


def test_plain_text_mode_returns_no_html_entities(fake):
    texts = ["O desconto é de até 20% na conta d'água.", "Pão & Cia <b>não</b> paga \"taxa\"."]
    assert make_translator(gcfg(fake)).translate(texts, "pt", "en") == [fake_translation(t, "en") for t in texts]
    # the fake does answer with entities when asked in HTML mode, as the real API does
    assert "&#39;" in fake_translation(texts[0], "en", html_mode=True)


def test_batches_are_as_large_as_the_api_allows(tmp_path, fake):
    # 2,500 short texts: the 1,024-texts limit decides
    calls = [{"call_id": f"c{i}", "source_row": i, "persona": {}, "system": "",
              "turns": [{"role": "customer", "text": f"Frase número {i}."}]} for i in range(2500)]
    _, stats = run(calls, gcfg(fake), tmp_path / "a")
    assert sorted(len(r.body["contents"]) for r in fake.requests) == [452, 1024, 1024]
    # 70 texts of 1,000 code points (2,000+ UTF-8 bytes): the 30,000-code-point limit decides
    calls = [{"call_id": f"l{i}", "source_row": i, "persona": {}, "system": "",
              "turns": [{"role": "seller", "text": f"{i:03d} " + "ã" * 996}]} for i in range(70)]
    before = len(fake.requests)
    _, stats = run(calls, gcfg(fake), tmp_path / "b")
    sizes = [sum(map(len, r.body["contents"])) for r in fake.requests[before:]]
    assert len(sizes) == stats["requests"] == math.ceil(70 / (MAX_CODEPOINTS // 1000)) and max(sizes) <= MAX_CODEPOINTS
    assert all(r.status == 200 for r in fake.requests)


def test_over_the_limit_is_refused_without_retries(fake):
    with pytest.raises(TranslateError, match="refused the request.*exceeds the limit of 1024"):
        make_translator(gcfg(fake)).translate([f"t{i}" for i in range(1025)], "pt", "en")
    assert len(fake.requests) == 1  # a 400 is not retried


def test_requests_run_concurrently_within_the_limit(tmp_path, fake):
    fake.latency_s = 0.05
    calls = make_calls(100)
    _, stats = run(calls, gcfg(fake, batch_size=5, max_concurrency=3), tmp_path)
    assert stats["requests"] >= 9
    assert 1 < fake.peak_in_flight <= 3


def test_429_5xx_and_timeouts_are_retried(tmp_path, fake):
    calls = make_calls()
    uniq = unique_texts(calls)
    fake.inject(429, 500, "hang", 503, 504)
    out, stats = run(calls, gcfg(fake, batch_size=10, max_concurrency=2, timeout_s=0.3), tmp_path)
    batches = math.ceil(len(uniq) / 10)
    assert stats["failures"] == stats["retries"] == 5
    assert stats["requests"] == len(fake.requests) == batches + 5
    assert len(fake.answered()) == batches and sorted(fake.sent_texts()) == sorted(uniq)
    assert [t["text"] for c in out for t in c["turns"]] == [fake_translation(t["text"], "en") for c in calls for t in c["turns"]]


def test_error_after_the_retry_budget_names_the_batch_and_leaves_the_cache_consistent(tmp_path, fake, fake2):
    calls = make_calls()
    uniq = unique_texts(calls)
    poison = "Meu número é 1007, anota aí."
    fake.fail_when(lambda body: poison in body["contents"], 500)
    cfg = gcfg(fake, batch_size=8, max_concurrency=4, max_retries=2)
    with pytest.raises(TranslateError, match=r"translation batch \d+ \(8 texts, \d+ code points, first .*\) failed: "
                                             r"Cloud Translation gave up after 3 attempts .*InternalServerError: 500"):
        run(calls, cfg, tmp_path)
    failed = [r for r in fake.requests if poison in r.body["contents"]]
    assert len(failed) == 3 and all(r.status == 500 for r in failed)
    lost = set(failed[0].body["contents"])
    cache = translation_cache(tmp_path)
    cached = cache.get_many({cache_key("google:general/nmt", "pt", "en", t): t for t in uniq})
    cache.close()
    assert set(cached) == set(fake.sent_texts())  # everything answered was stored...
    assert not set(cached) & lost  # ...and nothing of the failed batch
    assert all(cached[t] == fake_translation(t, "en") for t in cached)

    out, stats = run(calls, gcfg(fake2, batch_size=8), tmp_path)
    assert sorted(fake2.sent_texts()) == sorted(set(uniq) - set(cached))
    assert lost <= set(fake2.sent_texts())
    assert stats["cache_hits"] == len(cached)
    assert [t["text"] for c in out for t in c["turns"]] == [fake_translation(t["text"], "en") for c in calls for t in c["turns"]]


CHILD = """
import json, sys
from calltune.config import TranslateConfig
from calltune.data.translate import translate_calls
args = json.loads(sys.argv[1])
translate_calls(args["calls"], args["out"], TranslateConfig(**args["cfg"]), args["state"])
"""


def test_a_crash_midway_then_a_rerun_sends_only_what_was_not_done(tmp_path, fake, fake2):
    calls = make_calls(150)
    uniq = unique_texts(calls)
    write_jsonl(tmp_path / "calls.jsonl", calls)
    fake.hang_after(4)  # 4 requests are answered, then the service stops answering
    cfg = gcfg(fake, batch_size=10, max_concurrency=2, timeout_s=30).model_dump()
    args = {"calls": str(tmp_path / "calls.jsonl"), "out": str(tmp_path / "out.jsonl"), "cfg": cfg, "state": str(tmp_path)}
    # until the 4 answered batches are in the cache and more are waiting
    crash_when_cached([sys.executable, "-c", CHILD, json.dumps(args)], tmp_path / CACHE_FILE, "translations", 40,
                      fake, requests=4, timeout_s=20)
    assert not (tmp_path / "out.jsonl").exists()
    first = set(fake.sent_texts())
    assert len(first) == 40

    report = translate_calls(tmp_path / "calls.jsonl", tmp_path / "out.jsonl", TranslateConfig(**{**cfg, "endpoint": fake2.endpoint}), tmp_path)
    assert sorted(fake2.sent_texts()) == sorted(set(uniq) - first)
    assert report["requests"] == len(fake2.requests) == math.ceil((len(uniq) - 40) / 10)
    assert report["cache_hits"] == 40 and report["translated"] == len(uniq) - 40
    out = list(read_jsonl(tmp_path / "out.jsonl"))
    assert [t["text"] for c in out for t in c["turns"]] == [fake_translation(t["text"], "en") for c in calls for t in c["turns"]]


def test_persona_and_system_fields_on_request_with_originals_beside(tmp_path, fake):
    calls = make_calls(5)
    out, stats = run(calls, gcfg(fake, fields=["turns", "system", "persona.character"]), tmp_path)
    for before, after in zip(calls, out):
        assert after["system"] == fake_translation(before["system"], "en") and after["system_original"] == before["system"]
        assert after["persona"] == {"character": fake_translation(before["persona"]["character"], "en"),
                                    "meeting_type": "FirstContact"}
        assert after["persona_original"] == {"character": before["persona"]["character"]}
    assert stats["segments"] == sum(len(c["turns"]) + 2 for c in calls)
    assert "FirstContact" not in fake.sent_texts()


def test_glossary_terms_stay_as_they_are_and_key_the_cache(tmp_path, fake):
    calls = make_calls(3)
    calls[0]["turns"].append({"role": "seller", "text": "Aqui é da Solar Mais."})
    plain, _ = run(calls, gcfg(fake), tmp_path)
    assert "SOLAR MAIS" in json.dumps(plain, ensure_ascii=False)
    before = len(fake.requests)
    out, stats = run(calls, gcfg(fake, location="us-central1", glossary="brands"), tmp_path)
    assert stats["requests"] == len(fake.requests) - before > 0  # not served from the glossary-less cache entries
    assert all(r.body["glossaryConfig"]["glossary"] == GLOSSARY for r in fake.requests[before:])
    text = json.dumps(out, ensure_ascii=False)
    assert "Solar Mais" in text and "SOLAR MAIS" not in text
    with pytest.raises(ValueError, match="regional translate.location"):
        make_translator(gcfg(fake, glossary="brands"))
    with pytest.raises(TranslateError, match="refused.*NotFound: 404.*Glossary not found"):
        make_translator(gcfg(fake, location="us-central1", glossary="nope")).translate(["Olá"], "pt", "en")


def test_source_language_detection(tmp_path, fake):
    calls = make_calls(4)
    calls[0]["turns"].append({"role": "customer", "text": "Sorry, wrong number."})
    _, stats = run(calls, gcfg(fake, source_lang="auto"), tmp_path)
    assert all("sourceLanguageCode" not in r.body for r in fake.requests)
    uniq = unique_texts(calls)
    assert stats["detected_languages"] == {lang: sum(detect(t) == lang for t in uniq) for lang in ("pt", "en")}


def test_google_needs_a_project():
    with pytest.raises(ValueError, match="translate.project"):
        make_translator(TranslateConfig(backend="google"))


def test_close_stops_a_translator_waiting_to_retry(fake):
    fake.fail_when(lambda body: True, 503)
    translator = make_translator(gcfg(fake, retry_backoff_s=30))
    errors = []
    worker = threading.Thread(target=lambda: errors.append(pytest.raises(TranslateError, translator.translate, ["Olá"], "pt", "en")))
    worker.start()
    while not fake.requests:
        time.sleep(0.01)
    start = time.monotonic()
    translator.close()
    worker.join(5)
    assert time.monotonic() - start < 2 and "stopped before retrying" in str(errors[0].value)  # not the 0-60 s backoff


def test_a_segment_over_the_request_limit_is_split_at_sentences_and_rejoined(fake, tmp_path):
    """45,009 code points in one message: sent as pieces under 30,000, each ending a sentence, joined back."""
    sentence = "Olá, aqui é a Ana da Solar Mais e eu queria falar da sua conta de luz. "
    long = (sentence * 640)[:44_999] + "\nFim? Sim!"  # 45,009 code points, a line break inside
    assert len(long) == 45_009
    calls = [{"call_id": "long", "source_row": 1, "persona": {}, "system": "",
              "turns": [{"role": "seller", "text": "Bom dia"}, {"role": "customer", "text": long}]}]
    write_jsonl(tmp_path / "calls.jsonl", calls)
    report = translate_calls(tmp_path / "calls.jsonl", tmp_path / "out.jsonl", gcfg(fake), tmp_path / "state")
    assert report["failures"] == 0
    requests = [r.body["contents"] for r in fake.answered()]
    assert all(sum(map(len, c)) <= MAX_CODEPOINTS for c in requests)
    pieces = sorted((t for t in fake.sent_texts() if t != "Bom dia"), key=long.index)  # requests run concurrently
    assert len(pieces) == 2 and pieces[0].endswith("luz.") and pieces[1].endswith("Sim!")
    (out,) = read_jsonl(tmp_path / "out.jsonl")
    assert out["turns"][1]["text_original"] == long
    from calltune.core.text import repair_text  # what every translation goes through

    assert out["turns"][1]["text"] == " ".join(repair_text(fake_translation(p, "en")) for p in pieces)

    fake.requests.clear()  # a rerun finds every piece in the cache
    translate_calls(tmp_path / "calls.jsonl", tmp_path / "out2.jsonl", gcfg(fake), tmp_path / "state")
    assert fake.requests == [] and list(read_jsonl(tmp_path / "out2.jsonl")) == [out]


def test_prepare_translates_a_long_unbroken_text(fake, tmp_path):
    """No sentence end, no space in 70,000 code points: cut at the limit; prepare completes."""
    from calltune.config import load_config
    from calltune.data.prepare import prepare

    calls = [{"call_id": f"c{i}", "turns": [{"role": "seller", "text": "Oi"},
                                           {"role": "customer", "text": ("y" * 70_000 if i == 0 else f"Sim {i}")}]}
             for i in range(3)]
    write_jsonl(tmp_path / "calls.jsonl", calls)
    cfg = load_config(overrides=["translate.backend=google", "translate.project=calltune-test",
                                 f"translate.endpoint={fake.endpoint}", "translate.retry_backoff_s=0.01",
                                 f"state_dir={tmp_path / 'state'}"])
    report = prepare(tmp_path / "calls.jsonl", tmp_path / "out", cfg)
    assert report["calls"] == 3 and report["translate"]["failures"] == 0
    assert sorted(len(t) for t in fake.sent_texts() if t.startswith("y")) == [10_000, 30_000]  # the same 30,000 twice: sent once
