"""synthesize against a loopback OpenAI-compatible fake driven by the real `openai` client: generation, marking,
leak and duplicate removal, the quality filter, the mix ratio, retries, the cache, and resume after a crash."""
import hashlib
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from calltune.backends.generators import GenerateError
from calltune.config import SplitConfig, SynthesizeConfig
from calltune.conversation.render import to_messages, to_vertex
from calltune.conversation.windows import split_call
from calltune.core.io import read_jsonl
from calltune.data.sample import write_split
from calltune.data.synthesize.job import CACHE_FILE, TRACE_FILE, read_facts, synthesize

from conftest import crash_when_cached
from fakes.openai_compat import FakeOpenAI

pytest.importorskip("openai")

KEY_ENV = "CALLTUNE_TEST_SYNTH_KEY"
KEY = "sk-test-7f3a9c-never-log-me"
SYSTEM = "You are Carla, the owner of a small bakery, on a sales call."
CALLS = {
    "train": {
        "t1": ["Good morning, this is Bruno from SolarMax. Do you have a minute?",
               "Hi Bruno. I'm quite busy with the ovens, what is it about?",
               "We install solar panels that cut your electricity bill.",
               "My power bill is huge, so maybe. How long does installation take?"],
        "t2": ["Hello, I am calling about your bakery's delivery vans.", "We only have one van and it works fine.",
               "Our leasing plan includes maintenance.", "Send me the details by email, I will read them tonight."],
        "t3": ["Would you like to try our new flour supplier?", "I have bought from the same mill for twenty years.",
               "We deliver every morning before six.", "Early delivery would actually help my bakers."],
    },
    "validation": {"v1": ["Can I interest you in a card payment terminal?",
                          "I already accept cards, the bank gave me a machine."]},
    "test": {"x1": ["How much do you pay for electricity each month?", "Around nine hundred, the ovens use most of it."],
             "x2": ["Can we schedule a visit for Friday morning?", "Friday morning is our busiest time, come on Monday."]},
}


def conversation(*lines: str, first: str = "seller") -> str:
    roles = ("Seller", "Customer") if first == "seller" else ("Customer", "Seller")
    return "\n".join(f"{roles[i % 2]}: {line}" for i, line in enumerate(lines))


GYM = conversation("Hi, I'm Julia from FitLife gyms. Are you interested in a membership for your staff?",
                   "My staff start at four in the morning, they are too tired for the gym.",
                   "We open at three, right before their shift.", "That is early, but I doubt anyone would go.")
MIXER = conversation("I sell industrial mixers with a ten-year warranty.", "My mixer is older than me and still works.",
                     "Ours uses half the power.", "Half the power is tempting, what is the price?")
SOCIAL = conversation("Do you advertise your bakery on social media?", "My niece posts photos of our cakes sometimes.",
                      "We could run your pages for a monthly fee.", "Let me ask her first, she might be offended.")


@pytest.fixture
def splits(tmp_path) -> Path:
    folder = tmp_path / "splits"
    for name, calls in CALLS.items():
        examples = [e for call_id, lines in calls.items() for e in split_call(
            {"call_id": call_id, "source_row": 1, "persona": {}, "system": SYSTEM,
             "turns": [{"role": ("seller", "customer")[i % 2], "text": t} for i, t in enumerate(lines)]}, SplitConfig())]
        write_split(folder, name, examples)
    return folder


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def cfg_for(fake, **kw) -> SynthesizeConfig:
    return SynthesizeConfig(**{"enabled": True, "backend": "openai", "model": "fake-chat", "base_url": f"{fake.endpoint}/v1",
                               "api_key_env": KEY_ENV, "max_concurrency": 1, "retry_backoff_s": 0.01, "timeout_s": 5,
                               "max_share": 0.9, **kw})


def run(splits, out, fake, state, **kw) -> dict:
    return synthesize(splits, out, cfg_for(fake, **kw), seed=7, state_dir=state)


def synthetic(out: Path) -> list[dict]:
    return [e for e in read_jsonl(out / "train.examples.jsonl") if e.get("synthetic")]


def exchanges(examples) -> list[tuple[str, str]]:
    return [(e["prompt"], e["target"]) for e in examples]


