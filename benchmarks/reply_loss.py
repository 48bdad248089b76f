"""The CPU tuner's loss: calltune's ReplyLossTrainer (LM head on the reply positions only) against TRL's own
`loss_type="nll"` (TRL 1.16: `"chunked_nll"` is a deprecated alias of it), on the same model and batches.

    .venv/bin/python benchmarks/reply_loss.py                     # the bundled SmolLM2-135M, the bundled sample calls
    .venv/bin/python benchmarks/reply_loss.py --batches 12 --rounds 3

The tune settings (batch size, sequence length, LoRA) are the bundled run's, from configs/local.yaml (`--config`).
One trainer (`calltune.training.lora.make_trainer`, LoRA as configured) and its first batches; both losses are computed by
their trainer class's public `compute_loss` on that one trainer, so the weights and inputs are the same. Prints:
- the largest difference between the two losses over the batches (no_grad);
- for each variant, the real (non-pad) tokens per second of forward + backward, timed in alternating rounds after a
  warm-up, and the ratio (the optimizer step, identical in both, is left out);
- each one's largest difference from the exact loss (the plain cross-entropy over every position's logits, in
  float64), computed in float32 and in float64: what is left in float64 is not rounding.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's calltune, when run as a script


def examples_file(folder: Path) -> Path:
    """The bundled sample calls, turn-split into examples (untranslated: the loss does not care)."""
    from calltune.config import DataConfig, SplitConfig
    from calltune.conversation.windows import split_call
    from calltune.core.io import write_jsonl
    from calltune.data.ingest import Quarantine, bundled_sample_path, iter_calls

    with Quarantine(folder / "quarantine.jsonl") as quarantine:
        calls = list(iter_calls(bundled_sample_path(), DataConfig(), quarantine, workers=1))
    examples = [e for call in calls for e in split_call(call, SplitConfig())]
    path = folder / "train.examples.jsonl"
    write_jsonl(path, examples)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8, help="batches timed per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per variant")
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "local.yaml"),
                        help="YAML whose tune section is used (default: the bundled run's)")
    parser.add_argument("--state-dir", default="", help="state folder holding the converted base model (default: temp)")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from calltune.config import load_config
    from calltune.runtime.encoding import encode_file
    from calltune.runtime.loading import resolve_base_model, set_threads
    from calltune.training.lora import make_trainer

    set_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = load_config(args.config).tune
        base = resolve_base_model(cfg.base_model, Path(args.state_dir).expanduser() if args.state_dir else tmp)
        rows = encode_file(examples_file(tmp), AutoTokenizer.from_pretrained(base), cfg.max_seq_len)[0]
        trainer = make_trainer(base, rows, None, cfg, seed=0, work_dir=tmp / "work")
        variants = {"calltune_reply_loss": type(trainer).compute_loss, "trl_nll": SFTTrainer.compute_loss}
        model = trainer.model
        model.train()
        loader = iter(trainer.get_train_dataloader())
        batches = [next(loader) for _ in range(args.batches + 2)]

        def losses(b) -> dict[str, float]:
            return {name: float(compute_loss(trainer, model, dict(b))) for name, compute_loss in variants.items()}

        def exact(b) -> float:  # every position's logits, the next-token cross-entropy averaged over the labels
            keep = ("input_ids", "attention_mask", "position_ids")
            logits = model(**{k: v for k, v in b.items() if k in keep}, use_cache=False).logits[:, :-1]
            labels = b["labels"][:, 1:]
            return float(torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100]))

        with torch.no_grad():
            pairs = [losses(b) for b in batches]
        print(json.dumps({"batches": len(batches), "dtype": "float32", "max_abs_loss_difference": max(
            abs(p["calltune_reply_loss"] - p["trl_nll"]) for p in pairs), "loss_range": [
            round(min(p["trl_nll"] for p in pairs), 3), round(max(p["trl_nll"] for p in pairs), 3)]}))

        seconds = dict.fromkeys(variants, 0.0)
        tokens = dict.fromkeys(variants, 0)
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for name, compute_loss in (variants.items() if round_ % 2 else reversed(variants.items())):
                for b in batches[2:] if round_ else batches[:2]:
                    started = time.perf_counter()
                    compute_loss(trainer, model, dict(b)).backward()
                    elapsed = time.perf_counter() - started
                    model.zero_grad(set_to_none=True)
                    if round_:
                        seconds[name] += elapsed
                        real = b["attention_mask"] if "attention_mask" in b else b["input_ids"] >= 0
                        tokens[name] += int(real.sum())
        rates = {name: tokens[name] / seconds[name] for name in variants}
        for name in variants:
            print(json.dumps({"variant": name, "tokens": tokens[name], "seconds": round(seconds[name], 2),
                              "tokens_per_s": round(rates[name], 1)}))
        print(json.dumps({"ratio_calltune_over_trl": round(rates["calltune_reply_loss"] / rates["trl_nll"], 3)}))

        # Which of the two is off: float64 takes float32's rounding out of the exact loss
        model.double()
        with torch.no_grad():
            exact_losses = [exact(b) for b in batches]
            for name in variants:
                print(json.dumps({"variant": name, "max_abs_difference_from_exact_loss": {
                    "float32": max(abs(p[name] - e) for p, e in zip(pairs, exact_losses)),
                    "float64": max(abs(losses(b)[name] - e) for b, e in zip(batches, exact_losses))}}))


if __name__ == "__main__":
    main()
