"""The bundled run with and without the realism preference round, in one sitting on one machine: wall time of each
(`calltune run --config configs/local.yaml`, then the same with `tune.preference_rounds=1`), each from a fresh
state folder, and their realism side by side: supervised only, + guarded decoding, + preference round, + both.

    .venv/bin/python benchmarks/preference_round.py --out /tmp/preference-bench
    .venv/bin/python benchmarks/preference_round.py --out /tmp/preference-bench --only preference   # one run
    .venv/bin/python benchmarks/preference_round.py --out /tmp/preference-bench --reuse   # what is done is read back

Prints, per run: the wall time, the tune step's preference report (pairs, validation realism before and after with
their 90% intervals, kept or rolled back), token accuracy and the gate, then one table of the realism metrics of
the tuned model with and without guarded decoding from both runs (95% intervals over the 12 test calls), the real
calls' values and the adversarial suite's break rate. The default run is the baseline of the same sitting.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"default": [], "preference": ["tune.preference_rounds=1"]}
ROWS = ("discriminator_auc", "degeneration_rate", "guarded_retry_rate", "first_turn_distinct_1", "question_rate", "friction_rate",
        "role_violation_rate", "reply_words", "length_wasserstein", "ended_early_rate", "ended_at_end_rate",
        "never_ended_rate")


def cell(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]" if e.get("low") is not None else f"{e['value']:.3f}"


def run(name: str, overrides: list[str], out: Path, reuse: bool = False) -> dict:
    """One bundled run (`reuse`: a run this folder already finished is read back, with its recorded wall time)."""
    folder = out / name
    if reuse and (folder / "seconds.txt").is_file():
        return read(folder, float((folder / "seconds.txt").read_text()))
    command = [sys.executable, "-m", "calltune.cli", "run", "--config", str(ROOT / "configs" / "local.yaml"),
               "--out", str(folder / "run"), f"state_dir={folder / 'state'}", *overrides]
    print(f"$ {' '.join(command)}", flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True, cwd=ROOT)
    seconds = time.monotonic() - started
    (folder / "seconds.txt").write_text(f"{seconds:.1f}")
    return read(folder, seconds)


def read(folder: Path, seconds: float) -> dict:
    summary = json.loads((folder / "run" / "summary.json").read_text())
    run_dir = Path(summary["run_dir"])
    comparison = json.loads((run_dir / "evaluate" / "evaluation" / "comparison.json").read_text())
    card = json.loads((run_dir / "tune" / "model" / "calltune_model.json").read_text())
    return {"seconds": seconds, "summary": summary, "comparison": comparison, "card": card}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a folder for both runs (their state and outputs)")
    parser.add_argument("--only", choices=sorted(RUNS), help="run only this one (with --reuse: and read the other)")
    parser.add_argument("--reuse", action="store_true", help="read back a run the folder already holds")
    args = parser.parse_args()
    results = {name: run(name, overrides, args.out, args.reuse) for name, overrides in RUNS.items()
               if args.only in (None, name) or (args.reuse and (args.out / name / "seconds.txt").is_file())}
    for name, r in results.items():
        minutes, seconds = divmod(r["seconds"], 60)
        gate = r["summary"]["gate"]
        print(f"\n{name}: wall {int(minutes)}:{seconds:04.1f}; token accuracy {cell(r['summary']['accuracy']['tuned'])}; "
              f"gate {gate['decision']} ({gate['decided_by']})")
        for rnd in (r["card"].get("preference") or {}).get("rounds", []):
            val = rnd.get("validation", {})
            print(f"  round {rnd['round']}: {rnd['pairs']} pairs ({rnd['rule_breaking_pairs']} rule-breaking) of "
                  f"{rnd['candidates']}; " + "; ".join(
                      f"{m} {cell(v['before'])} -> {cell(v['after'])} (gain {cell(v['gain'])})" for m, v in val.items())
                  + f"; accuracy {rnd.get('validation_token_accuracy')}; {rnd['decision']}")
    columns = {"real": ("default", "real")}
    for name, r in results.items():  # supervised (a kept round's model before it), tuned_unguarded, tuned
        models = r["comparison"].get("realism", {}).get("metrics", {})
        columns |= {f"{name}: {m}": (name, m) for m in ("supervised", "tuned_unguarded", "tuned") if m in models}
    print("\n| metric | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 1))
    for row in ROWS:
        cells = [cell(results[run_].get("comparison", {}).get("realism", {}).get("metrics", {}).get(model, {}).get(row))
                 if run_ in results else "n/a" for run_, model in columns.values()]
        print(f"| {row} | " + " | ".join(cells) + " |")
    for name, r in results.items():
        for model, adv in r["comparison"]["realism"].get("adversarial", {}).items():
            print(f"{name}: {model} breaks character in {cell(adv['break_rate'])} of {adv['replies']} adversarial replies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
