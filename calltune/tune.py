"""Local tuning: LoRA SFT of the base model (TRL SFTTrainer + peft) on the customer replies only.

`encode_example` is the one definition of the "target tokens" (the customer reply and its end-of-turn
token); evaluation uses it too, so training loss and the gate metric count the same tokens.
"""
from __future__ import annotations

import collections
import functools
import logging
import tempfile
from pathlib import Path

from calltune.config import TuneConfig
from calltune.io import read_jsonl, write_json
from calltune.models import MODEL_CARD, device, resolve_base_model, set_threads, weights_sha256
from calltune.render import to_messages
from calltune.report import loss_curve_png
from calltune.schema import Example

log = logging.getLogger(__name__)


def _chat_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]


def _prompt_and_target(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    prompt = _chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    full = _chat_ids(tokenizer, messages)
    if full[:len(prompt)] != prompt:
        raise ValueError("the chat template renders the prompt differently on its own than before the reply; "
                         "the reply's tokens cannot be located")
    target = full[len(prompt):]
    # What the template writes after the end-of-turn token (ChatML: a newline) is layout, not the reply.
    eos = tokenizer.eos_token_id
    if eos in target:
        target = target[:len(target) - target[::-1].index(eos)]
    return prompt, target


def encode_example(example: Example, tokenizer, max_len: int) -> dict | None:
    """{"input_ids", "completion_mask"} with the mask 1 exactly on the target tokens, rendered with the chat
    template. Too long: the oldest history turns go first, then prompt tokens from the left; the target is
    never cut. None when the target alone does not fit (with at least one prompt token before it)."""
    messages = to_messages(example)["messages"]
    system = messages[:1] if messages[0]["role"] == "system" else []
    dialogue = messages[len(system):]  # history..., seller prompt, customer target
    for start in range(len(dialogue) - 1):
        prompt, target = _prompt_and_target(tokenizer, system + dialogue[start:])
        if len(prompt) + len(target) <= max_len:
            break
    room = max_len - len(target)
    if room < 1 or not target:
        return None
    prompt = prompt[-room:]
    return {"input_ids": prompt + target, "completion_mask": [0] * len(prompt) + [1] * len(target)}


def encode_file(path: str | Path, tokenizer, max_len: int, limit: int = 0) -> tuple[list[dict], list[Example], int]:
    """Encoded rows, the examples they came from, and how many examples were skipped (target too long)."""
    rows, examples, skipped = [], [], 0
    for example in read_jsonl(path):
        if limit and len(rows) >= limit:
            break
        try:
            encoded = encode_example(example, tokenizer, max_len)
        except KeyError as exc:
            raise ValueError(f"{path}: example {example.get('example_id', len(rows) + skipped + 1)!r} "
                             f"has a missing or invalid field ({exc})") from exc
        if encoded is None:
            skipped += 1
            log.warning("%s: example %s skipped: its customer reply alone exceeds max_seq_len=%d",
                        path, example.get("example_id"), max_len)
            continue
        rows.append(encoded)
        examples.append(example)
    return rows, examples, skipped


def reply_logits(model, input_ids, attention_mask, target_mask):
    """(logits, tokens) at the target tokens: position t-1 predicts token t. Only those positions go through
    the LM head; with a 49k vocabulary, projecting every position costs a third of a CPU training step."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model
    hidden = inner.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    predicts = target_mask[:, 1:]
    logits = inner.get_output_embeddings()(hidden[:, :-1][predicts]).float()
    return logits, input_ids[:, 1:][predicts]


@functools.cache
def _trainer_class():
    import torch
    from trl import SFTTrainer

    class ReplyLossTrainer(SFTTrainer):
        """TRL's fused LM head projects only the loss positions on GPUs (Triton) but every position on CPU;
        this loss is the same (mean NLL of the label tokens) through `reply_logits` on any device."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits, gold = reply_logits(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"] != -100)
            count = num_items_in_batch if num_items_in_batch is not None else max(len(gold), 1)
            loss = torch.nn.functional.cross_entropy(logits, gold, reduction="sum") / count
            accuracy = (logits.argmax(-1) == gold).float().mean().item() if len(gold) else 0.0
            self._metrics["train" if model.training else "eval"]["mean_token_accuracy"].append(accuracy)
            return (loss, {"logits": logits}) if return_outputs else loss

    return ReplyLossTrainer


