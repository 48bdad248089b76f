"""Evaluation: teacher-forced token accuracy on the customer replies, checked against a plain loop."""
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from calltune.config import EvaluateConfig
from calltune.evaluate import evaluate
from calltune.render import to_messages
from conftest import SYSTEM, make_example, write_examples

# Different lengths, so the batched, padded pass has real padding to get right.
TEST_EXAMPLES = [
    make_example(10, [], "Hello, am I speaking with Ana?", "Yes. Who is this?"),
    make_example(11, [("seller", "I am calling from the bank."), ("customer", "Which bank?")],
                 "The city bank, about your credit card limit.", "I do not want a higher limit, thank you."),
    make_example(12, [], "Is now a good time?", "No."),
]


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
    result = evaluate(base_model_dir, test, tmp_path / "out", EvaluateConfig(batch_size=2, max_examples=2))

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


def test_tuned_model_report_shows_the_loss_curve(tuned_model, tiny_examples_path, tmp_path):
    out, _ = tuned_model
    result = evaluate(out, tiny_examples_path, tmp_path / "out", EvaluateConfig())
    assert 0 <= result["accuracy"] <= 1 and result["examples"] == 4
    assert "data:image/png;base64," in (tmp_path / "out" / "report.html").read_text()
    assert (tmp_path / "out" / "loss_curve.png").is_file()


def test_no_target_tokens_is_an_error_not_a_number(base_model_dir, tmp_path):
    empty = write_examples(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="no customer-reply tokens"):
        evaluate(base_model_dir, empty, tmp_path / "out", EvaluateConfig())
    too_long = write_examples(tmp_path / "long.jsonl", [make_example(1, [], "Hi?", "word " * 40, system=SYSTEM)])
    with pytest.raises(ValueError, match="1 longer than max_seq_len=16"):
        evaluate(base_model_dir, too_long, tmp_path / "out", EvaluateConfig(), max_seq_len=16)
    assert not (tmp_path / "out" / "metrics.json").exists()
