"""LoRA SFT throughput: calltune's tuner against the plain HF Trainer baseline and the TRL anchor, in one run.

    .venv/bin/python benchmarks/tune_throughput.py                        # CPU: the tiny shape
    .venv/bin/python benchmarks/tune_throughput.py --sizes 360m,1.5b      # GPU: the issue's shapes

The baseline (`lora_sft_baseline.py`) and the anchor (`trl_sft_anchor.py`) are byte-for-byte copies of
../shared/bench's, kept in benchmarks/shared_bench so that they travel with the checkout (tests/test_gpu_check.py
compares them when ../shared is there), and run unchanged; calltune's tuner (`calltune.training.lora.make_trainer`) trains the same
random-init Llama shape, LoRA r=16 on every projection, on sequences drawn from the same length distribution
(lognormal, median 55, p95 ~150 tokens; the anchor's own `lengths`), every token a target, as in the others. One
hook on `transformers.Trainer.training_step` (the method all three end in) records every step's loss, real
(non-pad) tokens and time, so the figures are measured the same way for all. Prints one JSON line per variant as it
finishes (real tokens/s after 10 warm-up steps, MFU = 4 x params x tokens/s against the bf16 dense peak, peak GPU
memory), then each variant's rate as a ratio of the best anchor and the best baseline variant, with the loss around
the same number of trained tokens. Variants run in the order --variants names them. On CPU only the ratios mean
anything.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's calltune, when run as a script

BENCH = Path(__file__).resolve().parent / "shared_bench"  # the anchor and the baseline, as ../shared/bench has them
PEAK_BF16 = 989e12  # H100 SXM dense bf16, the shared scripts' figure
WARMUP = 10
STEPS: list[dict] = []  # filled by the hook: one record per training step of the variant running


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hook() -> None:
    import torch
    from transformers import Trainer

    original = Trainer.training_step

    def timed(self, model, inputs, *args, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = original(self, model, inputs, *args, **kwargs)
        mask = inputs.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        STEPS.append({"start": started, "tokens": tokens, "loss": float(loss)})
        return loss

    Trainer.training_step = timed


def _json(line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError:  # a Trainer log line, not a result
        return {}


def _measure(run) -> dict:
    """Run one variant; its printed JSON line (if any) plus the hook's figures."""
    import torch

    STEPS.clear()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    end = time.perf_counter()
    printed = [_json(line) for line in out.getvalue().splitlines() if line.startswith('{"')]
    result = next((p for p in reversed(printed) if p), {})
    if "error" in result or len(STEPS) <= WARMUP:
        return result | {"error": result.get("error", f"only {len(STEPS)} steps ran")}
    timed = STEPS[WARMUP:]
    result["measured_tokens_per_s"] = round(sum(s["tokens"] for s in timed) / (end - timed[0]["start"]))
    result["steps_recorded"] = len(STEPS)
    result["trace"] = [(s["tokens"], s["loss"]) for s in STEPS]
    return result


