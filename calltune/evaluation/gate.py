"""The promotion gate: which checks the tuned model passed, and the one that decided.

Checks, in order (the first that fails decides; promotion needs every check that applies to pass):
  evaluation  the tuned model's token accuracy is a number (a failed or NaN evaluation never promotes)
  threshold   accuracy >= evaluate.threshold
  base        accuracy >= base model's accuracy + evaluate.min_gain_over_base (same test set)
  champion    accuracy >= champion's accuracy - evaluate.champion_tolerance (skipped while none is deployed)
  realism     (only when configured, off by default) the tuned model's whole-call realism (calltune.evaluation.realism):
              discriminator_auc <= evaluate.max_discriminator_auc, role_violation_rate <= max_role_violation_rate
A model left out of evaluate.compare skips its check. A compared model whose accuracy is missing or NaN fails
its check: promotion is never decided on a comparison that did not happen; nor is a configured realism check
without its metric.
With evaluate.decide_on=interval, the threshold and the gain over base must hold at the lower bound of their
bootstrap 95% intervals and a realism maximum at the upper bound, so a pass within noise keeps the current model.
Either way the threshold check says in words when the threshold lies inside the accuracy's interval.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from calltune.config import EvaluateConfig

PROMOTE = "promote"


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


REALISM_CHECKS = (("discriminator_auc", "max_discriminator_auc"), ("role_violation_rate", "max_role_violation_rate"))


def _within(est) -> str:
    return f"95% interval [{est.low:.4f}, {est.high:.4f}]"


def _bounded(est) -> bool:
    return est is not None and _number(est.low) and _number(est.high)


def decide(accuracy: dict[str, float | None], cfg: EvaluateConfig, skipped: dict[str, str] | None = None, *,
           intervals: dict | None = None, gain: dict | None = None, realism: dict | None = None) -> dict:
    """`accuracy`: token accuracy by model ("tuned", "base", "champion"); `skipped`: model -> why it was not
    evaluated (its check is skipped with that note); `intervals`: model -> its accuracy Estimate (calltune.evaluation.metrics);
    `gain`: "base"/"champion" -> the Estimate of tuned minus that model's accuracy (paired, same examples);
    `realism`: model -> realism metric -> Estimate. Returns {"decision": "promote" | "keep", "decided_by": the first
    failed check (or "all checks passed"), "checks": [{"check", "passed" (None: skipped), "detail"}]}."""
    skipped, intervals, gain = skipped or {}, intervals or {}, gain or {}
    on_interval = cfg.decide_on == "interval"
    acc = accuracy.get("tuned")
    checks: list[dict] = []

    def check(name: str, passed: bool | None, detail: str) -> None:
        checks.append({"check": name, "passed": passed, "detail": detail})

    if not _number(acc):
        check("evaluation", False, f"the tuned model's token accuracy is {acc!r}: the evaluation failed")
    else:
        check("evaluation", True, f"token accuracy {acc:.4f}")
        est = intervals.get("tuned")
        if on_interval and _bounded(est):
            passed = est.low >= cfg.threshold
            detail = (f"lower bound {est.low:.4f} {'>=' if passed else '<'} threshold {cfg.threshold} "
                      f"(accuracy {acc:.4f}, {_within(est)})")
        else:
            passed = acc >= cfg.threshold
            detail = f"{acc:.4f} {'>=' if passed else '<'} threshold {cfg.threshold}"
            if on_interval:
                detail += " (no interval: decided on the point value)"
        if _bounded(est):
            if est.low <= cfg.threshold <= est.high:
                detail += (f"; the threshold lies inside the accuracy's {_within(est)}: the "
                           f"{'pass' if passed else 'fail'} is within noise")
            elif not on_interval:
                detail += f"; {_within(est)}, clear of the threshold"
        check("threshold", passed, detail)
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
                passed = acc >= bar
                detail = (f"{acc:.4f} {'>=' if passed else '<'} {bar:.4f} "
                          f"({name} {other:.4f} {'+' if sign > 0 else '-'} {label} {margin})")
                diff = gain.get(name)
                if _bounded(diff):
                    if on_interval:  # the paired difference's lower bound against the margin
                        passed = diff.low >= sign * margin
                        detail = (f"gain over {name} {diff.value:+.4f}, lower bound {diff.low:+.4f} "
                                  f"{'>=' if passed else '<'} {sign * margin:+.4f} ({label} {margin})")
                    detail += f"; gain over {name} {diff.value:+.4f}, {_within(diff)}"
                check(name, passed, detail)
        tuned = (realism or {}).get("tuned", {})
        for metric, setting in REALISM_CHECKS:
            limit = getattr(cfg, setting)
            if limit >= 1.0:  # off: not listed
                continue
            est = tuned.get(metric)
            if est is None or not _number(est.value):
                check(metric, False, f"evaluate.{setting} = {limit}, but the tuned model's {metric} was not measured "
                                     f"(simulate.enabled off, or no embedding model)")
                continue
            value = est.high if on_interval and _bounded(est) else est.value
            passed = value <= limit
            check(metric, passed, f"{'upper bound ' if value is not est.value else ''}{value:.4f} "
                                  f"{'<=' if passed else '>'} evaluate.{setting} {limit} "
                                  f"({metric} {est.value:.4f}{', ' + _within(est) if _bounded(est) else ''})")
    failed = next((c["check"] for c in checks if c["passed"] is False), None)
    return {"decision": "keep" if failed else PROMOTE, "decided_by": failed or "all checks passed", "checks": checks}


def gate(comparison_path: str | Path, cfg: EvaluateConfig) -> dict:
    """The decision for an evaluate step's comparison.json (calltune.evaluation.comparison)."""
    from calltune.evaluation.comparison import estimate

    comparison = json.loads(Path(comparison_path).read_text(encoding="utf-8"))
    models = comparison["models"]
    accuracy = {name: (m.get("metrics", {}).get("accuracy") or {}).get("value") for name, m in models.items()}
    skipped = {name: m["skipped"] for name, m in models.items() if m.get("skipped")}
    intervals = {name: estimate(m.get("metrics", {}).get("accuracy")) for name, m in models.items()}
    gain = {name: estimate(d) for name, d in comparison.get("gain", {}).items()}
    realism = {name: {k: estimate(d) for k, d in metrics.items()}
               for name, metrics in comparison.get("realism", {}).get("metrics", {}).items()}
    return decide(accuracy, cfg, skipped, intervals=intervals, gain=gain, realism=realism)
