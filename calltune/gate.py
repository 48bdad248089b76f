"""The promotion gate: which checks the tuned model passed, and the one that decided.

Checks, in order (the first that fails decides; promotion needs every check that applies to pass):
  evaluation  the tuned model's token accuracy is a number (a failed or NaN evaluation never promotes)
  threshold   accuracy >= evaluate.threshold
  base        accuracy >= base model's accuracy + evaluate.min_gain_over_base (same test set)
  champion    accuracy >= champion's accuracy - evaluate.champion_tolerance (skipped while none is deployed)
A model left out of evaluate.compare skips its check. A compared model whose accuracy is missing or NaN fails
its check: promotion is never decided on a comparison that did not happen.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from calltune.config import EvaluateConfig

PROMOTE = "promote"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def decide(accuracy: dict[str, float | None], cfg: EvaluateConfig, skipped: dict[str, str] | None = None) -> dict:
    """`accuracy`: token accuracy by model ("tuned", "base", "champion"); `skipped`: model -> why it was not
    evaluated (its check is skipped with that note). Returns {"decision": "promote" | "keep", "decided_by":
    the first failed check (or "all checks passed"), "checks": [{"check", "passed" (None: skipped), "detail"}]}."""
    skipped = skipped or {}
    acc = accuracy.get("tuned")
    checks: list[dict] = []

    def check(name: str, passed: bool | None, detail: str) -> None:
        checks.append({"check": name, "passed": passed, "detail": detail})

    if not _number(acc):
        check("evaluation", False, f"the tuned model's token accuracy is {acc!r}: the evaluation failed")
    else:
        check("evaluation", True, f"token accuracy {acc:.4f}")
        check("threshold", acc >= cfg.threshold, f"{acc:.4f} {'>=' if acc >= cfg.threshold else '<'} "
                                                 f"threshold {cfg.threshold}")
        for name, margin, sign in (("base", cfg.min_gain_over_base, +1), ("champion", cfg.champion_tolerance, -1)):
            label = "min_gain_over_base" if name == "base" else "champion_tolerance"
            if name not in cfg.compare:
                check(name, None, f"skipped: {name} not in evaluate.compare")
            elif name in skipped:
                check(name, None, f"skipped: {skipped[name]}")
            elif not _number(other := accuracy.get(name)):
                check(name, False, f"the {name} model's token accuracy is {other!r}: its evaluation failed")
            else:
                bar = other + sign * margin
                check(name, acc >= bar, f"{acc:.4f} {'>=' if acc >= bar else '<'} {bar:.4f} "
                                        f"({name} {other:.4f} {'+' if sign > 0 else '-'} {label} {margin})")
    failed = next((c["check"] for c in checks if c["passed"] is False), None)
    return {"decision": "keep" if failed else PROMOTE, "decided_by": failed or "all checks passed", "checks": checks}


def gate(comparison_path: str | Path, cfg: EvaluateConfig) -> dict:
    """The decision for an evaluate step's comparison.json (written by calltune.evaluate)."""
    comparison = json.loads(Path(comparison_path).read_text(encoding="utf-8"))
    models = comparison["models"]
    accuracy = {name: (m.get("metrics", {}).get("accuracy") or {}).get("value") for name, m in models.items()}
    skipped = {name: m["skipped"] for name, m in models.items() if m.get("skipped")}
    return decide(accuracy, cfg, skipped)
