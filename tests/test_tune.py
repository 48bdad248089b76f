"""Tuning: the loss covers exactly the customer reply, long examples lose history first, the model folder
is a complete safetensors-only artifact, and training actually fits the data."""
import json

import pytest
from transformers import AutoTokenizer

from calltune.config import EvaluateConfig, InferConfig
from calltune.evaluate import evaluate
from calltune.models import MODEL_CARD, weights_sha256
from calltune.render import to_messages
from calltune.tune import encode_example, make_trainer
from conftest import make_example

LONG_HISTORY = [("seller", "Good morning, my name is Bruno and I call from Acme Insurance about your car."),
                ("customer", "Good morning. What is this about exactly?"),
                ("seller", "We have a new plan for drivers in your area with lower monthly payments."),
                ("customer", "I already have insurance with another company.")]
EXAMPLE = make_example(0, LONG_HISTORY, "Would you like to compare the two plans?", "Maybe, send me an email.")


@pytest.fixture(scope="module")
def tokenizer(base_model_dir):
    return AutoTokenizer.from_pretrained(base_model_dir)


def test_mask_covers_exactly_the_customer_reply(tokenizer, base_model_dir, tmp_path):
    encoded = encode_example(EXAMPLE, tokenizer, max_len=512)
    ids, mask = encoded["input_ids"], encoded["completion_mask"]
    messages = to_messages(EXAMPLE)["messages"]
    prompt_text = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)

    first = mask.index(1)
    assert set(mask[first:]) == {1}  # one contiguous run at the end
    assert tokenizer.decode(ids[:first]) == prompt_text  # system, history and seller prompt: no loss
    assert tokenizer.decode(ids[first:]) == "Maybe, send me an email.<|im_end|>"  # the reply and its end of turn

    # The trainer's labels are exactly these tokens, everything else ignored.
    from calltune.config import TuneConfig

    trainer = make_trainer(base_model_dir, [encoded], None, TuneConfig(max_steps=1), seed=0, work_dir=tmp_path)
    labels = trainer.train_dataset[0]["labels"]
    assert labels == [t if m else -100 for t, m in zip(ids, mask)]


def test_long_examples_lose_history_first_and_never_the_reply(tokenizer):
    full = encode_example(EXAMPLE, tokenizer, max_len=512)
    target = [t for t, m in zip(full["input_ids"], full["completion_mask"]) if m]

    cut = encode_example(EXAMPLE, tokenizer, max_len=len(full["input_ids"]) - 5)
    text = tokenizer.decode(cut["input_ids"])
    assert len(cut["input_ids"]) <= len(full["input_ids"]) - 5
    assert "Good morning, my name is Bruno" not in text  # the oldest turn went first
    assert "I already have insurance" in text and text.startswith("<|im_start|>system\nYou are Ana")
    assert [t for t, m in zip(cut["input_ids"], cut["completion_mask"]) if m] == target

    tight = encode_example(EXAMPLE, tokenizer, max_len=len(target) + 3)  # no room even for the seller's whole line
    assert len(tight["input_ids"]) == len(target) + 3
    assert [t for t, m in zip(tight["input_ids"], tight["completion_mask"]) if m] == target
    assert encode_example(EXAMPLE, tokenizer, max_len=len(target)) is None  # the reply alone does not fit


def test_model_folder_is_a_complete_safetensors_artifact(tuned_model, base_model_dir):
    out, report = tuned_model
    names = {p.name for p in out.rglob("*")}
    assert {"adapter_model.safetensors", "adapter_config.json", MODEL_CARD, "training_log.json", "loss_curve.png",
            "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle")) or "checkpoint" in n]

    card = json.loads((out / MODEL_CARD).read_text())
    assert card == json.loads(json.dumps(report))
    assert card["base_model_path"] == str(base_model_dir)
    assert card["base_sha256"] == weights_sha256(base_model_dir)
    assert card["adapter_sha256"] == weights_sha256(out)
    assert card["steps"] == 12 and card["seed"] == 7 and card["train_examples"] == 4
    assert card["train_tokens"] > card["train_target_tokens"] > 0
    assert card["config"]["max_seq_len"] == 96
    log = json.loads((out / "training_log.json").read_text())
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 13))
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_fits_the_customer_replies(tuned_model, base_model_dir, tiny_examples_path, tmp_path):
    out, report = tuned_model
    losses = [r["loss"] for r in json.loads((out / "training_log.json").read_text()) if "loss" in r]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3

    # Scored the same way as the gate: the tuned model is far better than the base model on what it learnt.
    cfg = EvaluateConfig(batch_size=4, compare=[], embedding_model="")  # the token metrics only
    infer = InferConfig(max_new_tokens=8)
    before = evaluate(base_model_dir, tiny_examples_path, tmp_path / "base", cfg, infer=infer, max_seq_len=96)
    after = evaluate(out, tiny_examples_path, tmp_path / "tuned", cfg, infer=infer)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > before["accuracy"]
    assert report["validation_loss"] == pytest.approx(after["loss"], rel=0.05, abs=1e-3)
