"""What the coach adds to the bundled run: translating the evaluation columns, and the coach step itself.

    .venv/bin/python benchmarks/coach_step.py

On the bundled sample, each part in fresh state folders (cold translation caches), in this one run:
- baseline: ingest + translate with the fields the run translated before the coach (`translate.fields=[turns]`);
- with the coach: ingest + translate with the default fields (turns and the evaluation columns); the difference is
  what the translate step now adds;
- the coach step as kfp.local runs it: a fresh Python process that imports calltune's coach and runs build_coach on
  the translated calls and the sample step's splits (interpreter start and imports included), beside a fresh
  process that only imports kfp and calltune's config (the start every step pays; the coach's own cost is the
  difference).
The issue's bound is 90 s added to the default run; the end-to-end figure is `calltune run` on the commit before the
coach and on this one, on the same quiet machine, each with a fresh state folder; this script says where the seconds
go.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from calltune.config import Config  # noqa: E402
from calltune.data.ingest import bundled_sample_path, ingest  # noqa: E402
from calltune.data.sample import sample  # noqa: E402
from calltune.data.translate import translate_calls  # noqa: E402
from calltune.data.turn_split import turn_split  # noqa: E402

COACH = ("from pathlib import Path; from calltune.coaching.step import build_coach; from calltune.config import "
         "CoachConfig; import sys; build_coach(sys.argv[1], sys.argv[2], Path(sys.argv[3]), CoachConfig(), seed=42)")
START = "import kfp.dsl, calltune.config"


def translated(folder: Path, fields: list[str]) -> tuple[float, dict]:
    cfg = Config(state_dir=str(folder / "state"), translate={"fields": fields})
    start = time.perf_counter()
    ingest(bundled_sample_path(), folder / "raw.jsonl", folder / "quarantine.jsonl", cfg.data)
    report = translate_calls(folder / "raw.jsonl", folder / "calls.jsonl", cfg.translate, cfg.state_path())
    return time.perf_counter() - start, report


def process(code: str, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_s, base = translated(tmp / "turns", ["turns"])
        coach_s, full = translated(tmp / "full", ["turns", "evaluation"])
        cfg = Config()
        turn_split(tmp / "full" / "calls.jsonl", tmp / "examples.jsonl", cfg.split)
        sample(tmp / "examples.jsonl", tmp / "splits", cfg.sample, cfg.seed)
        start_s = process(START)
        step_s = process(COACH, str(tmp / "full" / "calls.jsonl"), str(tmp / "splits"), str(tmp / "coach"))
    print(f"ingest + translate, turns only (baseline): {base_s:6.1f} s  ({base['translated']} texts, "
          f"{base['characters']:,} code points)")
    print(f"ingest + translate, turns + evaluation:    {coach_s:6.1f} s  ({full['translated']} texts, "
          f"{full['characters']:,} code points): +{coach_s - base_s:.1f} s")
    print(f"a step's process start (kfp, config):      {start_s:6.1f} s")
    print(f"the coach step's process:                  {step_s:6.1f} s: +{step_s - start_s:.1f} s over the start")
    print(f"added to the run (translation + coach step): {coach_s - base_s + step_s:.1f} s (bound: 90 s)")


if __name__ == "__main__":
    main()