def test_train_is_extended_with_marked_traceable_examples_and_the_rest_is_copied(tmp_path, splits, key):
    with FakeOpenAI(api_key=KEY, replies=[GYM, MIXER, SOCIAL]) as fake:
        report = run(splits, tmp_path / "out", fake, tmp_path / "state", conversations=3)
    out = tmp_path / "out"
    for name in ("validation", "test"):  # held-out splits: byte for byte
        for suffix in (".examples.jsonl", ".jsonl", ".messages.jsonl"):
            assert (out / f"{name}{suffix}").read_bytes() == (splits / f"{name}{suffix}").read_bytes()
    real = list(read_jsonl(splits / "train.examples.jsonl"))
    train = list(read_jsonl(out / "train.examples.jsonl"))
    assert train[:len(real)] == real
    synth = train[len(real):]
    assert len(synth) == 6 and all(e["synthetic"] is True and e["generator"] == "openai:fake-chat" for e in synth)
    assert exchanges(synth[:2]) == [(GYM.splitlines()[0][8:], GYM.splitlines()[1][10:]),
                                    (GYM.splitlines()[2][8:], GYM.splitlines()[3][10:])]
    assert synth[1]["history"] == [{"role": "seller", "text": GYM.splitlines()[0][8:]},
                                   {"role": "customer", "text": GYM.splitlines()[1][10:]}]
    assert [list(read_jsonl(out / f"train{s}"))[-1] for s in (".jsonl", ".messages.jsonl")] == \
        [to_vertex(synth[-1]), to_messages(synth[-1])]
    assert sum(1 for _ in read_jsonl(out / "train.jsonl")) == len(train)

    # Traceable: prompt_sha is the SHA-256 of the request sent; the trace holds its messages and answer.
    sent = {hashlib.sha256(json.dumps({k: b[k] for k in ("messages", "temperature", "max_tokens", "seed")},
                                      sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest(): b
            for b in fake.bodies()}
    trace = {row["prompt_sha"]: row for row in read_jsonl(out / TRACE_FILE)}
    assert set(trace) == set(sent) and len(sent) == 3
    for e in synth:
        row = trace[e["prompt_sha"]]
        assert row["prompt_id"] == e["prompt_id"] and e["target"] in row["answer"]
        assert row["messages"] == sent[e["prompt_sha"]]["messages"]
        assert {"example_id": e["example_id"], "kept": True, "reason": None} in row["examples"]
    # Style prompts show train examples, never held-out ones.
    train_text = {e["target"] for e in real}
    heldout_text = {t for name in ("validation", "test") for e in read_jsonl(splits / f"{name}.examples.jsonl")
                    for t in (e["prompt"], e["target"])}
    for body in fake.bodies():
        prompt = body["messages"][-1]["content"]
        assert any(t in prompt for t in train_text) and not any(t in prompt for t in heldout_text)
        assert SYSTEM in prompt
    assert report["generated"] == 3 and report["examples"] == 6 and report["kept"] == 6
    assert report["train_real"] == len(real) and report["train"] == len(train)
    assert report["synthetic_share"] == round(6 / len(train), 4)

    # A rerun is served from the cache: no request, the same output.
    with FakeOpenAI(api_key=KEY) as fake2:
        again = run(splits, tmp_path / "out2", fake2, tmp_path / "state", conversations=3)
    assert fake2.requests == [] and again["cache_hits"] == 3 and again["requests"] == 0
    assert (tmp_path / "out2" / "train.examples.jsonl").read_bytes() == (out / "train.examples.jsonl").read_bytes()


def test_copies_and_near_duplicates_of_test_validation_train_and_each_other_are_removed(tmp_path, splits, key):
    replies = [
        GYM,
        # a fresh exchange, then a test exchange with case and spacing changed: the whole conversation goes
        conversation("Good afternoon, I represent a packaging company.", "We use paper bags and they are fine.",
                     "how much do you pay for   electricity each month?", "AROUND nine hundred, the ovens use most of it."),
        # paraphrases of a test and of a validation exchange
        conversation("Could we book a visit on Friday in the morning?",
                     "Friday mornings are our busiest, please come Monday instead."),
        conversation("Would you be interested in a terminal for card payments?",
                     "I already take cards, my bank gave me a machine."),
        # a train exchange copied, then a fresh one (kept: only the copy goes)
        conversation("Would you like to try our new flour supplier?", "I have bought from the same mill for twenty years.",
                     "Our cloud accounting software files your taxes automatically.",
                     "My accountant is my cousin, I cannot fire him."),
        # a train exchange barely reworded
        conversation("Hello, I'm calling about your bakery's delivery vans.", "We only have one van, and it works fine."),
        # the first conversation's exchanges again: copied with other case, and reworded
        conversation("HI, I'm Julia from FitLife gyms. Are you interested in a membership for your staff?",
                     "my staff start at four in the morning, they are too tired for the gym."),
        conversation("We open at 3, just before their shift.", "That's early, but I doubt anybody would go."),
    ]
    with FakeOpenAI(api_key=KEY, replies=replies) as fake:
        report = run(splits, tmp_path / "out", fake, tmp_path / "state", conversations=len(replies))
    assert report["removed"] == {"duplicate_heldout": 2, "near_duplicate_heldout": 2, "duplicate_train": 1,
                                 "near_duplicate_train": 1, "duplicate_synthetic": 1, "near_duplicate_synthetic": 1,
                                 "over_max_share": 0}
    kept = synthetic(tmp_path / "out")
    assert exchanges(kept) == [
        ("Hi, I'm Julia from FitLife gyms. Are you interested in a membership for your staff?",
         "My staff start at four in the morning, they are too tired for the gym."),
        ("We open at three, right before their shift.", "That is early, but I doubt anyone would go."),
        ("Our cloud accounting software files your taxes automatically.", "My accountant is my cousin, I cannot fire him.")]
    assert report["examples"] == 11 and report["kept"] == 3
    trace = list(read_jsonl(tmp_path / "out" / TRACE_FILE))
    assert [x["reason"] for x in trace[1]["examples"]] == ["duplicate_heldout", "duplicate_heldout"]
    assert [x["reason"] for x in trace[4]["examples"]] == ["duplicate_train", None]


def test_quality_filter_rejects_prose_role_order_length_and_language(tmp_path, splits, key):
    replies = [
        "Sure! In this call the seller offers a new oven and the customer politely declines.",
        conversation("Hello.", "Are you there?", "Yes.").replace("Customer: Are", "Seller: Are"),
        conversation("Tell me about your bakery.", "We bake bread. " * 60),
        conversation("Bom dia, você tem um minuto para falar sobre energia solar?",
                     "Não tenho tempo agora, estou muito ocupada com a padaria."),
        "Here is the call:\n**Seller:** Do you sell gluten-free bread?\n**Customer:** Not yet, but my customers keep\n"
        "asking for it.\n\n---\n\nIn this call the customer is curious.",
    ]
    with FakeOpenAI(api_key=KEY, replies=replies) as fake:
        report = run(splits, tmp_path / "out", fake, tmp_path / "state", conversations=len(replies))
    assert report["rejected"] == {"unparseable": 1, "role_order": 1, "length": 1, "language": 1}
    assert exchanges(synthetic(tmp_path / "out")) == [
        ("Do you sell gluten-free bread?", "Not yet, but my customers keep asking for it.")]
    trace = list(read_jsonl(tmp_path / "out" / TRACE_FILE))
    assert [row["rejected"] for row in trace] == ["unparseable", "role_order", "length", "language", None]


def test_synthetic_share_of_train_is_capped_by_max_share(tmp_path, splits, key):
    real = sum(1 for _ in read_jsonl(splits / "train.examples.jsonl"))
    with FakeOpenAI(api_key=KEY, replies=[GYM, MIXER, SOCIAL]) as fake:
        report = run(splits, tmp_path / "out", fake, tmp_path / "state", conversations=3, max_share=0.25)
    kept = synthetic(tmp_path / "out")
    assert len(kept) == real // 3 == report["kept"]  # k / (real + k) <= 0.25
    assert report["synthetic_share"] == 0.25 and report["removed"]["over_max_share"] == 6 - len(kept)
    assert exchanges(kept) == [(GYM.splitlines()[0][8:], GYM.splitlines()[1][10:]),
                               (GYM.splitlines()[2][8:], GYM.splitlines()[3][10:])]  # the first prompts' examples
    none = synthesize(splits, tmp_path / "none", cfg_for(fake, conversations=3, max_share=0.0), seed=7,
                      state_dir=tmp_path / "state")  # from the cache
    assert none["kept"] == 0 and none["removed"]["over_max_share"] == 6 and none["requests"] == 0


def test_429_5xx_and_timeouts_are_retried(tmp_path, splits, key):
    with FakeOpenAI(api_key=KEY, replies=[GYM, MIXER]) as fake:
        fake.inject(429, 500, "hang", 503)
        report = run(splits, tmp_path / "out", fake, tmp_path / "state", conversations=2, timeout_s=0.5)
    assert [r.status for r in fake.requests] == [429, 500, None, 503, 200, 200]
    assert (report["requests"], report["retries"], report["failures"]) == (6, 4, 4)
    assert report["kept"] == 4


def test_a_request_refused_for_good_fails_naming_the_prompt_after_the_others_are_cached(tmp_path, splits, key):
    arrivals = iter(range(100))
    with FakeOpenAI(api_key=KEY, replies=[GYM, MIXER]) as fake:
        fake.fail_when(lambda body: next(arrivals) == 1, 400)  # the second request: a bad request, not retried
        with pytest.raises(GenerateError, match=r"(?s)prompt style:7:1 .*refused.*400.*the 2 answered are cached"):
            run(splits, tmp_path / "out", fake, tmp_path / "state", conversations=3)
        assert [r.status for r in fake.requests] == [200, 400, 200]
    assert not (tmp_path / "out").exists()
    with sqlite3.connect(tmp_path / "state" / CACHE_FILE) as db:
        assert db.execute("SELECT count(*) FROM generations").fetchone()[0] == 2


CHILD = """
import json, sys
from calltune.config import SynthesizeConfig
from calltune.data.synthesize.job import synthesize
a = json.loads(sys.argv[1])
synthesize(a["splits"], a["out"], SynthesizeConfig(**a["cfg"]), seed=7, state_dir=a["state"])
"""


def test_a_crash_midway_then_a_rerun_repeats_no_request(tmp_path, splits, key):
    n = 6
    with FakeOpenAI(api_key=KEY, lifetime_s=60) as fake:
        fake.hang_after(3)  # 3 requests answered, then the service stops answering
        cfg = cfg_for(fake, conversations=n, timeout_s=30).model_dump()
        args = {"splits": str(splits), "out": str(tmp_path / "out"), "cfg": cfg, "state": str(tmp_path / "state")}
        # until the 3 answers are in the cache and a 4th request hangs
        crash_when_cached([sys.executable, "-c", CHILD, json.dumps(args)], tmp_path / "state" / CACHE_FILE,
                          "generations", 3, fake, requests=3, timeout_s=30, cwd=Path(__file__).resolve().parents[1])
        first = fake.bodies()
    assert len(first) == 3 and not (tmp_path / "out").exists()

    with FakeOpenAI(api_key=KEY) as fake2:
        report = run(splits, tmp_path / "out", fake2, tmp_path / "state", conversations=n, timeout_s=30)
        second = fake2.bodies()
    assert len(second) == n - 3 and report["requests"] == n - 3 and report["cache_hits"] == 3
    seeds = [b["seed"] for b in first + second]
    assert len(set(seeds)) == n  # every prompt sent exactly once across the crash
    assert len(list(read_jsonl(tmp_path / "out" / TRACE_FILE))) == n


def test_facts_mode_writes_conversations_about_each_fact(tmp_path, splits, key):
    facts = [{"acronym": "CGT", "definition": "Cooking Gourmet Taste: a style emphasizing rich, sophisticated flavors."},
             {"acronym": "FIT", "definition": "Fast, Innovative, Tasty: quick, creative and delicious meals."},
             {"acronym": "SCM", "definition": "Seasonal Culinary Mix: cooking with seasonal ingredients for freshness."}]
    (tmp_path / "facts.json").write_text(json.dumps(facts))
    with FakeOpenAI(api_key=KEY) as fake:
        report = run(splits, tmp_path / "out", fake, tmp_path / "state", mode="facts", conversations=3,
                     facts_file=str(tmp_path / "facts.json"))
    kept = synthetic(tmp_path / "out")
    for fact in facts:
        prompt = next(b["messages"][-1]["content"] for b in fake.bodies() if f"Fact: {fact['acronym']}:" in b["messages"][-1]["content"])
        assert fact["definition"] in prompt
        about = [e for e in kept if e["prompt_id"].endswith(":" + fact["acronym"])]
        assert about and about[0]["target"] == f"{fact['acronym']} is short for {fact['definition']}"
        assert about[0]["system"] == SYSTEM  # a train example's system instruction
    assert report["mode"] == "facts" and report["kept"] == len(kept)


def test_a_bad_facts_file_is_refused_naming_the_item_and_field(tmp_path):
    (tmp_path / "facts.json").write_text(json.dumps([{"acronym": "CGT", "definition": "x"}, {"acronym": "FIT"}]))
    with pytest.raises(ValueError, match=r"facts.json: item 2: missing or empty field 'definition'"):
        read_facts(tmp_path / "facts.json")


def test_disabled_passes_the_splits_through_unchanged(tmp_path, splits):
    report = synthesize(splits, tmp_path / "out", SynthesizeConfig(), seed=7, state_dir=tmp_path / "state")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in splits.iterdir())
    for p in splits.iterdir():
        assert (tmp_path / "out" / p.name).read_bytes() == p.read_bytes()
    assert report["enabled"] is False and report["kept"] == 0
    assert not (tmp_path / "state").exists()


def test_the_api_key_comes_from_the_named_variable_and_is_never_written_or_logged(tmp_path, splits, key, caplog):
    with FakeOpenAI(api_key=KEY, replies=[GYM]) as fake:
        fake.inject(429)  # a retry, which logs
        report = run(splits, tmp_path / "out", fake, tmp_path / "state", conversations=1)
    assert report["kept"] == 2 and report["retries"] == 1 and caplog.records
    assert KEY not in json.dumps(report) and KEY not in caplog.text
    for path in [*(tmp_path / "out").iterdir(), *(tmp_path / "state").iterdir()]:
        assert KEY.encode() not in path.read_bytes(), path


def test_a_wrong_key_fails_at_once_and_a_missing_one_before_any_request(tmp_path, splits, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with FakeOpenAI(api_key=KEY) as fake:
        with pytest.raises(GenerateError, match="refused the request.*401"):
            run(splits, tmp_path / "out", fake, tmp_path / "state", conversations=1)
        assert len(fake.requests) == 1  # 401 is not retried
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(ValueError, match=KEY_ENV):
            run(splits, tmp_path / "out", fake, tmp_path / "state", conversations=1)
        assert len(fake.requests) == 1
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(ValueError, match="only over https"):
        synthesize(splits, tmp_path / "out", SynthesizeConfig(enabled=True, backend="openai", model="m", api_key_env=KEY_ENV,
                                                               base_url="http://models.example.com/v1"),
                   seed=7, state_dir=tmp_path / "state")


def test_gemini_backend_through_google_genai_with_retries():
    pytest.importorskip("google.genai")
    from calltune.backends.generators import make_generator

    from fakes.vertex import FakeVertex

    with FakeVertex() as fake:
        fake.inject(503)
        gen = make_generator(SynthesizeConfig(backend="gemini", model="projects/p/locations/us-central1/endpoints/e1",
                                              base_url=fake.endpoint, retry_backoff_s=0.01), Path("/nonexistent"))
        request = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a call."}],
                   "temperature": 0.5, "max_tokens": 64, "seed": 3}
        assert gen.generate([request]) == ["e1 says: Write a call."]
    assert gen.name == "gemini:projects/p/locations/us-central1/endpoints/e1"
    assert (gen.counters["requests"], gen.counters["retries"]) == (2, 1)
    body = fake.answered()[0].body
    assert body["systemInstruction"]["parts"][0]["text"] == "Be brief."
    assert body["generationConfig"]["seed"] == 3 and body["generationConfig"]["maxOutputTokens"] == 64
