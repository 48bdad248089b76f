"""The LoRA backend of the realism preference rounds (calltune.training.preference): DPO with TRL's DPOTrainer on
the supervised adapter.

The reference is the supervised adapter itself, frozen: the adapter is loaded trainable under peft's "default" name
and DPOTrainer, given a PEFT model with a pretrained adapter and no reference model, adds a frozen copy of it named
"ref" and computes the reference log-probabilities with that one active (switching the adapter off would make the
base model the reference, which is not what DIAL does). Each pair is windowed as training windows an example: the
same chat rendering, the oldest history dropped until the prompt and both replies fit `tune.max_seq_len`.
"""
from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path

from calltune.config import InferConfig, TuneConfig
from calltune.core.io import read_jsonl, write_json
from calltune.runtime.loading import MODEL_CARD, device, read_model_card, weights_sha256
from calltune.training.preference import Backend, Pair, infer_for_rounds

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
SUPERVISED_DIR = "supervised"  # in a model folder whose round was kept: the supervised model, for evaluation


def dpo_rows(pairs: list[Pair], tokenizer, max_len: int) -> list[dict]:
    """TRL's conversational preference rows (prompt messages, chosen and rejected assistant messages), each prompt
    windowed to fit `max_len` with the longer reply; pairs that fit with no history at all are left out."""
    from calltune.runtime.encoding import _prompt_messages, fitting_history

    rows = []
    for p in pairs:
        example = fitting_history(p.prompt, tokenizer, max_len, [p.chosen, p.rejected])
        if example is None:
            continue
        rows.append({"prompt": _prompt_messages(example), "chosen": [{"role": "assistant", "content": p.chosen}],
                     "rejected": [{"role": "assistant", "content": p.rejected}]})
    return rows


