"""Tuning encoder-decoder (seq2seq) base models: any local `AutoModelForSeq2SeqLM` folder (flan-t5, mt5, ...).

The rows are `calltune.runtime.encoding.encode_seq2seq`'s: the encoder reads the conversation up to the seller's line
as plain text, the decoder writes the customer reply and its eos.
"""
from __future__ import annotations

import logging
from pathlib import Path

from calltune.config import TuneConfig

log = logging.getLogger(__name__)


def _argmax(logits, labels):
    # Only the predicted ids are kept between evaluation batches, not the (batch, length, vocabulary) logits.
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def _token_accuracy(prediction) -> dict:
    mask = prediction.label_ids != -100
    return {"mean_token_accuracy": float((prediction.predictions == prediction.label_ids)[mask].mean())}


def make_trainer(base_path: Path, train_rows: list[dict], eval_rows: list[dict] | None, cfg: TuneConfig, *,
                 seed: int, work_dir: Path):
    """The seq2seq counterpart of `calltune.training.lora.make_trainer` (same arguments, LoRA settings and callbacks): a
    Seq2SeqTrainer of the peft-wrapped base over `encode_seq2seq` rows. DataCollatorForSeq2Seq pads labels with
    -100, so the loss is the mean NLL of the reply tokens; evaluation also logs `eval_mean_token_accuracy`."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        set_seed,
    )

    from calltune.training.settings import callbacks, lora_config, training_args

    cuda = torch.cuda.is_available()
    args = Seq2SeqTrainingArguments(**training_args(cfg, work_dir, seed=seed, has_eval=bool(eval_rows), cuda=cuda))
    set_seed(seed)  # the LoRA weights are drawn before the trainer seeds
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(base_path, dtype=torch.bfloat16 if cuda else torch.float32,
                                                  use_safetensors=True, trust_remote_code=False)
    return Seq2SeqTrainer(
        model=get_peft_model(model, lora_config(cfg, base_path, "SEQ_2_SEQ_LM")),
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        processing_class=tokenizer,
        compute_metrics=_token_accuracy,
        preprocess_logits_for_metrics=_argmax,
        callbacks=callbacks(cfg, bool(eval_rows)),
    )
