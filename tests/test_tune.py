"""Tuning: the loss covers exactly the customer reply, long examples lose history first, the model folder
is a complete safetensors-only artifact, and training actually fits the data."""
import json

import pytest
from transformers import AutoTokenizer

from calltune.config import EvaluateConfig, InferConfig, TuneConfig
from calltune.conversation.render import to_messages
from calltune.evaluation.evaluate import evaluate
from calltune.runtime.encoding import encode_causal as encode_example
from calltune.runtime.loading import MODEL_CARD, weights_sha256
from calltune.training.lora import PACKED_SDPA, make_trainer, train_lora

from conftest import TINY_DIALOGUES, make_example, write_examples

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
    assert 0 < report["validation_token_accuracy"] == pytest.approx(after["accuracy"], abs=1e-6)  # the gate's count


# ---- the tuner's mechanics, on a tiny random Llama (seconds, not minutes) ----
TRAIN = [make_example(i, *d) for i, d in enumerate(TINY_DIALOGUES * 4)]


@pytest.fixture()
def tiny_data(tmp_path):
    return write_examples(tmp_path / "train.examples.jsonl", TRAIN)


def _tiny_cfg(tiny_llama_dir, **kw) -> TuneConfig:
    return TuneConfig(**{"base_model": str(tiny_llama_dir), "batch_size": 4, "max_steps": 8, "learning_rate": 1e-2,
                         "lora_dropout": 0.0, "eval_steps": 2, "max_seq_len": 96, **kw})


def _losses(out, key="loss"):
    return [r[key] for r in json.loads((out / "training_log.json").read_text()) if key in r]


