"""Encoder-decoder (seq2seq) base models: any local `AutoModelForSeq2SeqLM` folder (flan-t5, mt5, ...).

The encoder reads the conversation up to the seller's line as plain text, `calltune.infer.instructions` (T5
tokenizers have no chat template; it is also the text the predictions table shows), and the decoder writes the
customer reply. The target tokens are the reply and its eos, as in the causal `calltune.tune.encode_example`, and
training, teacher-forced scoring (the gate's token accuracy) and generation all use the rows encoded here.
Encoder and decoder have their own lengths, so each side gets up to `max_len` tokens.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from calltune.config import TuneConfig
from calltune.infer import instructions
from calltune.schema import Example

log = logging.getLogger(__name__)


def is_encoder_decoder(model_dir: str | Path) -> bool:
    """Whether the Hugging Face model folder holds an encoder-decoder model (read from config.json only)."""
    from transformers import AutoConfig

    return bool(AutoConfig.from_pretrained(model_dir, trust_remote_code=False).is_encoder_decoder)


def encode_example(example: Example, tokenizer, max_len: int) -> dict | None:
    """{"input_ids": the encoder's tokens, "labels": the reply's tokens + eos}. A conversation too long for the
    encoder loses its oldest history turns first, then tokens from the left (the seller's line is the last to
    go). None when the reply and its eos alone exceed `max_len`."""
    labels = tokenizer(example["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(labels) > max_len:
        return None
    history = example["history"]
    for start in range(len(history) + 1):
        # With the tokenizer's own special tokens (T5: a closing </s>), as the model was pretrained.
        ids = tokenizer(instructions({**example, "history": history[start:]}))["input_ids"]
        if len(ids) <= max_len:
            break
    return {"input_ids": ids[-max_len:], "labels": labels}


def _argmax(logits, labels):
    # Only the predicted ids are kept between evaluation batches, not the (batch, length, vocabulary) logits.
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def _token_accuracy(prediction) -> dict:
    mask = prediction.label_ids != -100
    return {"mean_token_accuracy": float((prediction.predictions == prediction.label_ids)[mask].mean())}


def make_trainer(base_path: Path, train_rows: list[dict], eval_rows: list[dict] | None, cfg: TuneConfig, *,
                 seed: int, work_dir: Path):
    """The seq2seq counterpart of `calltune.tune.make_trainer` (same arguments, LoRA settings and callbacks): a
    Seq2SeqTrainer of the peft-wrapped base over `encode_example` rows. DataCollatorForSeq2Seq pads labels with
    -100, so the loss is the mean NLL of the reply tokens; evaluation also logs `eval_mean_token_accuracy`."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments, set_seed)

    from calltune.tune import callbacks, lora_config, training_args

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


def score(model, tokenizer, rows: list[dict], batch_size: int) -> dict[str, list]:
    """Per row, in the rows' order, over its label tokens (teacher-forced on the decoder): correct predictions,
    NLL, token count; the shape of `calltune.evaluate.score`."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")
    out = {"correct": [0] * len(rows), "nll": [0.0] * len(rows), "tokens": [0] * len(rows)}
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]) - len(rows[i]["labels"]))
    started = time.monotonic()
    for b in range(0, len(order), batch_size):
        index = order[b:b + batch_size]
        batch = collate([{"input_ids": rows[i]["input_ids"], "labels": rows[i]["labels"]} for i in index])
        labels = batch["labels"].to(model.device)
        with torch.inference_mode():
            # The model shifts the labels right into the decoder's input: position t predicts label t.
            logits = model(input_ids=batch["input_ids"].to(model.device),
                           attention_mask=batch["attention_mask"].to(model.device), labels=labels).logits.float()
        mask = labels != -100
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        hits = (logits.argmax(-1) == labels) & mask
        for i, h, n, c in zip(index, hits.sum(1).tolist(), nll.sum(1).tolist(), mask.sum(1).tolist()):
            out["correct"][i], out["nll"][i], out["tokens"][i] = h, n, c
        done = b + len(index)
        log.info("scored %d/%d examples (%.1f examples/s)", done, len(rows),
                 done / max(time.monotonic() - started, 1e-9))
    return out