def make_trainer(base_path: Path, train_rows: list[dict], eval_rows: list[dict] | None, cfg: TuneConfig,
                 *, seed: int, work_dir: Path):
    """The SFTTrainer over pre-encoded rows; TRL turns `completion_mask` into the labels (-100 elsewhere)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig

    set_seed(seed)
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True,
                                                 trust_remote_code=False)
    args = SFTConfig(
        output_dir=str(work_dir),  # never the artifact folder: nothing is saved there by the trainer
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0.05,  # a float below 1 is a share of the total steps
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        logging_steps=0.025,
        bf16=cuda,  # TRL's default is bf16 everywhere; on CPU fp32 is faster and exact
        activation_checkpointing=False,  # TRL turns it on; a 135M model fits, and recomputing costs ~30% more time
        completion_only_loss=True,
        max_length=cfg.max_seq_len,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        disable_tqdm=False,
    )
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    return _trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def train_lora(train_path: str | Path, validation_path: str | Path | None, out_dir: str | Path, cfg: TuneConfig,
               *, seed: int, state_dir: Path) -> dict:
    """Tune, and write the model folder (the KFP Model artifact): adapter, tokenizer, calltune_model.json,
    training_log.json, loss_curve.png. Returns the report (the content of calltune_model.json)."""
    from transformers import AutoTokenizer

    set_threads()
    out_dir = Path(out_dir)
    base_path = resolve_base_model(cfg.base_model, state_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    train_rows, train_examples, train_skipped = encode_file(train_path, tokenizer, cfg.max_seq_len)
    if not train_rows:
        raise ValueError(f"{train_path}: no training example fits max_seq_len={cfg.max_seq_len} "
                         f"({train_skipped} skipped)")
    eval_rows = encode_file(validation_path, tokenizer, cfg.max_seq_len)[0] if validation_path else []
    log.info("tuning %s on %d examples (%d skipped, %d validation) on %s",
             cfg.base_model, len(train_rows), train_skipped, len(eval_rows), device())

    with tempfile.TemporaryDirectory(prefix="calltune-tune-") as work:
        trainer = make_trainer(base_path, train_rows, eval_rows, cfg, seed=seed, work_dir=Path(work))
        result = trainer.train()
        validation = trainer.evaluate() if eval_rows else {}
        out_dir.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)

    history = trainer.state.log_history
    write_json(out_dir / "training_log.json", history)
    loss_curve_png(history, out_dir / "loss_curve.png")
    train_losses = [r["loss"] for r in history if "loss" in r]
    systems = collections.Counter(e["system"] for e in train_examples)
    card = {
        "base_model": cfg.base_model,
        "base_model_path": str(base_path),
        "base_sha256": weights_sha256(base_path),
        "adapter_sha256": weights_sha256(out_dir),
        "seed": seed,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "train_examples": len(train_rows),
        "train_skipped": train_skipped,
        "train_tokens": sum(len(r["input_ids"]) for r in train_rows),
        "train_target_tokens": sum(sum(r["completion_mask"]) for r in train_rows),
        "validation_examples": len(eval_rows),
        "final_train_loss": train_losses[-1] if train_losses else result.training_loss,
        "mean_train_loss": result.training_loss,
        "validation_loss": validation.get("eval_loss"),
        "validation_token_accuracy": validation.get("eval_mean_token_accuracy"),
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
        "device": device(),
        "system_prompt": systems.most_common(1)[0][0],  # the chat's default persona
        "config": cfg.model_dump(),
    }
    write_json(out_dir / MODEL_CARD, card)  # written last: its presence marks a complete model folder
    log.info("tuned: %d steps, final train loss %.4f, validation loss %s",
             card["steps"], card["final_train_loss"], card["validation_loss"])
    return card
