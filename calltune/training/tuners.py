"""Tuner backends: a splits folder in, a model folder (the KFP Model artifact) out, its model card returned.

hf-lora tunes a local model here (calltune.training.lora); gemini runs a Vertex AI tuning job whose endpoint the folder's
calltune_model.json names (calltune.training.gemini). Both are validated on the validation split when the
sample step wrote one.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from calltune.config import InferConfig, SplitConfig, TuneConfig


def tune(splits: str | Path, out_dir: str | Path, cfg: TuneConfig, *, seed: int, state_dir: str | Path,
         split: SplitConfig | None = None, system_prompt: str = "", infer: InferConfig | None = None,
         embedding_model: str = "", samples: int = 1000, coach: str | Path | None = None) -> dict:
    """Either backend, then `cfg.preference_rounds` realism preference rounds (calltune.training.preference: the
    tuned model plays the train calls with `infer`'s settings; `embedding_model`: the discriminator's sentence
    embeddings; `samples`: bootstrap resamples of the keep-or-roll-back decision); then the folder's README.md model
    card (calltune.release.model_card), evaluation pending. `split` and `system_prompt` (the template the data's
    system instructions came from) go into a local model's card, so serving windows conversations as the examples
    were. `coach`: the coach step's folder, copied into the model folder (coach/) before the card is written, so the
    model, its card and its served copy carry it."""
    from calltune.release.model_card import COACH_DIR, add_model_card

    splits, out_dir = Path(splits), Path(out_dir)
    rounds = {"infer": infer or InferConfig(), "seed": seed, "embedding_model": embedding_model, "samples": samples}
    if cfg.backend == "gemini":
        from calltune.training.gemini import tune_gemini, tune_gemini_preference

        card = tune_gemini(splits, out_dir, cfg)
        if cfg.preference_rounds:
            card = tune_gemini_preference(out_dir, splits, cfg, card, **rounds)
    else:
        from calltune.training.lora import train_lora

        validation = splits / "validation.examples.jsonl"
        card = train_lora(splits / "train.examples.jsonl", validation if validation.exists() else None, out_dir,
                          cfg, seed=seed, state_dir=Path(state_dir).expanduser(), split=split,
                          system_prompt=system_prompt)
        if cfg.preference_rounds:
            from calltune.training.dpo import tune_preference

            card = tune_preference(out_dir, splits, cfg, **rounds)
    if coach is not None:
        shutil.copytree(coach, out_dir / COACH_DIR, dirs_exist_ok=True)
    return add_model_card(out_dir, card, splits)
