"""Simulated calls per second: closed-loop simulation batched across calls (calltune.evaluation.simulate: one batched
generation per turn position) against one call at a time (every turn of a call on its own, then the next call).

    .venv/bin/python benchmarks/simulate_throughput.py                  # 24 calls of the bundled sample
    .venv/bin/python benchmarks/simulate_throughput.py --calls 48 --state-dir ~/.calltune

Same model (the bundled SmolLM2-135M-Instruct, converted into --state-dir, a temporary one by default), same calls
(whole calls of the bundled sample, prepared without translation, test split first), same greedy decoding and
max_new_tokens, same contexts (calltune.training.lora.encode_example at --max-seq-len), in one process. A warm-up runs before
either is timed. Prints the rate of each, the ratio, and how many simulated turns the two agree on (greedy: all, up
to float rounding on ties between padded and unpadded rows). Runs on the GPU when torch sees one.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's calltune, when run as a script


def bundled_examples(folder: Path) -> list[dict]:
    """The bundled sample prepared into `folder` without translation: its test, validation and train examples."""
    from calltune.config import Config
    from calltune.core.io import read_jsonl
    from calltune.data.ingest import bundled_sample_path
    from calltune.data.prepare import prepare

    cfg = Config(state_dir=str(folder))
    cfg.translate.backend = "none"
    prepare(bundled_sample_path(), folder / "prepared", cfg, workers=1)
    return [e for name in ("test", "validation", "train") for e in read_jsonl(folder / "prepared" /
                                                                              f"{name}.examples.jsonl")]


def bundled_calls(folder: Path, n: int):
    from calltune.evaluation.simulate import calls_from_examples

    calls, _ = calls_from_examples(bundled_examples(folder), n)
    if len(calls) < n:
        sys.exit(f"only {len(calls)} calls in the bundled sample; ask for fewer (--calls)")
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=40, help="as infer.max_new_tokens (configs/local.yaml)")
    parser.add_argument("--max-seq-len", type=int, default=128, help="as tune.max_seq_len (configs/local.yaml)")
    parser.add_argument("--state-dir", type=Path, help="where the converted base model is kept (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from calltune.config import InferConfig
    from calltune.evaluation.simulate import local_replier, simulate
    from calltune.runtime.loading import device, load_model, resolve_base_model, set_threads

    set_threads()
    with tempfile.TemporaryDirectory(prefix="calltune-bench-") as tmp:
        state = (args.state_dir or Path(tmp)).expanduser()
        model, tokenizer = load_model(resolve_base_model("smollm2-135m-instruct", state))
        calls = bundled_calls(Path(tmp), args.calls)
    turns = sum(len(c.examples) for c in calls)
    where = torch.cuda.get_device_name() if device() == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device()} ({where}), {len(calls)} calls, {turns} customer turns "
          f"({max(len(c.examples) for c in calls)} turn positions at most), max_new_tokens {args.max_new_tokens}, greedy")
    cfg = InferConfig(max_new_tokens=args.max_new_tokens, batch_size=len(calls))
    simulate(calls[:2], local_replier(model, tokenizer, cfg.model_copy(update={"max_new_tokens": 4}),
                                      args.max_seq_len))  # warm-up

    def timed(batched: bool):
        if device() == "cuda":
            torch.cuda.synchronize()
        reply = local_replier(model, tokenizer, cfg, args.max_seq_len)  # its own prefix cache, empty
        started = time.perf_counter()
        sims = simulate(calls, reply, batched=batched)
        if device() == "cuda":
            torch.cuda.synchronize()
        return sims, time.perf_counter() - started

    single, t_single = timed(False)
    batched, t_batched = timed(True)
    n = len(calls)
    same = sum(a == b for s, t in zip(single, batched) for a, b in zip(s.customers, t.customers))
    print(f"one call at a time:            {n / t_single:7.3f} calls/s ({t_single:.1f} s)")
    print(f"batched across calls ({n} per turn position): {n / t_batched:7.3f} calls/s ({t_batched:.1f} s)")
    print(f"ratio: {t_single / t_batched:.1f}x; identical simulated turns: {same}/{turns}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
