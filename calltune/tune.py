"""Local tuning: LoRA SFT of the base model (TRL SFTTrainer + peft) on the customer replies only.

`encode_example` is the one definition of the "target tokens" (the customer reply and its end-of-turn
token); evaluation uses it too, so training loss and the gate metric count the same tokens.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from calltune.config import TuneConfig
from calltune.io import file_sha256, read_jsonl, write_json
from calltune.models import MODEL_CARD, device, resolve_base_model, set_threads, weights_sha256
from calltune.render import to_messages
from calltune.report import loss_curve_png
from calltune.schema import Example

log = logging.getLogger(__name__)

PERSONAS_KEPT = 200  # distinct system instructions recorded in the model card


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


def encode_file(path: str | Path, tokenizer, max_len: int, limit: int = 0,
                encode=encode_example) -> tuple[list[dict], list[Example], int]:
    """Encoded rows, the examples they came from, and how many examples were skipped (target too long)."""
    rows, examples, skipped = [], [], 0
    for example in read_jsonl(path):
        if limit and len(rows) >= limit:
            break
        try:
            encoded = encode(example, tokenizer, max_len)
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


def reply_logits(model, input_ids, attention_mask, target_mask, position_ids=None):
    """(logits, tokens) at the target tokens: position t-1 predicts token t. Only positions that predict a target in
    some row go through the LM head (`logits_to_keep`); with a 49k vocabulary, projecting every position costs a
    third of a CPU training step. Called through the model's own forward, so a DDP wrapper syncs the gradients.
    Padding-free batches (one row of concatenated examples) pass `position_ids` and no attention mask."""
    predicts = target_mask[:, 1:]
    keep = predicts.any(0).nonzero().flatten()
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=keep, use_cache=False).logits
    chosen = predicts[:, keep]
    return logits[chosen].float(), input_ids[:, 1:][:, keep][chosen]


@functools.cache
def _trainer_class(cuda: bool):
    """On CUDA, TRL's own loss: its Triton fused LM head projects only the label positions, in tiles, so the
    full-vocabulary logits never exist. Its CPU fallback projects every position; there `reply_logits` computes the
    same loss (mean NLL of the label tokens) on the label positions only."""
    import torch
    from trl import SFTTrainer

    if cuda:
        return SFTTrainer

    class ReplyLossTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits, gold = reply_logits(model, inputs["input_ids"], inputs.get("attention_mask"),
                                        inputs["labels"] != -100, inputs.get("position_ids"))
            count = num_items_in_batch if num_items_in_batch is not None else max(len(gold), 1)
            loss = torch.nn.functional.cross_entropy(logits, gold, reduction="sum") / count
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count spans every rank
            accuracy = (logits.argmax(-1) == gold).float().mean().item() if len(gold) else 0.0
            self._metrics["train" if model.training else "eval"]["mean_token_accuracy"].append(accuracy)
            return (loss, {"logits": logits}) if return_outputs else loss

    return ReplyLossTrainer


def lora_config(cfg: TuneConfig, base_path: Path, task_type: str):
    """The peft LoraConfig from the config. Target modules that match no layer of the base model are an error (a
    Llama-style default on a T5 base would otherwise fail deep in peft); the names are read from the safetensors
    index, without loading the weights."""
    from peft import LoraConfig
    from safetensors import safe_open

    targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
    if targets != "all-linear":
        layers = set()
        for f in Path(base_path).glob("*.safetensors"):
            with safe_open(f, "pt") as fh:
                layers |= {k.rsplit(".", 2)[-2] for k in fh.keys() if k.endswith(".weight") and k.count(".") >= 1}
        if not layers.intersection(targets):
            raise ValueError(f"tune.target_modules {targets} match no layer of the base model {base_path}; its "
                             f"layers are {sorted(layers)} (or use tune.target_modules=[all-linear])")
        if missing := sorted(set(targets) - layers):
            log.warning("tune.target_modules %s are not in the base model; LoRA goes on the others", missing)
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                      use_dora=cfg.use_dora, task_type=task_type)


def compile_enabled(cfg: TuneConfig, cuda: bool) -> bool:
    return cfg.compile == "on" or (cfg.compile == "auto" and cuda)


def training_args(cfg: TuneConfig, work_dir: Path, *, seed: int, has_eval: bool, cuda: bool) -> dict:
    """Trainer arguments shared by the causal and the seq2seq (calltune.seq2seq) tuner. Checkpoints go to `work_dir` every
    `eval_steps` (for resume and for keeping the best by validation loss); TensorBoard events to work_dir/runs."""
    args = dict(
        output_dir=str(work_dir),
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
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_total_limit=2,  # the last and, with validation, the best
        report_to=["tensorboard"],
        bf16=cuda,  # on CPU fp32 is faster and exact
        use_cpu=not cuda,  # also makes CPU workers (tests) join one gloo process group
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        torch_compile=compile_enabled(cfg, cuda),
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=False,  # LoRA: every trainable parameter is used in every step
        disable_tqdm=False,
    )
    if has_eval:
        args.update(eval_strategy="steps", eval_steps=cfg.eval_steps, load_best_model_at_end=True,
                    metric_for_best_model="eval_loss", greater_is_better=False)
    return args


def callbacks(cfg: TuneConfig, has_eval: bool) -> list:
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(cfg.early_stopping_patience)] if has_eval and cfg.early_stopping_patience else []


def make_trainer(base_path: Path, train_rows: list[dict], eval_rows: list[dict] | None, cfg: TuneConfig,
                 *, seed: int, work_dir: Path):
    """The SFTTrainer over pre-encoded rows; TRL turns `completion_mask` into the labels (-100 elsewhere)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig

    set_seed(seed)
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if cfg.attention == "flex_attention" and not cuda:
        raise ValueError("tune.attention=flex_attention needs a CUDA GPU (PyTorch has no flex attention backward "
                         "on CPU); use sdpa")
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation=cfg.attention, use_safetensors=True,
                                                 trust_remote_code=False)
    liger = cuda and importlib.util.find_spec("liger_kernel") is not None  # the trainer image's `gpu` extra
    args = SFTConfig(
        **training_args(cfg, work_dir, seed=seed, has_eval=bool(eval_rows), cuda=cuda),
        activation_checkpointing=False,  # TRL turns it on; recomputing costs ~30% more time, and LoRA fits
        completion_only_loss=True,
        padding_free=cfg.padding_free,
        max_length=None if cfg.padding_free else cfg.max_seq_len,  # rows are already cut to max_seq_len
        use_liger_kernel=liger,
    )
    return _trainer_class(cuda)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, base_path, "CAUSAL_LM"),
        callbacks=callbacks(cfg, bool(eval_rows)),
    )


