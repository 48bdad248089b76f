"""comparison.json, the evaluate step's verdict: every compared model's metrics with their intervals, the paired
gains, the gate's decision and whole-call realism. Written once, here (`write`); read by the gate (`estimate` turns
its numbers back into Estimates), the model card and the run summary. NaN is written as null.
"""
from __future__ import annotations

import math
from pathlib import Path

from calltune.core.io import write_json
from calltune.evaluation.metrics import LEVEL, Estimate


def finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _estimates(metrics: dict[str, Estimate]) -> dict[str, dict]:
    return {k: finite(e.as_dict()) for k, e in metrics.items()}


# A record's parts with files of their own (predictions, simulated calls) or no place in the verdict.
_OWN_FILES = ("rows", "scores", "parts", "simulated", "simulated_unguarded", "adversarial")


def _plain(value):
    """Every Estimate in a nested result (realism's metrics, groups, adversarial section) as a dict."""
    if isinstance(value, Estimate):
        return finite(value.as_dict())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def write(out_dir: Path, *, records: dict, skipped: dict[str, str], gain: dict[str, Estimate], decision: dict,
          realism: dict | None, test_path: Path, max_seq_len: int, seed: int, bootstrap_samples: int,
          decoding: dict) -> dict:
    """Write out_dir/comparison.json and return what it holds. `records`: model name -> its scores (rows, per-example
    scores and simulated calls stay out: they have files of their own)."""
    comparison = {
        "models": {n: {**{k: v for k, v in r.items() if k not in _OWN_FILES}, "metrics": _estimates(r["metrics"])}
                   for n, r in records.items()}
                  | {n: {"skipped": why} for n, why in skipped.items() if n not in records},
        "gain": _estimates(gain),
        "gate": decision, "test_path": str(test_path), "max_seq_len": max_seq_len, "seed": seed,
        "bootstrap_samples": bootstrap_samples, "confidence": LEVEL, "decoding": decoding,
    }
    if realism is not None:
        comparison["realism"] = _plain({k: v for k, v in realism.items() if k != "per_call"})
    write_json(Path(out_dir) / "comparison.json", comparison)
    return comparison


def estimate(d: dict | None) -> Estimate | None:
    """An Estimate as comparison.json holds it (null for a bound it has none of); None when there is no value."""
    if not d or d.get("value") is None:
        return None
    return Estimate(d["value"], *(math.nan if d.get(k) is None else d[k] for k in ("low", "high")), d.get("n", 0))
