"""Local tuning: LoRA SFT of the base model (TRL SFTTrainer + peft) on the customer replies only.

The rows come from `calltune.runtime.encoding`, the one definition of the "target tokens" (the customer reply and
its end-of-turn token); evaluation uses it too, so training loss and the gate metric count the same tokens.
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
from typing import NamedTuple

from calltune.config import SplitConfig, TuneConfig
from calltune.core.figures import loss_curve_png
from calltune.core.io import file_sha256, write_json
from calltune.runtime.encoding import encode_file, encoder
from calltune.runtime.loading import (
    MODEL_CARD,
    device,
    is_encoder_decoder,
    resolve_base_model,
    set_threads,
    weights_sha256,
)
from calltune.runtime.scoring import reply_logits
from calltune.training.settings import callbacks, lora_config, readable_progress, training_args

log = logging.getLogger(__name__)

PERSONAS_KEPT = 200  # distinct system instructions recorded in the model card


@functools.cache
def _trainer_class(cuda: bool):
    """On CUDA, TRL's own loss: its Triton fused LM head projects only the label positions, in tiles, so the
    full-vocabulary logits never exist. Its CPU fallback projects every position; there `reply_logits` computes the
    same loss (mean NLL of the label tokens) on the label positions only (benchmarks/reply_loss.py)."""
    import torch
    from transformers.modeling_outputs import CausalLMOutput
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
            return (loss, CausalLMOutput(loss=loss, logits=logits)) if return_outputs else loss

    return ReplyLossTrainer


PACKED_SDPA = "calltune_packed_sdpa"


@functools.cache
def _register_packed_sdpa() -> str:
    """Registers, once, the attention of padding-free rows on CPU: sdpa on each example of the row alone, causal and
    without a mask. As one long sequence with a block-diagonal mask, CPU sdpa also computes every block between
    the examples (at batch 4, ~40% of its attention time); flex_attention, which skips them, has no CPU backward."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, position_ids=None,
                    **kwargs):
        if position_ids is None or query.shape[0] != 1 or key.shape[2] != query.shape[2] or position_ids[0, 0]:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)  # not a packed row read from its start
        starts = [*(position_ids[0] == 0).nonzero().flatten().tolist(), query.shape[2]]
        out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout if module.training else 0.0,
            scale=scaling, is_causal=True, enable_gqa=True) for a, b in zip(starts, starts[1:])], dim=2)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)  # what the fallback above gets
    return PACKED_SDPA


def _reply_hits(logits, labels):
    """`preprocess_logits_for_metrics` of ReplyLossTrainer, whose logits are the label tokens' only, in the order of
    `labels[:, 1:]`'s label positions: per row, (top-1 hits, label tokens). One row per example keeps the shape
    that data-parallel ranks gather the same on every rank."""
    import torch

    labelled = labels[:, 1:] != -100
    hits = (logits.argmax(-1) == labels[:, 1:][labelled]).float()
    per_row = torch.zeros(len(labels), device=hits.device).index_add_(0, labelled.nonzero()[:, 0], hits)
    return torch.stack([per_row, labelled.sum(1).float()], 1)


def _token_accuracy(prediction) -> dict:
    hits, tokens = prediction.predictions.sum(0)
    return {"mean_token_accuracy": float(hits / tokens) if tokens else 0.0}


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
    attention = _register_packed_sdpa() if cfg.attention == "sdpa" and cfg.padding_free and not cuda else cfg.attention
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation=attention, use_safetensors=True,
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
    # On CPU, validation token accuracy comes through Trainer's public metric hooks (TRL's own needs its loss).
    metrics = {} if cuda else {"compute_metrics": _token_accuracy, "preprocess_logits_for_metrics": _reply_hits}
    return _trainer_class(cuda)(
        **metrics,
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
               *, seed: int, state_dir: Path, split: SplitConfig | None = None, system_prompt: str = "") -> dict:
    """Tune, and write the model folder (the KFP Model artifact): adapter, tokenizer, calltune_model.json,
    training_log.json, loss_curve.png, tensorboard/ (and merged/ with `cfg.merge`). Returns the report (the
    content of calltune_model.json). With several GPUs (or `cfg.processes` > 1) the work is spread over one
    data-parallel process per device; rank 0 writes the folder. `split` (how the examples were windowed) and
    `system_prompt` (their system instructions' template) go into the card for serving."""
    serving = {"split": split.model_dump() if split else None, "system_prompt_template": system_prompt}
    processes = cfg.processes or _gpu_count() or 1
    cluster = vertex_cluster(os.environ)
    # TORCHELASTIC_RUN_ID marks a launched worker (Vertex may set WORLD_SIZE on the machine itself)
    launched = "TORCHELASTIC_RUN_ID" in os.environ or ("WORLD_SIZE" in os.environ and cluster is None)
    if (processes > 1 or cluster) and not launched:
        report = _launch(processes, train_path, validation_path, out_dir, cfg, seed, state_dir, serving, cluster)
        if cluster and cluster.node_rank > 0:
            log.info("node %d of %d done; node 0 writes the model and the step's outputs", cluster.node_rank,
                     cluster.nodes)
            raise SystemExit(0)  # before the KFP executor writes outputs: only the chief's count
        return report
    return _train(train_path, validation_path, out_dir, cfg, seed=seed, state_dir=state_dir, serving=serving)


class Cluster(NamedTuple):
    nodes: int
    node_rank: int
    rendezvous: str  # host:port of node 0, where torch elastic's c10d rendezvous listens


