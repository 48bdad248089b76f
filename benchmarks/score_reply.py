"""Scoring and replying in one pass (calltune.evaluation.batch_infer.score_and_reply: the replies start from the prompts that
teacher-forced scoring read, keys, values and first-token scores included) against two (score, then generate every
reply reading its prompt again), as evaluate and batch inference do for a local model.

    .venv/bin/python benchmarks/score_reply.py                 # the bundled sample's test examples
    .venv/bin/python benchmarks/score_reply.py --examples 64 --batch-size 32 --state-dir ~/.calltune

Same model (the bundled SmolLM2-135M-Instruct, converted into --state-dir, a temporary one by default), same
examples (the bundled sample prepared without translation: test, then validation and train examples, up to
--examples), same greedy decoding, in one process; a warm-up runs first. Prints the seconds of each, the ratio, and
whether the two agree (token hits exactly; replies up to float rounding on ties between batched and single reads).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's calltune, when run as a script
from simulate_throughput import bundled_examples  # noqa: E402  (this folder is on sys.path: run as a script)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=71, help="the bundled run has 71 test examples")
    parser.add_argument("--batch-size", type=int, default=64, help="as infer.batch_size (configs/local.yaml)")
    parser.add_argument("--score-batch-size", type=int, default=8, help="as evaluate.batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="as infer.max_new_tokens")
    parser.add_argument("--max-seq-len", type=int, default=128, help="as tune.max_seq_len")
    parser.add_argument("--state-dir", type=Path, help="where the converted base model is kept (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from calltune.config import InferConfig
    from calltune.evaluation.batch_infer import generate_batch, score_and_reply
    from calltune.runtime.encoding import encode_causal, prompt_ids
    from calltune.runtime.loading import device, load_model, resolve_base_model, set_threads
    from calltune.runtime.scoring import score

    set_threads()
    with tempfile.TemporaryDirectory(prefix="calltune-bench-") as tmp:
        state = (args.state_dir or Path(tmp)).expanduser()
        examples = bundled_examples(Path(tmp))[:args.examples]
        model, tokenizer = load_model(resolve_base_model("smollm2-135m-instruct", state))
        rows = [r for r in (encode_causal(e, tokenizer, args.max_seq_len) for e in examples) if r is not None]
        cfg = InferConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        score_and_reply(model, tokenizer, rows[:4], cfg, args.score_batch_size)  # warm-up

        started = time.perf_counter()
        two_scores = score(model, tokenizer, rows, args.score_batch_size)
        two_replies = generate_batch(model, tokenizer, prompt_ids(rows), cfg)
        two = time.perf_counter() - started

        started = time.perf_counter()
        one_scores, one_replies = score_and_reply(model, tokenizer, rows, cfg, args.score_batch_size)
        one = time.perf_counter() - started

    agree = sum(a == b for a, b in zip(one_replies, two_replies))
    hits = one_scores["correct"] == two_scores["correct"]
    print(f"{len(rows)} examples on {device()}, batch {args.batch_size}, max_new_tokens {args.max_new_tokens}")
    print(f"score, then reply (prompts read twice): {two:6.1f} s")
    print(f"score_and_reply (prompts read once):    {one:6.1f} s")
    print(f"ratio: {two / one:.2f}x; replies agree on {agree}/{len(rows)}; token hits identical: {hits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
