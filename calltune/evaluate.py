"""Evaluate a model on the held-out test examples: teacher-forced token accuracy on the customer replies.

accuracy = share of target tokens t where argmax(logits at t-1) == token t (Vertex's "fraction of correct
next step predictions"); loss = mean negative log-likelihood over the same tokens; perplexity = exp(loss).
The target tokens come from `calltune.tune.encode_example`, the definition training uses.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from calltune.chat import generate_reply
from calltune.config import EvaluateConfig, TuneConfig
from calltune.io import write_json
from calltune.models import device, load_model, read_model_card, set_threads
from calltune.render import to_messages
from calltune.report import Report, loss_curve_png
from calltune.tune import encode_file, reply_logits

log = logging.getLogger(__name__)

SAMPLES = 3  # test examples shown in the report, with the model's own greedy reply


def score(model, tokenizer, rows: list[dict], batch_size: int) -> dict:
    """Sums over the target tokens of pre-encoded rows: correct predictions, NLL, token count."""
    import torch

    correct, nll, tokens = 0, 0.0, 0
    # Longest first, so each padded batch wastes little and a memory problem shows at once.
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    started, done = time.monotonic(), 0
    for b in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[b:b + batch_size]]
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
        with torch.inference_mode():
            logits, gold = reply_logits(model, ids, attention, target)
        correct += int((logits.argmax(-1) == gold).sum())
        nll += float(torch.nn.functional.cross_entropy(logits, gold, reduction="sum"))
        tokens += int(gold.numel())
        done += len(batch)
        log.info("evaluated %d/%d examples (%.1f examples/s)", done, len(rows),
                 done / max(time.monotonic() - started, 1e-9))
    return {"correct": correct, "nll": nll, "tokens": tokens}


def evaluate(model_dir: str | Path, test_path: str | Path, out_dir: str | Path, cfg: EvaluateConfig,
             *, max_seq_len: int | None = None) -> dict:
    """Score the model folder (tuned or plain base) on the test examples; write metrics.json, report.md,
    report.html. `max_seq_len` defaults to the one the model was tuned with (else TuneConfig's default)."""
    set_threads()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    card = read_model_card(model_dir)
    max_len = max_seq_len or (card["config"]["max_seq_len"] if card else TuneConfig().max_seq_len)
    model, tokenizer = load_model(model_dir)
    rows, examples, skipped = encode_file(test_path, tokenizer, max_len, limit=cfg.max_examples)
    log.info("evaluating %s on %d test examples from %s (%d skipped) on %s",
             model_dir, len(rows), test_path, skipped, device())
    sums = score(model, tokenizer, rows, cfg.batch_size)
    if sums["tokens"] == 0:
        raise ValueError(f"{test_path}: no customer-reply tokens to score ({len(rows)} examples usable, "
                         f"{skipped} longer than max_seq_len={max_len}); the test set is empty")
    loss = sums["nll"] / sums["tokens"]
    result = {
        "accuracy": sums["correct"] / sums["tokens"],
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
        "examples": len(rows),
        "tokens": sums["tokens"],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", {**result, "skipped": skipped, "threshold": cfg.threshold,
                                          "model": str(model_dir), "base_model": (card or {}).get("base_model"),
                                          "test_path": str(test_path), "max_seq_len": max_len})
    _report(model, tokenizer, model_dir, examples, result, skipped, cfg, out_dir)
    log.info("accuracy %.4f, loss %.4f, perplexity %.2f over %d tokens",
             result["accuracy"], loss, result["perplexity"], result["tokens"])
    return result


def _report(model, tokenizer, model_dir: Path, examples: list[dict], result: dict, skipped: int,
            cfg: EvaluateConfig, out_dir: Path) -> None:
    r = Report("calltune evaluation")
    r.text(f"Model: {model_dir}. Teacher-forced next-token accuracy on the customer replies of the test split "
           f"(the deploy gate: accuracy >= {cfg.threshold}).")
    r.table({**result, "skipped (reply longer than max_seq_len)": skipped,
             "gate passed": result["accuracy"] >= cfg.threshold})
    log_file = model_dir / "training_log.json"
    if log_file.is_file():
        r.heading("Training")
        r.image(loss_curve_png(json.loads(log_file.read_text(encoding="utf-8")), out_dir / "loss_curve.png"),
                "training loss curve")
    r.heading("Sample test examples")
    samples = []
    for example in examples[:SAMPLES]:
        messages = to_messages(example)["messages"][:-1]
        samples.append({"seller (prompt)": example["prompt"], "customer (target)": example["target"],
                        "model reply (greedy)": generate_reply(model, tokenizer, messages, max_new_tokens=48)})
    r.table(samples)
    r.write(out_dir)