def calltune_run(size: str, steps: int, dev: str, tokens_per_step: int, attention: str = "sdpa") -> None:
    """The anchor's shape, data distribution and LoRA settings, trained by calltune's tuner."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from calltune.config import TuneConfig
    from calltune.training.lora import make_trainer

    anchor = _load("trl_sft_anchor")
    cfg = LlamaConfig(**anchor.SIZES[size])
    cfg._attn_implementation = "sdpa"
    lengths = anchor.lengths(40_000 if size != "tiny" else 2_000)
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in lengths:
        ids = torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "completion_mask": [0] + [1] * (n - 1)})  # every token a target
    batch = max(2, round(tokens_per_step / (sum(lengths) / len(lengths))))
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        (model.to(torch.bfloat16) if dev == "cuda" else model).save_pretrained(tmp, safe_serialization=True)
        del model
        anchor.tokenizer(cfg.vocab_size).save_pretrained(tmp)
        tune = TuneConfig(base_model=tmp, batch_size=batch, max_steps=steps + WARMUP, learning_rate=2e-4,
                          lora_dropout=0.0, max_seq_len=1024, eval_steps=10**6, attention=attention)
        trainer = make_trainer(Path(tmp), rows[:batch * (steps + WARMUP)], None, tune, seed=0,
                               work_dir=Path(tmp) / "work")
        trainer.args.logging_steps, trainer.args.disable_tqdm, trainer.args.report_to = 10**6, True, []
        params = sum(p.numel() for p in trainer.model.parameters() if not p.requires_grad)  # the base, as the others
        trainer.train()
    print(json.dumps({"size": size, "variant": f"calltune_{attention}", "batch_examples": batch, "params": params,
                      "max_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev == "cuda" else None}))
    if dev == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _loss_at(trace: list[tuple[int, float]], budget: int) -> float | None:
    """Mean step loss over the last quarter of the first `budget` trained tokens."""
    done, losses = 0, []
    for tokens, loss in trace:
        done += tokens
        if done > budget:
            break
        if done > 0.75 * budget:
            losses.append(loss)
    return round(sum(losses) / len(losses), 4) if losses else None


def main() -> None:
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="360m,1.5b" if dev == "cuda" else "tiny")
    parser.add_argument("--steps", type=int, default=40 if dev == "cuda" else 30, help="timed steps per variant")
    parser.add_argument("--tokens-per-step", type=int, default=16384 if dev == "cuda" else 1024,
                        help="calltune's batch, in tokens (examples = this / the mean length)")
    parser.add_argument("--variants", default="", help="comma-separated subset, e.g. calltune_sdpa,trl_packed_liger "
                                                         "(default: all; a GPU run of all takes a while)")
    args = parser.parse_args()
    baseline, anchor = _load("lora_sft_baseline"), _load("trl_sft_anchor")
    _hook()
    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}))
    for size in args.sizes.split(","):
        results = {}
        runs = {f"baseline_{v}": (lambda v=v: baseline.run(size, v, args.steps, 16 if dev == "cuda" else 4, dev))
                for v in ("padmax", "dynpad", "flatten")}
        runs |= {f"trl_{v}": (lambda v=v: anchor.run(size, v, args.steps, dev))
                 for v in ("padfree", "packed") + (("packed_liger",) if dev == "cuda" else ())}
        for attention in ("sdpa", "flex_attention") if dev == "cuda" else ("sdpa",):
            runs[f"calltune_{attention}"] = (lambda a=attention: calltune_run(size, args.steps, dev,
                                                                              args.tokens_per_step, a))
        if args.variants:
            if unknown := [n for n in args.variants.split(",") if n not in runs]:
                sys.exit(f"--variants: no variant {', '.join(unknown)} on {dev}; there are {', '.join(runs)}")
            runs = {n: runs[n] for n in args.variants.split(",")}
        for name, run in runs.items():
            try:
                r = results[name] = _measure(run)
            except Exception as exc:  # e.g. out of memory: report it and go on with the next variant
                r = results[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if "trace" in r:
                params, tps = r.get("params"), r["measured_tokens_per_s"]
                r["mfu_pct"] = round(100 * tps * 4 * params / PEAK_BF16, 2) if dev == "cuda" and params else None
            # at once: a run stopped at its time limit still reports the variants that finished
            print(json.dumps({"size": size, "variant": name, **{k: v for k, v in r.items()
                                                                  if k not in ("size", "variant", "trace")}}),
                  flush=True)
        ok = {n: r for n, r in results.items() if "error" not in r}
        budget = min((sum(t for t, _ in r["trace"]) for r in ok.values()), default=0)
        rate = {n: r["measured_tokens_per_s"] for n, r in ok.items()}
        best_anchor = max((v for n, v in rate.items() if n.startswith("trl_")), default=None)
        best_base = max((v for n, v in rate.items() if n.startswith("baseline_")), default=None)
        print(f"\n{size}: real tokens/s (x best TRL anchor, x best plain baseline); loss at {budget} tokens")
        for n, v in rate.items():
            print(f"  {n:22s} {v:>9,d}  x{v / best_anchor if best_anchor else math.nan:5.2f}  "
                  f"x{v / best_base if best_base else math.nan:5.2f}  loss {_loss_at(results[n]['trace'], budget)}")


if __name__ == "__main__":
    main()
