"""The evaluation report (report.md, report.html): what the evaluate step found, for people."""
from __future__ import annotations

import json
import math
from pathlib import Path

from calltune.config import EvaluateConfig, SimulateConfig
from calltune.core.figures import loss_curve_png, pyplot, save_png
from calltune.core.report import Report
from calltune.evaluation import metrics as M
from calltune.release.model_card import coach_summary

# Shown first in tables and charts, in this order; any other metric follows.
CHART_METRICS = ("accuracy", "rouge_l", "chrf", "bleu", "embedding_cosine", "cross_encoder", "distinct_2",
                 "persona_fidelity", "realism")
HEADLINE = ("accuracy", "loss", "perplexity")
REPORTED = "reported by the tuning job on the validation split"  # an endpoint model's accuracy (calltune_model.json)


def _cell(e: M.Estimate) -> str:
    if not math.isfinite(e.value):
        return "n/a"
    return f"{e.value:.4g} [{e.low:.4g}, {e.high:.4g}]" if math.isfinite(e.low) else f"{e.value:.4g}"


def write_report(model_dir: Path, records: dict, skipped: dict, decision: dict, cfg: EvaluateConfig, out_dir: Path,
                 errors: dict, realism: dict | None, gain: dict, *, calls: list,
                 simulation: SimulateConfig | None) -> None:
    """report.md and report.html in the evaluation folder: the gate's decision and checks, every model's metrics
    with their intervals and charts, the training curve, the error analysis, whole-call realism and sample
    conversations."""
    r = Report("calltune evaluation")
    verdict = "PROMOTE" if decision["decision"] == "promote" else "KEEP the current model"
    r.text(f"Decision: {verdict} (decided by: {decision['decided_by']}). Model: {model_dir}.")
    r.heading("Gate checks")
    r.table([{"check": c["check"], "result": {True: "pass", False: "FAIL", None: "skipped"}[c["passed"]],
              "detail": c["detail"]} for c in decision["checks"]])
    for name, e in gain.items():
        r.text(f"Gain over {name}: {e.value:+.4f} token accuracy [{e.low:+.4f}, {e.high:+.4f}] (paired bootstrap "
               f"over the same test examples).")
    r.heading("Metrics")
    r.text(f"Every model on the same {records['tuned']['examples']} test examples; value [95% bootstrap interval, "
           f"{cfg.bootstrap_samples} resamples of the examples]. accuracy = teacher-forced next-token accuracy on "
           f"the customer replies (the gate metric); the other metrics score each model's generated replies "
           f"against the real customer's.")
    names = list(records)
    present = [k for rec in records.values() for k in rec["metrics"]]
    keys = list(dict.fromkeys([k for k in CHART_METRICS + HEADLINE if k in present] + present))
    r.table([{"metric": k, **{n: _cell(records[n]["metrics"].get(k, M.NAN)) for n in names}} for k in keys]
            + [{"metric": "examples", **{n: records[n]["examples"] for n in names}},
               {"metric": "model sha", **{n: records[n].get("model_sha", "") for n in names}}])
    for n, why in skipped.items():
        r.text(f"{n}: {why}")
    for n, rec in records.items():
        if REPORTED in rec.get("note", ""):
            r.text(f"{n}: {rec['note']}")
        if "judge" in rec:
            j = rec["judge"]
            r.text(f"judge on {n}: {j['requests']} replies, {j['failed']} failed requests, unparseable answers "
                   f"(left out) {j['unparseable']}")
    if not cfg.cross_encoder:
        r.text("cross-encoder similarity skipped: no evaluate.cross_encoder configured")
    r.image(_charts([k for k in CHART_METRICS if k in keys], records, out_dir / "charts.png"),
            "metrics per model with 95% intervals")
    log_file = model_dir / "training_log.json"
    if log_file.is_file():
        r.heading("Training")
        r.image(loss_curve_png(json.loads(log_file.read_text(encoding="utf-8")), out_dir / "loss_curve.png"),
                "training loss curve")
    _errors_section(r, errors)
    if coach := coach_summary(model_dir):  # the scorecard and the figures of the coach the model carries
        r.section(coach)
    if realism is not None:
        from calltune.evaluation.realism_report import section

        section(r, realism, calls, {n: rec["simulated"] for n, rec in records.items() if "simulated" in rec},
                simulation, out_dir)
    r.heading("Sample conversations")
    r.text("Single turns, teacher-forced context (the real history), from several calls: the real customer's reply "
           "beside every model's.")
    by_id = {n: {row["example_id"]: row for row in rec["rows"]} for n, rec in records.items()}
    samples = []
    for row in _across_calls(records["tuned"]["rows"], cfg.samples):
        sample = {"conversation": row["instructions"], "customer (real)": row["target_responses"]}
        sample.update({n: by_id[n].get(row["example_id"], {}).get("candidate_responses", "") for n in names})
        samples.append(sample)
    r.table(samples)
    r.write(out_dir)


def _across_calls(rows: list[dict], k: int) -> list[dict]:
    """k rows taken round-robin over the calls (a middle turn of each call first), not the first rows."""
    by_call: dict[str, list[dict]] = {}
    for row in rows:
        by_call.setdefault(row.get("call_id", ""), []).append(row)
    queues = [q[len(q) // 2:] + q[:len(q) // 2] for q in by_call.values()]
    picked: list[dict] = []
    while len(picked) < k and any(queues):
        for q in queues:
            if q and len(picked) < k:
                picked.append(q.pop(0))
    return picked


def _errors_section(r: Report, errors: dict) -> None:
    """Failure categories of every model, and the tuned model's worst examples per metric (errors.json has all)."""
    r.heading("Error analysis")
    r.text("Replies in each failure category: count (share of the test examples); a reply can be in several. "
           "The rule column says how each is decided.")
    categories = errors["tuned"]["categories"]
    r.table([{"category": c, **{n: (f"{e['categories'][c]['count']} ({e['categories'][c]['share']:.1%})"
                                    if e["categories"][c]["checked"] else e["categories"][c]["note"])
                                for n, e in errors.items()},
              "examples (tuned)": ", ".join(categories[c].get("example_ids", [])), "rule": categories[c]["rule"]}
             for c in categories])
    for metric, worst in errors["tuned"]["worst"].items():
        if worst:
            r.text(f"Worst {len(worst)} tuned-model replies by {metric} (lowest first):")
            r.table([{"example": w["example_id"], metric: w["score"], "seller": w["seller"],
                      "customer (real)": w["target"], "reply": w["reply"]} for w in worst])


def _charts(keys: list[str], records: dict, path: Path) -> Path | None:
    if not keys:
        return None
    plt = pyplot()

    names = list(records)
    cols = min(2, len(keys))  # two charts a row: the image stays legible when the page scales it to a narrow window
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), dpi=100, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        est = [records[n]["metrics"].get(key, M.NAN) for n in names]
        values = [e.value if math.isfinite(e.value) else 0.0 for e in est]
        err = [[max(e.value - e.low, 0) if math.isfinite(e.low) else 0 for e in est],
               [max(e.high - e.value, 0) if math.isfinite(e.high) else 0 for e in est]]
        ax.bar(names, values, yerr=err, capsize=4, color=["C0", "C7", "C2"][:len(names)])
        ax.set_title(key)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return save_png(fig, path)
