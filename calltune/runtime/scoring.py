"""Teacher-forced scoring: for every reply token, whether the model's argmax at the position before it is that
token, and its negative log-likelihood. Token accuracy (the gate) and loss come from here; training's CPU loss uses
`reply_logits` too, so both count the same tokens.
"""
from __future__ import annotations

import logging
import time

from calltune.runtime.encoding import prompt_ids

log = logging.getLogger(__name__)


def score(model, tokenizer, rows: list[dict], batch_size: int, prefixes=None) -> dict[str, list]:
    """Per encoded row (`calltune.runtime.encoding`), in the rows' order, over its target tokens: correct
    predictions, NLL, token count. `prefixes` (a causal model's `calltune.runtime.generation.PrefixCache`): each
    row's prompt is left in it, read, with the scores of its next token, so that a reply to the row reads nothing."""
    if model.config.is_encoder_decoder:
        return _score_seq2seq(model, tokenizer, rows, batch_size)
    return _score_causal(model, tokenizer, rows, batch_size, prefixes)


def reply_logits(model, input_ids, attention_mask, target_mask, position_ids=None, cache: list | None = None):
    """(logits, tokens) at the target tokens: position t-1 predicts token t. Only positions that predict a target in
    some row go through the LM head (`logits_to_keep`); with a 49k vocabulary, projecting every position costs a
    third of a CPU training step. Called through the model's own forward, so a DDP wrapper syncs the gradients.
    Padding-free batches (one row of concatenated examples) pass `position_ids` and no attention mask. `cache`: a
    list that gets the forward's KV cache."""
    import torch

    predicts = target_mask[:, 1:]
    keep = predicts.any(0).nonzero().flatten()
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=keep, use_cache=cache is not None)
    if cache is not None:
        cache.append(out.cache)
    chosen = predicts[:, keep]
    logits = out.logits
    return logits[chosen].to(torch.promote_types(logits.dtype, torch.float32)), input_ids[:, 1:][:, keep][chosen]


def _score_causal(model, tokenizer, rows: list[dict], batch_size: int, prefixes=None) -> dict[str, list]:
    """Per row, in the rows' order, over its target tokens: correct predictions, NLL, token count."""
    import torch

    out = {"correct": [0] * len(rows), "nll": [0.0] * len(rows), "tokens": [0] * len(rows)}
    # Longest first, so each padded batch wastes little and a memory problem shows at once.
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    started, done = time.monotonic(), 0
    for b in range(0, len(order), batch_size):
        index = order[b:b + batch_size]
        batch = [rows[i] for i in index]
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for i, r in enumerate(batch):  # right padding: a causal model's real positions never see it
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            attention[i, :n] = 1
            target[i, :n] = torch.tensor(r["completion_mask"], dtype=torch.bool)
        ids, attention, target = ids.to(model.device), attention.to(model.device), target.to(model.device)
        cache = [] if prefixes is not None else None
        with torch.inference_mode():
            logits, gold = reply_logits(model, ids, attention, target, cache=cache)
        # reply_logits flattens the target positions row by row; split them back per example.
        counts = target[:, 1:].sum(1).tolist()
        if cache:  # right padding: a row's prompt positions hold exactly the prompt's keys and values
            firsts = logits.split(counts)
            for i, prompt in enumerate(prompt_ids(batch)):
                # the scores at the prompt's last token, which predict the reply's first
                prefixes.add(tuple(prompt), [(layer.keys[i:i + 1, :, :len(prompt)],
                                              layer.values[i:i + 1, :, :len(prompt)]) for layer in cache[0].layers],
                             firsts[i][0].clone() if counts[i] else None)  # not a view: the batch's logits go
        hits = (logits.argmax(-1) == gold).split(counts)
        nll = torch.nn.functional.cross_entropy(logits, gold, reduction="none").split(counts)
        for i, h, n, c in zip(index, hits, nll, counts):
            out["correct"][i], out["nll"][i], out["tokens"][i] = int(h.sum()), float(n.sum()), c
        done += len(batch)
        log.info("scored %d/%d examples (%.1f examples/s)", done, len(rows),
                 done / max(time.monotonic() - started, 1e-9))
    return out


def _score_seq2seq(model, tokenizer, rows: list[dict], batch_size: int) -> dict[str, list]:
    """Per row, in the rows' order, over its label tokens (teacher-forced on the decoder): correct predictions,
    NLL, token count; the shape of `calltune.evaluation.evaluate.score`."""
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