def checkpoint_dir(state_dir: Path, cfg: TuneConfig, base_sha: str, train_path, validation_path, seed: int) -> Path:
    """Where this run's checkpoints live: one folder per (data, base weights, config, seed), so only the same run
    resumes from them."""
    key = json.dumps([file_sha256(train_path), validation_path and file_sha256(validation_path), base_sha, cfg.model_dump(), seed],
                     sort_keys=True)
    return Path(state_dir).expanduser() / "checkpoints" / hashlib.sha256(key.encode()).hexdigest()[:16]


def train_lora(train_path: str | Path, validation_path: str | Path | None, out_dir: str | Path, cfg: TuneConfig,
               *, seed: int, state_dir: Path) -> dict:
    """Tune, and write the model folder (the KFP Model artifact): adapter, tokenizer, calltune_model.json,
    training_log.json, loss_curve.png, tensorboard/ (and merged/ with `cfg.merge`). Returns the report (the
    content of calltune_model.json). With several GPUs (or `cfg.processes` > 1) the work is spread over one
    data-parallel process per device; rank 0 writes the folder."""
    processes = cfg.processes or _gpu_count() or 1
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(processes, train_path, validation_path, out_dir, cfg, seed, state_dir)
    return _train(train_path, validation_path, out_dir, cfg, seed=seed, state_dir=state_dir)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def _launch(processes: int, train_path, validation_path, out_dir, cfg: TuneConfig, seed: int, state_dir) -> dict:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    log.info("data-parallel tuning on %d processes", processes)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=f"calltune-{os.getpid()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=1)
    results = elastic_launch(config, _worker)(str(train_path), validation_path and str(validation_path), str(out_dir),
                                              cfg.model_dump(), seed, str(state_dir))
    return results[0]


def _worker(train_path, validation_path, out_dir, cfg: dict, seed: int, state_dir: str) -> dict | None:
    import torch

    if not torch.cuda.is_available():  # CPU workers share the cores
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ["LOCAL_WORLD_SIZE"])))
    return _train(train_path, validation_path, out_dir, TuneConfig(**cfg), seed=seed, state_dir=Path(state_dir))


