"""The evaluation report's "Whole-call realism" section (calltune.evaluation.realism's results, for people)."""
from __future__ import annotations

import math
from pathlib import Path

from calltune.core.figures import pyplot, save_png
from calltune.core.report import Report
from calltune.evaluation.realism import METRICS, REAL


def _cell(e) -> str:
    if e is None or not math.isfinite(e.value):
        return "n/a"
    return f"{e.value:.3g} [{e.low:.3g}, {e.high:.3g}]" if math.isfinite(e.low) else f"{e.value:.3g}"


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (not the first k)."""
    if k <= 0 or n <= 0:
        return []
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) if k > 1 else n // 2 for i in range(k)})


def length_histograms_png(lengths: dict[str, list[int]], path: Path) -> Path | None:
    """One panel per model: its reply lengths (words) over the real ones, on the same bins."""
    models = [n for n in lengths if n != REAL]
    if not models or not lengths.get(REAL):
        return None
    import numpy as np

    plt = pyplot()
    top = max(max(v, default=0) for v in lengths.values())
    bins = np.arange(0, min(top, 80) + 3, max(1, math.ceil(min(top, 80) / 25)))
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 2.8), dpi=100, squeeze=False)
    for ax, name in zip(axes.flat, models):
        ax.hist(np.clip(lengths[REAL], 0, bins[-1]), bins=bins, alpha=0.5, label="real", color="C7", density=True)
        ax.hist(np.clip(lengths[name], 0, bins[-1]), bins=bins, alpha=0.5, label=name, color="C0", density=True)
        ax.set_title(f"reply length: {name} vs real")
        ax.set_xlabel("words per customer turn")
        ax.legend()
    return save_png(fig, path)


def section(r: Report, realism: dict, calls: list, simulated: dict[str, list], cfg, out_dir: Path) -> None:
    """`calls`: the real calls; `simulated`: model -> its Simulated calls; `cfg`: SimulateConfig."""
    sim = realism["simulation"]
    names = list(realism["metrics"])  # real, each model, and the tuned model without guarded decoding
    r.heading("Whole-call realism")
    seller = ("the real seller turns were replayed" if sim["seller"] == "replay"
              else f"{sim['seller']} played the seller after the real opening line")
    r.text(f"Each model played the customer in all {sim['calls']} held-out test calls ({sim['turns']} customer turns) "
           f"closed-loop: {seller}, "
           f"and the model heard its own earlier replies, never the real customer's. Value [95% bootstrap interval "
           f"over calls]; the real column measures the real calls by the same rule, the baseline a simulator should "
           f"match. Calls cut at a gap in the split: {sim['turns_cut_at_gaps']} turns left out; calls starting "
           f"after their opening: {sim['calls_started_late']}.")
    rows = []
    for key, what in METRICS.items():
        cells = {n: realism["metrics"].get(n, {}).get(key) for n in names}
        if any(c is not None for c in cells.values()):
            rows.append({"metric": key, **{n: _cell(c) if c is not None else "" for n, c in cells.items()},
                         "what it measures": what})
    r.table(rows)
    if any(n.endswith("_unguarded") for n in names):
        r.text("tuned_unguarded: the tuned model's calls without guarded decoding (calltune.runtime.guardrails), so "
               "its gain shows: the tuned column is the model as it is served.")
    if "supervised" in names:
        r.text("supervised: the model before its realism preference rounds, without guarded decoding; beside it "
               "tuned_unguarded (+ preference rounds) and tuned (+ guarded decoding).")
    _by_group(r, realism.get("by_group"))
    _adversarial(r, realism.get("adversarial"))
    for note in realism.get("notes", []):
        r.text(note)
    for name, counts in realism.get("judge", {}).items():
        r.text(f"judge on {name}: {counts}")
    r.text("Rules: " + "; ".join(f"{k}: {v}" for k, v in realism["rules"].items()))
    r.image(length_histograms_png(realism["lengths"], out_dir / "realism_lengths.png"),
            "reply length histograms, simulated against real")

    picked = spread(len(calls), cfg.samples)
    for i in picked:
        call = calls[i]
        r.text(f"Call {call.call_id} ({call.system}): the real customer beside every model's simulated customer.")
        table = []
        for k, seller in enumerate(call.sellers):
            row = {"turn": k + 1, "seller": seller, "customer (real)": call.customers[k]}
            for name, sims in simulated.items():
                s = sims[i]
                if k < len(s.customers):
                    row[name] = s.customers[k] if s.sellers[k] == seller else f"[seller: {s.sellers[k]}] {s.customers[k]}"
                    if s.hung_up and k == len(s.customers) - 1:
                        row[name] += " [hung up]"
            table.append(row)
        r.table(table)

    worst = {k: v for k, v in realism["per_call"].get("tuned", {}).items()}
    sims = simulated.get("tuned")
    if worst and sims and cfg.worst:
        r.text(f"Worst {cfg.worst} calls of the tuned model per metric (per call: discriminator_auc = mean P(simulated) "
               f"of its turns; length_wasserstein = gap between mean reply lengths, words; friction_deficit = the real "
               f"customer's share of friction turns minus the model's):")
        table = []
        for metric, values in worst.items():
            order = sorted((v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v) and v > 0)
            for v, i in order[::-1][:cfg.worst]:
                table.append({"metric": metric, "call": calls[i].call_id, "value": round(float(v), 3),
                              "tuned customer turns": " / ".join(sims[i].customers)[:400]})
        r.table(table)


def _by_group(r: Report, groups: dict | None) -> None:
    if not groups or not groups["rows"]:
        return
    r.text(f"Friction by {groups['field']}: the share of customer turns that push back, hesitate or decline, against "
           f"the real calls of the same {groups['field']} (value [95% interval over that group's calls]). A few calls "
           f"per group: descriptive, no decision uses it.")
    r.table([{groups["field"]: row["group"], "calls": row["calls"],
              **{f"friction {n}": _cell(e) for n, e in row["friction_rate"].items()}} for row in groups["rows"]])


def _adversarial(r: Report, adversarial: dict | None) -> None:
    if not adversarial:
        return
    first = next(iter(adversarial.values()))
    r.text(f"In character under pressure: {first['lines']} seller lines that try to break the role, each inserted "
           f"once into each of the {first['calls']} calls at a seeded point ({first['replies']} replies a model). "
           f"Share of the replies that break character [95% interval over calls]; rule: {first['rule']}")
    for n, a in adversarial.items():
        if "judge" in a:
            j = a["judge"]
            r.text(f"{n}: the judge read {j['judged']} of the replies ({j['unreadable']} unreadable or failed, decided "
                   f"by the rules alone); {j['breaks_by_judge_only']} broke character by the judge's verdict alone.")
    kinds = list(first["by_kind"])
    r.table([{"model": n, "break rate": _cell(a["break_rate"]), **{k: _cell(a["by_kind"][k]) for k in kinds}}
             for n, a in adversarial.items()])
    for n, a in adversarial.items():
        if a["examples"]:
            r.text(f"{n}: replies that broke character")
            r.table(a["examples"])
