"""Generator backend: a bundled or local Hugging Face model on this machine (calltune.runtime.loading), a batch of prompts
per generate call."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from calltune.config import SynthesizeConfig

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"


class LocalGenerator:
    concurrency = 1  # one batch at a time: it already runs on every core

    def __init__(self, cfg: SynthesizeConfig, state_dir: Path):
        from calltune.runtime.loading import BASE_CARD, resolve_base_model, weights_sha256

        name = cfg.model or DEFAULT_LOCAL_MODEL
        self._path = resolve_base_model(name, Path(state_dir).expanduser())
        card = self._path / BASE_CARD
        sha = json.loads(card.read_text())["weights_sha256"] if card.is_file() else weights_sha256(self._path)
        self.name = f"local:{name}@{sha[:12]}"  # the weights, not just the name, say what answers
        self.max_batch = cfg.batch_size
        self.counters: Counter[str] = Counter()
        self._loaded = None  # (model, tokenizer), loaded on the first batch: a run served from the cache needs none

    def generate(self, requests: list[dict]) -> list[str]:
        import torch

        if self._loaded is None:
            from calltune.runtime.loading import load_model, set_threads

            set_threads()
            self._loaded = load_model(self._path)
            self._loaded[1].padding_side = "left"  # generation continues from the right end of every row
        model, tok = self._loaded
        texts = [tok.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False) for r in requests]
        inputs = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        temperature = requests[0]["temperature"]
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        torch.manual_seed(requests[0]["seed"])  # the batch's first prompt seeds it: the same batch, the same answers
        self.counters["requests"] += 1
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max(r["max_tokens"] for r in requests),
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 top_p=None, top_k=None, **sampling)
        return [tok.decode(row, skip_special_tokens=True).strip() for row in out[:, inputs["input_ids"].shape[1]:]]

    def close(self) -> None:
        pass