def _train(train_path, validation_path, out_dir, cfg: TuneConfig, *, seed: int, state_dir: Path) -> dict | None:
    from transformers import AutoTokenizer

    from calltune import seq2seq

    if "WORLD_SIZE" not in os.environ:
        set_threads()
    out_dir = Path(out_dir)
    base_path = resolve_base_model(cfg.base_model, state_dir)
    encoder_decoder = seq2seq.is_encoder_decoder(base_path)
    encode = seq2seq.encode_example if encoder_decoder else encode_example
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    train_rows, train_examples, train_skipped = encode_file(train_path, tokenizer, cfg.max_seq_len, encode=encode)
    if not train_rows:
        raise ValueError(f"{train_path}: no training example fits max_seq_len={cfg.max_seq_len} "
                         f"({train_skipped} skipped)")
    eval_rows = (encode_file(validation_path, tokenizer, cfg.max_seq_len, encode=encode)[0]
                 if validation_path else [])
    base_sha = weights_sha256(base_path)
    work = checkpoint_dir(state_dir, cfg, base_sha, train_path, validation_path, seed)
    resume = cfg.resume and any(work.glob("checkpoint-*"))
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    log.info("tuning %s on %d examples (%d skipped, %d validation) on %s%s", cfg.base_model, len(train_rows),
             train_skipped, len(eval_rows), device(), f", resuming from {work}" if resume else "")

    maker = seq2seq.make_trainer if encoder_decoder else make_trainer
    trainer = maker(base_path, train_rows, eval_rows, cfg, seed=seed, work_dir=work)
    result = trainer.train(resume_from_checkpoint=resume or None)
    validation = trainer.evaluate() if eval_rows else {}
    if not trainer.is_world_process_zero():
        return None

    out_dir.mkdir(parents=True, exist_ok=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if cfg.merge:
        model.merge_and_unload().save_pretrained(out_dir / "merged", safe_serialization=True)
        tokenizer.save_pretrained(out_dir / "merged")
    if (work / "runs").is_dir():
        shutil.copytree(work / "runs", out_dir / "tensorboard", dirs_exist_ok=True)
    history = trainer.state.log_history
    write_json(out_dir / "training_log.json", history)
    loss_curve_png(history, out_dir / "loss_curve.png")
    train_losses = [r["loss"] for r in history if "loss" in r]
    systems = collections.Counter(e["system"] for e in train_examples)
    card = {
        "base_model": cfg.base_model,
        "base_model_path": str(base_path),
        "base_sha256": base_sha,
        "architecture": "encoder-decoder" if encoder_decoder else "causal",
        "adapter_sha256": weights_sha256(out_dir),
        "seed": seed,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "resumed": resume,
        "stopped_early": bool(trainer.state.max_steps and trainer.state.global_step < trainer.state.max_steps),
        "best_checkpoint_step": _step_of(trainer.state.best_model_checkpoint),
        "processes": trainer.args.world_size,
        "train_examples": len(train_rows),
        "train_skipped": train_skipped,
        "train_tokens": sum(len(r["input_ids"]) for r in train_rows),
        "train_target_tokens": sum(_target_count(r) for r in train_rows),
        "validation_examples": len(eval_rows),
        "final_train_loss": train_losses[-1] if train_losses else result.training_loss,
        "mean_train_loss": result.training_loss,
        "validation_loss": validation.get("eval_loss"),
        "validation_token_accuracy": validation.get("eval_mean_token_accuracy"),
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
        "device": device(),
        "system_prompt": systems.most_common(1)[0][0],  # the chat's default persona
        # The practice page's customers: each system instruction trained on, exactly as rendered, most used first.
        "personas": [{"system": s, "examples": n} for s, n in systems.most_common(PERSONAS_KEPT)],
        "config": cfg.model_dump(),
    }
    write_json(out_dir / MODEL_CARD, card)  # written last: its presence marks a complete model folder
    shutil.rmtree(work, ignore_errors=True)  # finished: nothing left to resume
    log.info("tuned: %d steps, final train loss %.4f, validation loss %s",
             card["steps"], card["final_train_loss"], card["validation_loss"])
    return card


def _target_count(row: dict) -> int:
    return sum(row["completion_mask"]) if "completion_mask" in row else sum(t != -100 for t in row["labels"])


def _step_of(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None