def train_dpo(model_dir: Path, pairs: list[Pair], out_dir: Path, cfg: TuneConfig, *, seed: int) -> dict:
    """DPO of the adapter in `model_dir` on `pairs`, the adapter frozen as the reference; writes the new adapter and
    the tokenizer to `out_dir`. Returns the training figures."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    set_seed(seed)
    card = read_model_card(model_dir)
    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = dpo_rows(pairs, tokenizer, cfg.max_seq_len)
    if not rows:
        raise ValueError(f"no preference pair fits tune.max_seq_len={cfg.max_seq_len}")
    base = AutoModelForCausalLM.from_pretrained(card["base_model_path"], dtype=torch.bfloat16 if cuda else torch.float32,
                                                use_safetensors=True, trust_remote_code=False)
    model = PeftModel.from_pretrained(base, model_dir, is_trainable=True)  # "default"; TRL adds the frozen "ref"
    args = DPOConfig(output_dir=str(out_dir / "work"), seed=seed, data_seed=seed, beta=cfg.preference_beta,
                     learning_rate=cfg.preference_learning_rate, num_train_epochs=cfg.preference_epochs,
                     per_device_train_batch_size=cfg.batch_size, lr_scheduler_type="linear", warmup_steps=0.1,
                     max_length=None,  # windowed above: nothing to cut
                     activation_checkpointing=False,  # TRL turns it on; LoRA on these lengths fits without
                     logging_steps=1, save_strategy="no", report_to=[], bf16=cuda, use_cpu=not cuda,
                     optim="adamw_torch_fused", dataloader_num_workers=0, disable_tqdm=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    result = trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, selected_adapters=["default"], safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(out_dir / "work", ignore_errors=True)
    logged = [r for r in trainer.state.log_history if "loss" in r]
    return {"pairs_trained": len(rows), "steps": trainer.state.global_step, "train_loss": result.training_loss,
            "first_loss": logged[0]["loss"] if logged else None,  # ln 2 when the policy starts as the reference
            "final_reward_accuracy": logged[-1].get("rewards/accuracies") if logged else None,
            "final_reward_margin": logged[-1].get("rewards/margins") if logged else None,
            "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2)}


def lora_backend(model_dir: Path, validation_path: Path, cfg: TuneConfig, infer: InferConfig, *, seed: int,
                 work: Path) -> Backend:
    """The rounds' backend for a tuned LoRA folder: a model is a folder (the supervised one, then one per round
    under `work`, holding the adapter, the tokenizer and a copy of the card)."""
    from calltune.evaluation.batch_infer import Decoding
    from calltune.evaluation.simulate import local_replier
    from calltune.runtime.encoding import encode_file
    from calltune.runtime.guardrails import Guardrails
    from calltune.runtime.loading import load_model
    from calltune.runtime.responders import card_split
    from calltune.runtime.scoring import score

    card = read_model_card(model_dir)
    rounds_infer = infer_for_rounds(infer)
    decoding = Decoding.for_model(card, rounds_infer)  # the end-of-call marker; no guarded decoding

    @functools.lru_cache(maxsize=2)
    def loaded(folder: Path):
        return load_model(folder)

    def replier(folder: Path):
        model, tokenizer = loaded(folder)
        return local_replier(model, tokenizer, rounds_infer, cfg.max_seq_len, decoding)

    @functools.cache
    def accuracy(folder: Path) -> float:
        model, tokenizer = loaded(folder)
        rows, _, _ = encode_file(validation_path, tokenizer, cfg.max_seq_len)
        parts = score(model, tokenizer, rows, cfg.batch_size)
        return sum(parts["correct"]) / max(sum(parts["tokens"]), 1)

    def train(folder: Path, pairs: list[Pair], number: int) -> Path:
        out = work / f"round-{number}"
        figures = train_dpo(folder, pairs, out, cfg, seed=seed)
        write_json(out / MODEL_CARD, {**read_model_card(folder), "adapter_sha256": weights_sha256(out),
                                      "preference_training": figures})
        log.info("preference round %d: DPO on %d pairs, %d steps, loss %.4f", number, figures["pairs_trained"],
                 figures["steps"], figures["train_loss"])
        return out

    return Backend(replier=replier, train=train, accuracy=accuracy, rails=Guardrails.from_card(card),
                   split=card_split(card))


def tune_preference(model_dir: Path, splits: Path, cfg: TuneConfig, infer: InferConfig, *, seed: int,
                    embedding_model: str, samples: int) -> dict:
    """The preference rounds on the tuned LoRA folder `model_dir`: the kept adapter replaces the supervised one in
    place, and its calltune_model.json gets the report ("preference"). When a round is kept, the supervised model
    stays in the folder (supervised/, the card's `supervised_model`), so evaluation measures it beside the tuned
    one: supervised only, + the preference round, + guarded decoding. Returns the updated card."""
    from calltune.runtime.embeddings import Embedder
    from calltune.training.preference import run_rounds

    model_dir = Path(model_dir)
    work = model_dir / ".preference"
    validation = splits / "validation.examples.jsonl"
    backend = lora_backend(model_dir, validation, cfg, infer, seed=seed, work=work)
    final, report = run_rounds(model_dir, backend, list(read_jsonl(splits / "train.examples.jsonl")),
                               list(read_jsonl(validation)) if validation.is_file() else [],
                               Embedder(embedding_model) if embedding_model else None, cfg, samples=samples,
                               seed=seed)
    card = read_model_card(model_dir)
    if final != model_dir:  # a round was kept: its adapter becomes the model's, the supervised one is kept beside
        supervised = model_dir / SUPERVISED_DIR
        supervised.mkdir(exist_ok=True)
        for file in model_dir.iterdir():
            if file.is_file() and file.name != "README.md":
                shutil.copy2(file, supervised / file.name)
        card["supervised_model"] = SUPERVISED_DIR
        for name in ADAPTER_FILES:
            shutil.copyfile(final / name, model_dir / name)
        kept = read_model_card(final)
        card.update(adapter_sha256=weights_sha256(model_dir), preference_training=kept["preference_training"])
        card["validation_token_accuracy"] = backend.accuracy(final)
    card["preference"] = {**report, "device": device()}
    shutil.rmtree(work, ignore_errors=True)
    write_json(model_dir / MODEL_CARD, card)
    return card
