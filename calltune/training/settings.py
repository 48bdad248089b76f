"""Trainer settings shared by the causal (calltune.training.lora) and the encoder-decoder (calltune.training.seq2seq) tuner: training
arguments, the LoRA config and the callbacks."""
from __future__ import annotations

import logging
from pathlib import Path

from calltune.config import TuneConfig

log = logging.getLogger(__name__)


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
    """Trainer arguments shared by the causal and the seq2seq (calltune.training.seq2seq) tuner. Checkpoints go to `work_dir` every
    `eval_steps` (for resume and for keeping the best by validation loss), or each epoch when `eval_steps` is 0
    (validation once, after training: calltune.training.lora._kept_validation); TensorBoard events to work_dir/runs."""
    once = cfg.eval_steps == 0
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
        **({"save_strategy": "epoch"} if once else {"save_strategy": "steps", "save_steps": cfg.eval_steps}),
        save_total_limit=2,  # the last and, with validation, the best
        report_to=["tensorboard"],
        bf16=cuda,  # on CPU fp32 is faster and exact
        use_cpu=not cuda,  # also makes CPU workers (tests) join one gloo process group
        optim="adamw_torch_fused",  # on CPU too: a step of rank-32 LoRA's Adam takes 20 ms, against 90 ms unfused
        torch_compile=compile_enabled(cfg, cuda),
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=False,  # LoRA: every trainable parameter is used in every step
        disable_tqdm=False,
    )
    if has_eval and not once:
        args.update(eval_strategy="steps", eval_steps=cfg.eval_steps, load_best_model_at_end=True,
                    metric_for_best_model="eval_loss", greater_is_better=False)
    return args


def callbacks(cfg: TuneConfig, has_eval: bool) -> list:
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(cfg.early_stopping_patience)] if has_eval and cfg.early_stopping_patience else []


_NAMES = {"loss": "loss", "grad_norm": "grad norm", "learning_rate": "learning rate", "eval_loss": "loss",
          "eval_token_accuracy": "token accuracy", "train_loss": "mean loss"}


def progress_line(logs: dict, step: int, max_steps: int) -> str:
    """One readable line for a Trainer log record: a training step's figures, a validation's, or the summary at
    the end (speeds and FLOPs, which the training report gives, are left out)."""
    def fmt(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    if "train_runtime" in logs:
        return f"trained: {step} steps in {logs['train_runtime']:.0f} s, mean loss {fmt(logs.get('train_loss'))}"
    validation = any(k.startswith("eval_") for k in logs)
    shown = [f"{_NAMES.get(k, k.removeprefix('eval_').replace('_', ' '))} {fmt(v)}" for k, v in logs.items()
             if k not in ("epoch", "total_flos", "step") and not k.endswith(("_runtime", "_per_second"))]
    where = f"step {step}/{max_steps}" + (f", epoch {logs['epoch']:.2f}" if "epoch" in logs else "")
    return f"{'validation at ' if validation else ''}{where}: {', '.join(shown)}"


def readable_progress(trainer) -> None:
    """Keep Trainer's progress bar, but write each log record as one readable line instead of its raw dict."""
    from transformers.trainer_callback import ProgressCallback

    class ProgressLines(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                self.training_bar.write(progress_line(logs, state.global_step, state.max_steps))

    if trainer.pop_callback(ProgressCallback) is not None:  # none when tqdm is off (then nothing prints)
        trainer.add_callback(ProgressLines())
