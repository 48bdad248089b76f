"""Evaluation: teacher-forced token accuracy on the customer replies, checked against a plain loop; the
comparison of the tuned model with the base model and the champion, and the report."""
import json
import math
from html import escape

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from calltune.config import DeployConfig, EvaluateConfig, InferConfig, JudgeConfig, SimulateConfig
from calltune.conversation.render import to_messages
from calltune.evaluation.batch_infer import predict, read_predictions
from calltune.evaluation.evaluate import current_champion, evaluate
from calltune.evaluation.gate import gate
from calltune.release.deploy import deploy

from conftest import SYSTEM, make_example, write_examples

# Different lengths, so the batched, padded pass has real padding to get right.
TEST_EXAMPLES = [
    make_example(10, [], "Hello, am I speaking with Ana?", "Yes. Who is this?"),
    make_example(11, [("seller", "I am calling from the bank."), ("customer", "Which bank?")],
                 "The city bank, about your credit card limit.", "I do not want a higher limit, thank you."),
    make_example(12, [], "Is now a good time?", "No."),
]


NO_SUITE = SimulateConfig(adversarial="off")  # the adversarial suite is tested in test_realism.py

def by_hand(model_dir, examples):
    """One example at a time, no padding: argmax at the position before each reply token."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    correct = total = 0
    nll = 0.0
    for example in examples:
        messages = to_messages(example)["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(example["target"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt_ids + reply_ids])).logits[0]
        for k, token in enumerate(reply_ids):
            row = logits[len(prompt_ids) + k - 1]
            correct += int(row.argmax()) == token
            nll -= float(torch.log_softmax(row, -1)[token])
            total += 1
    return correct, total, nll


def test_accuracy_is_the_share_of_correct_next_reply_tokens(base_model_dir, tmp_path):
    test = write_examples(tmp_path / "test.examples.jsonl", TEST_EXAMPLES)
    cfg = EvaluateConfig(batch_size=2, max_examples=2, embedding_model="", bootstrap_samples=100)
    result = evaluate(base_model_dir, test, tmp_path / "out", cfg, infer=InferConfig(max_new_tokens=4),
                      simulation=NO_SUITE)

    correct, total, nll = by_hand(base_model_dir, TEST_EXAMPLES[:2])  # max_examples: the first two only
    assert result["tokens"] == total and result["examples"] == 2
    assert result["accuracy"] == pytest.approx(correct / total, abs=1 / total)  # a near-tie may flip one token
    assert 0 <= result["accuracy"] <= 1
    assert result["loss"] == pytest.approx(nll / total, rel=1e-3)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {k: metrics[k] for k in result} == result
    html = (tmp_path / "out" / "report.html").read_text()
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Who is this?" in html and "Who is this?" in md  # sample test examples with their targets
    assert f"{result['accuracy']:.4g}" in md


def test_tuned_model_is_compared_with_the_base_model_and_the_champion(tuned_model, tiny_examples_path, tmp_path):
    out, _ = tuned_model
    cfg = EvaluateConfig(threshold=0.0, min_gain_over_base=0.05, bootstrap_samples=200, samples=2)
    # The champion is the tuned model itself here: the same weights score the same.
    result = evaluate(out, tiny_examples_path, tmp_path / "out", cfg, infer=InferConfig(max_new_tokens=8),
                      champion=str(out), seed=3, simulation=NO_SUITE)
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    models = comparison["models"]
    assert set(models) == {"tuned", "base", "champion"}
    acc = {n: m["metrics"]["accuracy"]["value"] for n, m in models.items()}
    assert acc["tuned"] == acc["champion"] == result["accuracy"] and result["champion_accuracy"] == acc["champion"]
    assert acc["tuned"] > acc["base"] + 0.05 and result["base_accuracy"] == acc["base"]  # it learnt these replies
    assert all(m["examples"] == 4 for m in models.values())
    assert models["champion"]["note"] == "the same weights as tuned: its scores are reused"
    for m in models.values():
        for name, e in m["metrics"].items():
            if e["value"] is not None and e["low"] is not None:
                assert e["low"] - 1e-9 <= e["value"] <= e["high"] + 1e-9, name
    assert {"rouge_l", "chrf", "bleu", "embedding_cosine", "reply_words", "distinct_1", "distinct_2"} <= set(
        models["base"]["metrics"])
    assert comparison["gate"]["decision"] == "promote"
    assert [c["passed"] for c in comparison["gate"]["checks"]] == [True, True, True, True]
    # The gate step reads the same file; stricter settings keep the current model and name the check.
    assert gate(tmp_path / "out" / "comparison.json", EvaluateConfig(min_gain_over_base=1.0))["decided_by"] == "base"

    base_rows = read_predictions(tmp_path / "out" / "predictions" / "base")
    tuned_rows = read_predictions(tmp_path / "out" / "predictions" / "tuned")
    assert [r["example_id"] for r in base_rows] == [r["example_id"] for r in tuned_rows]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Decision: PROMOTE" in html and html.count("data:image/png;base64,") == 3  # charts, loss curve, realism lengths
    assert "<th>tuned</th><th>base</th><th>champion</th>" in html  # metric table and side-by-side samples
    assert escape(tuned_rows[0]["candidate_responses"]) in html and escape(base_rows[1]["candidate_responses"]) in html


def test_champion_is_the_model_in_the_latest_secret_version(tuned_model, tmp_path):
    cfg = DeployConfig(secret_id="eval-champion")
    champion, note = current_champion(cfg, tmp_path)
    assert champion is None and "nothing deployed" in note
    deployed = deploy(tuned_model[0], cfg, tmp_path, run_id="run-1", metrics={"accuracy": 0.5})
    champion, note = current_champion(cfg, tmp_path)
    assert champion == str(tmp_path.resolve() / "models" / deployed["model_sha"]) and deployed["endpoint"] in note


def test_predictions_of_other_examples_are_refused(base_model_dir, tmp_path):
    test = write_examples(tmp_path / "test.examples.jsonl", TEST_EXAMPLES)
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"example_id": "x", "model_sha": ""}) + "\n")
    cfg = EvaluateConfig(max_examples=1, embedding_model="")
    with pytest.raises(ValueError, match="not of the 1 test examples"):
        evaluate(base_model_dir, test, tmp_path / "out", cfg, predictions=other)


def test_the_scores_batch_inference_made_with_the_same_weights_are_taken_not_made_again(base_model_dir, tmp_path):
    test = write_examples(tmp_path / "test.examples.jsonl", TEST_EXAMPLES)
    cfg = EvaluateConfig(batch_size=2, embedding_model="", bootstrap_samples=100)
    infer = InferConfig(max_new_tokens=4)
    predict(base_model_dir, test, tmp_path / "predictions", infer, score_batch_size=2)
    own = evaluate(base_model_dir, test, tmp_path / "own", cfg, infer=infer, simulation=NO_SUITE)
    taken = evaluate(base_model_dir, test, tmp_path / "taken", cfg, infer=infer, predictions=tmp_path / "predictions",
                     simulation=NO_SUITE)
    assert (taken["accuracy"], taken["tokens"]) == (own["accuracy"], own["tokens"])
    assert taken["loss"] == pytest.approx(own["loss"])

    # what evaluate reads is the file: doctored hits show, unless the file is of another max_seq_len
    scores = tmp_path / "predictions" / "teacher_forced.json"
    saved = json.loads(scores.read_text())
    scores.write_text(json.dumps({**saved, "correct": saved["tokens"]}))
    assert evaluate(base_model_dir, test, tmp_path / "doctored", cfg, infer=infer, simulation=NO_SUITE,
                    predictions=tmp_path / "predictions")["accuracy"] == 1.0
    scores.write_text(json.dumps({**saved, "correct": saved["tokens"], "max_seq_len": 64}))
    assert evaluate(base_model_dir, test, tmp_path / "other", cfg, infer=infer, simulation=NO_SUITE,
                    predictions=tmp_path / "predictions")["accuracy"] == own["accuracy"]


def test_no_target_tokens_is_an_error_not_a_number(base_model_dir, tmp_path):
    empty = write_examples(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="no customer-reply tokens"):
        evaluate(base_model_dir, empty, tmp_path / "out", EvaluateConfig())
    too_long = write_examples(tmp_path / "long.jsonl", [make_example(1, [], "Hi?", "word " * 40, system=SYSTEM)])
    with pytest.raises(ValueError, match="1 longer than max_seq_len=16"):
        evaluate(base_model_dir, too_long, tmp_path / "out", EvaluateConfig(), max_seq_len=16)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_judge_scores_go_into_the_comparison_and_the_report(base_model_dir, tmp_path, monkeypatch):
    from fakes.openai_compat import FakeOpenAI

    test = write_examples(tmp_path / "test.examples.jsonl", TEST_EXAMPLES)
    monkeypatch.setenv("CALLTUNE_TEST_JUDGE_KEY", "sk-eval")
    answers = [json.dumps({"rationale": "In character.", "persona_fidelity": 4, "realism": 2}), "no scores here"]
    with FakeOpenAI(api_key="sk-eval", replies=answers) as fake:
        judge = JudgeConfig(backend="openai", model="judge-1", base_url=f"{fake.endpoint}/v1", max_concurrency=1,
                            api_key_env="CALLTUNE_TEST_JUDGE_KEY")
        result = evaluate(base_model_dir, test, tmp_path / "out", EvaluateConfig(max_examples=2, embedding_model=""),
                          infer=InferConfig(max_new_tokens=4), judge=judge)
    tuned = json.loads((tmp_path / "out" / "comparison.json").read_text())["models"]["tuned"]
    assert tuned["judge"] == {"requests": 2, "failed": 0, "unparseable": {"persona_fidelity": 1, "realism": 1}}
    assert tuned["metrics"]["persona_fidelity"]["value"] == 4 == result["persona_fidelity"]
    assert tuned["metrics"]["realism"]["n"] == 1
    judgments = read_predictions(tmp_path / "out" / "judge" / "tuned.jsonl")
    assert [j["persona_fidelity"] for j in judgments] == [4, None]
    assert "unparseable answers (left out)" in (tmp_path / "out" / "report.md").read_text()


class _DownJudge:
    """A judge backend (the generator interface) whose service is down, and that records being closed."""
    name, concurrency, closed = "down", 1, False

    def generate(self, requests):
        from calltune.backends.generators import GenerateError

        raise GenerateError("the judge's service gave up")

    def close(self):
        self.closed = True


def test_the_judge_is_closed_when_an_evaluation_fails(base_model_dir, tmp_path, monkeypatch):
    from calltune.evaluation import judge as judge_module

    backend = _DownJudge()
    monkeypatch.setattr(judge_module, "make_judge", lambda cfg, state_dir=".": judge_module.Judge(cfg, backend))
    test = write_examples(tmp_path / "test.examples.jsonl", TEST_EXAMPLES)
    cfg = EvaluateConfig(compare=[], embedding_model="", bootstrap_samples=10)
    with pytest.raises(RuntimeError, match="every one of 3 requests failed"):
        evaluate(base_model_dir, test, tmp_path / "out", cfg, infer=InferConfig(max_new_tokens=2),
                 judge=JudgeConfig(backend="openai"), simulation=SimulateConfig(enabled=False))
    assert backend.closed
