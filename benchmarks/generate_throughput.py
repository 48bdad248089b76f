"""Customer replies per second: batched generation (calltune.evaluation.batch_infer) against one `generate` call per example.

    .venv/bin/python benchmarks/generate_throughput.py                     # 64 test prompts, batches of 32
    .venv/bin/python benchmarks/generate_throughput.py --examples 128 --batch-size 64 --state-dir ~/.calltune
    python3 benchmarks/generate_throughput.py --base-model /tmp/model   # a model folder (benchmarks/random_model.py)

Same model (the bundled SmolLM2-135M-Instruct, converted into --state-dir, a temporary one by default; or the
--base-model folder: random weights of its shape make every reply run to max_new_tokens, rates still hold), same
prompts (the test split of the bundled sample calls, prepared without translation and encoded with the tuned
models' max_seq_len), same greedy decoding and max_new_tokens, in one process: first one `generate` call per
example (the seed projects' way: no padding, a batch of one), then `calltune.evaluation.batch_infer.generate_batch` (prompts
sorted by length, left-padded, one KV cache per batch). A warm-up call runs before either is timed. Prints the
rate of each, the ratio, and how many replies the two agree on (greedy: all, up to float rounding on ties).
Runs on the GPU when torch sees one.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's calltune, when run as a script


def test_prompts(state: Path, n: int, max_seq_len: int, tokenizer) -> list[list[int]]:
    from calltune.config import Config
    from calltune.core.io import read_jsonl
    from calltune.data.ingest import bundled_sample_path
    from calltune.data.prepare import prepare
    from calltune.evaluation.batch_infer import prompt_ids
    from calltune.runtime.encoding import encode_causal as encode_example

    cfg = Config(state_dir=str(state))
    cfg.translate.backend = "none"
    out = state / "bench-prepared"
    prepare(bundled_sample_path(), out, cfg, workers=1)
    examples = [e for name in ("test", "validation", "train") for e in read_jsonl(out / f"{name}.examples.jsonl")]
    encoded = [r for r in (encode_example(e, tokenizer, max_seq_len) for e in examples) if r is not None]
    if len(encoded) < n:
        sys.exit(f"only {len(encoded)} examples in the bundled sample; ask for fewer (--examples)")
    return prompt_ids(encoded[:n])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-seq-len", type=int, default=128,
                        help="prompt trimming, as tune.max_seq_len (configs/local.yaml)")
    parser.add_argument("--state-dir", type=Path,
                        help="where the converted base model is kept (default: a temporary folder)")
    parser.add_argument("--base-model", default="smollm2-135m-instruct",
                        help="a bundled model name or a local Hugging Face model folder (tune.base_model's values)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from calltune.config import InferConfig
    from calltune.evaluation.batch_infer import generate_batch
    from calltune.runtime.loading import device, load_model, resolve_base_model, set_threads

    set_threads()
    with tempfile.TemporaryDirectory(prefix="calltune-bench-") as tmp:
        state = (args.state_dir or Path(tmp)).expanduser()
        model, tokenizer = load_model(resolve_base_model(args.base_model, state))
        prompts = test_prompts(Path(tmp), args.examples, args.max_seq_len, tokenizer)
    lengths = sorted(map(len, prompts))
    where = torch.cuda.get_device_name() if device() == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"model {args.base_model}, device {device()} ({where}), "
          f"{len(prompts)} prompts of {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}), "
          f"max_new_tokens {args.max_new_tokens}, greedy")
    cfg = InferConfig(max_new_tokens=args.max_new_tokens)
    generate_batch(model, tokenizer, prompts[:2], cfg.model_copy(update={"max_new_tokens": 4}))  # warm-up

    def timed(batch_size: int) -> tuple[list[str], float]:
        if device() == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        replies = generate_batch(model, tokenizer, prompts, cfg.model_copy(update={"batch_size": batch_size}))
        if device() == "cuda":
            torch.cuda.synchronize()
        return replies, time.perf_counter() - started

    single, t_single = timed(1)
    batched, t_batched = timed(args.batch_size)
    n = len(prompts)
    words = sum(len(r.split()) for r in batched)
    print(f"one generate call per example: {n / t_single:8.2f} replies/s ({t_single:.1f} s)")
    print(f"batched ({args.batch_size} per call):      {n / t_batched:8.2f} replies/s ({t_batched:.1f} s, "
          f"{words / n:.1f} words per reply)")
    print(f"ratio: {t_single / t_batched:.1f}x; identical replies: {sum(a == b for a, b in zip(single, batched))}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