def test_padding_free_batches_give_the_padded_loss_on_the_reply_tokens_only(tiny_llama_dir, tmp_path):
    """One row of concatenated examples (position ids restart per example) scores exactly what padded rows score,
    and that is the mean NLL of the customer-reply tokens, computed here by hand from the plain model's logits
    (so the per-example attention of padding-free rows on CPU attends exactly as the causal mask does)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    rows = [encode_example(e, tokenizer, 96) for e in TRAIN[:4]]
    losses = {}
    for padding_free in (True, False):
        trainer = make_trainer(tiny_llama_dir, rows, None, _tiny_cfg(tiny_llama_dir, padding_free=padding_free),
                               seed=0, work_dir=tmp_path / str(padding_free))
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        assert ("attention_mask" not in batch) == padding_free and batch["input_ids"].shape[0] == (1 if padding_free else 4)
        # On CPU a padding-free row attends within each example only, one sdpa call per example (no mask).
        assert (trainer.model.config._attn_implementation == PACKED_SDPA) == padding_free
        with torch.no_grad():
            losses[padding_free] = trainer.compute_loss(trainer.model, batch).item()

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)  # LoRA starts as the identity: same outputs
    nll, count = 0.0, 0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1)
        for t in range(1, len(row["input_ids"])):
            if row["completion_mask"][t]:
                nll -= logp[t - 1, row["input_ids"][t]].item()
                count += 1
    assert count == sum(sum(r["completion_mask"]) for r in rows)
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert losses[True] == pytest.approx(nll / count, rel=1e-5)


def test_resume_after_a_stop_continues_from_the_last_checkpoint(tiny_llama_dir, tiny_data, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    import calltune.training.lora as tune

    cfg = _tiny_cfg(tiny_llama_dir)
    train_lora(tiny_data, None, tmp_path / "straight", cfg, seed=3, state_dir=tmp_path / "s1")

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise KeyboardInterrupt  # the machine goes away after the checkpoint at step 4

    shared = tune.callbacks
    monkeypatch.setattr(tune, "callbacks", lambda *a: shared(*a) + [Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny_data, None, tmp_path / "resumed", cfg, seed=3, state_dir=tmp_path / "s2")
    assert not (tmp_path / "resumed" / MODEL_CARD).exists()
    saved = sorted(p.name for p in (tmp_path / "s2" / "checkpoints").glob("*/checkpoint-*"))
    assert saved == ["checkpoint-2", "checkpoint-4"]
    monkeypatch.setattr(tune, "callbacks", shared)

    card = train_lora(tiny_data, None, tmp_path / "resumed", cfg, seed=3, state_dir=tmp_path / "s2")
    assert card["resumed"] and card["steps"] == 8
    log = json.loads((tmp_path / "resumed" / "training_log.json").read_text())
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))  # steps 1-4 from the checkpoint, 5-8 now
    # Optimizer, scheduler, RNG and data order were restored: the same run as one without the stop.
    assert _losses(tmp_path / "resumed") == pytest.approx(_losses(tmp_path / "straight"), rel=1e-4)
    assert not list((tmp_path / "s2" / "checkpoints").glob("*/checkpoint-*"))  # done: nothing left to resume

    other = train_lora(tiny_data, None, tmp_path / "fresh", cfg.model_copy(update={"learning_rate": 5e-3}), seed=3,
                       state_dir=tmp_path / "s2")
    assert not other["resumed"]  # another config never picks up these checkpoints


def test_validation_early_stopping_keeps_the_best_checkpoint(tiny_llama_dir, tiny_data, tmp_path):
    # A far too high learning rate: validation loss gets worse after the first evaluations, and training stops.
    cfg = _tiny_cfg(tiny_llama_dir, learning_rate=3.0, max_steps=40, eval_steps=1, early_stopping_patience=2)
    card = train_lora(tiny_data, tiny_data, tmp_path / "out", cfg, seed=0, state_dir=tmp_path / "state")
    evals = _losses(tmp_path / "out", "eval_loss")
    assert card["stopped_early"] and card["steps"] < 40
    assert len(evals) == card["steps"]  # one validation a step; the kept model's is not run again at the end
    best = min(evals)
    assert card["best_checkpoint_step"] < card["steps"]
    assert card["validation_loss"] == pytest.approx(best, rel=1e-5)  # the folder holds the best, not the last


def test_eval_steps_0_validates_once_after_training_and_keeps_the_last_weights(tiny_llama_dir, tiny_data, tmp_path):
    import torch

    from calltune.runtime.encoding import encode_file, encoder
    from calltune.runtime.loading import load_model
    from calltune.runtime.scoring import score

    cfg = _tiny_cfg(tiny_llama_dir, learning_rate=3.0, max_steps=6, eval_steps=0)  # loss worsens: no "best" to keep
    card = train_lora(tiny_data, tiny_data, tmp_path / "out", cfg, seed=0, state_dir=tmp_path / "state")
    evals = [r for r in json.loads((tmp_path / "out" / "training_log.json").read_text()) if "eval_loss" in r]
    assert len(evals) == 1 and evals[0]["step"] == card["steps"] == 6 and card["best_checkpoint_step"] is None
    # the validation figures are the saved (last) weights', scored here again
    model, tokenizer = load_model(tmp_path / "out")
    rows = encode_file(tiny_data, tokenizer, cfg.max_seq_len, encode=encoder(False))[0]
    with torch.no_grad():
        parts = score(model, tokenizer, rows, 4)
    assert card["validation_loss"] == pytest.approx(sum(parts["nll"]) / sum(parts["tokens"]), rel=1e-3)
    with pytest.raises(ValueError, match="early_stopping_patience needs validations"):
        TuneConfig(eval_steps=0, early_stopping_patience=2)


def test_dora_tensorboard_and_merged_weights(tiny_llama_dir, tiny_data, tmp_path):
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    from calltune.runtime.loading import load_model

    cfg = _tiny_cfg(tiny_llama_dir, use_dora=True, merge=True, target_modules=["all-linear"])
    card = train_lora(tiny_data, tiny_data, tmp_path / "out", cfg, seed=0, state_dir=tmp_path / "state")
    out = tmp_path / "out"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["use_dora"] and card["config"]["use_dora"]

    events = EventAccumulator(str(next((out / "tensorboard").rglob("events.out.tfevents.*")).parent)).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate"} <= scalars
    assert len(events.Scalars("train/loss")) == len(_losses(out))

    assert not list((out / "merged").glob("adapter_*")) and list((out / "merged").glob("*.safetensors"))
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", use_safetensors=True).eval()
    tuned, tokenizer = load_model(out)
    ids = torch.tensor([encode_example(TRAIN[0], tokenizer, 96)["input_ids"]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)(ids).logits
        assert torch.allclose(merged(ids).logits, tuned(ids).logits, atol=1e-4)
        assert not torch.allclose(base, tuned(ids).logits, atol=1e-3)  # the adapter changed something


def test_target_modules_that_match_nothing_are_an_error(tiny_llama_dir, tiny_data, tmp_path):
    cfg = _tiny_cfg(tiny_llama_dir, target_modules=["wi", "wo"])  # T5 names on a Llama
    with pytest.raises(ValueError, match=r"match no layer.*q_proj.*all-linear"):
        train_lora(tiny_data, None, tmp_path / "out", cfg, seed=0, state_dir=tmp_path / "state")


def test_data_parallel_processes_train_one_model(tiny_llama_dir, tiny_data, tmp_path):
    """Two gloo workers stand in for two GPUs: each sees half of every step's examples, rank 0 writes the folder."""
    cfg = _tiny_cfg(tiny_llama_dir, processes=2, batch_size=2)
    card = train_lora(tiny_data, tiny_data, tmp_path / "out", cfg, seed=0, state_dir=tmp_path / "state")
    single = train_lora(tiny_data, tiny_data, tmp_path / "one", cfg.model_copy(update={"processes": 1,
                                                                                      "batch_size": 4}),
                        seed=0, state_dir=tmp_path / "state")
    assert card["processes"] == 2 and card["steps"] == 8 and card["epochs"] == single["epochs"]
    losses = _losses(tmp_path / "out")
    assert losses[-1] < losses[0]
    assert json.loads((tmp_path / "out" / MODEL_CARD).read_text()) == json.loads(json.dumps(card))