def vertex_cluster(environ) -> Cluster | None:
    """The machines of a Vertex AI CustomJob with several replicas, from the CLUSTER_SPEC Vertex sets on each:
    {"cluster": {"workerpool0": ["host:port"], "workerpool1": [...]}, "task": {"type": "workerpool1", "index": 0}}.
    Training runs on workerpool0 (the chief, node 0) and workerpool1 (the others, in order); None on one machine."""
    raw = environ.get("CLUSTER_SPEC")
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        pools, task = spec["cluster"], spec["task"]
        hosts = [*pools["workerpool0"], *pools.get("workerpool1", [])]
        this = pools[task["type"]][int(task["index"])]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"CLUSTER_SPEC is not Vertex AI's cluster description ({type(exc).__name__}: {exc}): "
                         f"{raw[:200]}") from None
    if len(hosts) < 2:
        return None
    if this not in hosts:
        raise ValueError(f"CLUSTER_SPEC: this replica ({task['type']}[{task['index']}]) is not a training worker "
                         f"(only workerpool0 and workerpool1 train)")
    return Cluster(len(hosts), hosts.index(this), hosts[0])


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def launch_config(processes: int, cluster: Cluster | None):
    """torch elastic's settings: one machine (a free local port), or every machine of a Vertex cluster meeting at
    node 0 (the same run id on all of them)."""
    from torch.distributed.launcher.api import LaunchConfig

    if cluster is None:
        return LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=f"calltune-{os.getpid()}",
                            rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=1)
    return LaunchConfig(min_nodes=cluster.nodes, max_nodes=cluster.nodes, nproc_per_node=processes,
                        run_id=f"calltune-{cluster.rendezvous}", rdzv_backend="c10d", rdzv_endpoint=cluster.rendezvous,
                        rdzv_configs={"is_host": cluster.node_rank == 0, "join_timeout": 900}, max_restarts=0,
                        monitor_interval=1)


def _launch(processes: int, train_path, validation_path, out_dir, cfg: TuneConfig, seed: int, state_dir,
            serving: dict, cluster: Cluster | None = None) -> dict:
    from torch.distributed.launcher.api import elastic_launch

    log.info("data-parallel tuning on %d processes%s", processes,
             f" on each of {cluster.nodes} machines (this is node {cluster.node_rank})" if cluster else "")
    config = launch_config(processes, cluster)
    results = elastic_launch(config, _worker)(str(train_path), validation_path and str(validation_path), str(out_dir),
                                              cfg.model_dump(), seed, str(state_dir), serving)
    return results[0]


def _worker(train_path, validation_path, out_dir, cfg: dict, seed: int, state_dir: str, serving: dict) -> dict | None:
    import torch

    if not torch.cuda.is_available():  # CPU workers share the cores
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ["LOCAL_WORLD_SIZE"])))
    return _train(train_path, validation_path, out_dir, TuneConfig(**cfg), seed=seed, state_dir=Path(state_dir),
                  serving=serving)


def _train(train_path, validation_path, out_dir, cfg: TuneConfig, *, seed: int, state_dir: Path,
           serving: dict) -> dict | None:
    from transformers import AutoTokenizer

    from calltune.training import seq2seq

    if "WORLD_SIZE" not in os.environ:
        set_threads()
    out_dir = Path(out_dir)
    base_path = resolve_base_model(cfg.base_model, state_dir)
    encoder_decoder = is_encoder_decoder(base_path)
    encode = encoder(encoder_decoder)
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
    readable_progress(trainer)
    result = trainer.train(resume_from_checkpoint=resume or None)
    validation = _kept_validation(trainer) if eval_rows else {}
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
        # What serving needs to build the context training saw (calltune.runtime): the window, the persona
        # template, the end-of-turn token that ends a reply.
        **({"split": serving["split"]} if serving["split"] else {}),
        "system_prompt_template": serving["system_prompt_template"],
        "end_of_turn_token": tokenizer.eos_token,
        "guardrails": guardrails_card(train_examples),
        "config": cfg.model_dump(),
    }
    write_json(out_dir / MODEL_CARD, card)  # written last: its presence marks a complete model folder
    shutil.rmtree(work, ignore_errors=True)  # finished: nothing left to resume
    log.info("tuned: %d steps, final train loss %.4f, validation loss %s",
             card["steps"], card["final_train_loss"], card["validation_loss"])
    return card


def guardrails_card(train_examples: list[dict]) -> dict:
    """What guarded decoding needs from tuning (calltune.runtime.guardrails): the length band of the real customer
    replies the model learned, in words."""
    from calltune.runtime.guardrails import BAND_PERCENTILES, RULES, length_band

    return {"band": length_band([e["target"] for e in train_examples]),
            "band_from": f"percentiles {BAND_PERCENTILES[0]} and {BAND_PERCENTILES[1]} of the train split's "
                         f"{len(train_examples)} customer replies, in words", "rules": RULES}


def _kept_validation(trainer) -> dict:
    """The validation metrics of the checkpoint training kept, as logged when it was evaluated (no second pass over
    the validation split); evaluated now if no validation was logged for it (or none ran: tune.eval_steps=0)."""
    step = _step_of(trainer.state.best_model_checkpoint)
    logged = [r for r in trainer.state.log_history if "eval_loss" in r and r["step"] == step]
    return logged[-1] if logged else trainer.evaluate()


def _target_count(row: dict) -> int:
    return sum(row["completion_mask"]) if "completion_mask" in row else sum(t != -100 for t in row["labels"])


def _step_of(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None