@pytest.mark.slow
def test_compiled_model_trains_the_same(tiny_llama_dir, tiny_data, tmp_path):
    """tune.compile=on (the CUDA default) on CPU inductor: the same losses as eager, step by step."""
    cfg = _tiny_cfg(tiny_llama_dir)
    train_lora(tiny_data, None, tmp_path / "eager", cfg, seed=0, state_dir=tmp_path / "s")
    train_lora(tiny_data, None, tmp_path / "compiled", cfg.model_copy(update={"compile": "on"}), seed=0,
               state_dir=tmp_path / "s")
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-4)


def test_the_run_log_shows_one_readable_line_per_trainer_log_record():
    from calltune.training.settings import progress_line

    step = {"loss": 3.5281, "grad_norm": 1.8031, "learning_rate": 0.0009273, "epoch": 0.2586}
    assert progress_line(step, 15, 116) == "step 15/116, epoch 0.26: loss 3.528, grad norm 1.803, learning rate 0.0009273"
    validation = {"eval_loss": 3.186, "eval_token_accuracy": 0.41234, "eval_runtime": 12.3,
                  "eval_samples_per_second": 5.1, "epoch": 2.0}
    assert progress_line(validation, 116, 116) == "validation at step 116/116, epoch 2.00: loss 3.186, token accuracy 0.4123"
    end = {"train_runtime": 412.4, "train_samples_per_second": 1.1, "train_loss": 3.2512, "total_flos": 1e12, "epoch": 2.0}
    assert progress_line(end, 116, 116) == "trained: 116 steps in 412 s, mean loss 3.251"
    assert "{" not in progress_line({"loss": 2.0, "custom_metric": 7}, 1, 2)  # any other figure, named in words
