"""The bundled run's figures: `make run`'s command (`calltune run --config configs/local.yaml`) from a fresh state
folder, timed on this machine; prints the wall time, the tuned and base models' token accuracy with their 95%
intervals, and the machine.

    .venv/bin/python benchmarks/bundled_run.py             # measure and print
    .venv/bin/python benchmarks/bundled_run.py --record    # ... and write them to benchmarks/figures.json

The README quotes benchmarks/figures.json, and tests/test_readme.py checks that every figure it quotes equals the
file's; record on a machine nobody else is using (a shared machine measures the contention). The slow test
tests/test_readme.py::test_the_bundled_run_reaches_the_recorded_accuracy reruns it and compares the accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's calltune, when run as a script
from calltune.core.io import write_json  # noqa: E402

FIGURES = ROOT / "benchmarks" / "figures.json"
COMMAND = ["calltune", "run", "--config", "configs/local.yaml"]


def machine() -> str:
    """The CPU model and core count (what a CPU run's time depends on)."""
    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if cpuinfo.exists() else platform.processor()
    return f"{len(os.sched_getaffinity(0))} cores, {model or platform.machine()}"


def bundled_run(out: Path, state: Path) -> dict:
    """Run the bundled pipeline into `out` with `state` as its state folder; its figures."""
    calltune = Path(sys.executable).with_name("calltune")
    started = time.monotonic()
    subprocess.run([str(calltune), *COMMAND[1:], "--out", str(out), f"state_dir={state}"], cwd=ROOT, check=True)
    wall = time.monotonic() - started
    summary = json.loads((out / "summary.json").read_text())
    accuracy = {name: {k: round(summary["accuracy"][name][k], 4) for k in ("value", "low", "high")}
                for name in ("tuned", "base")}
    return {"command": " ".join(COMMAND) + " (make run), fresh state folder", "machine": machine(),
            "measured": datetime.now(UTC).strftime("%Y-%m-%d"), "wall_s": round(wall),
            "tuned_accuracy": accuracy["tuned"], "base_accuracy": accuracy["base"],
            "promoted": summary["promoted"] is not None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help=f"write the figures to {FIGURES.relative_to(ROOT)}")
    parser.add_argument("--out", type=Path, help="the run's folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="calltune-bundled-") as tmp:
        figures = bundled_run(args.out or Path(tmp) / "run", Path(tmp) / "state")
    print(json.dumps(figures, indent=2))
    if args.record:
        recorded = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
        write_json(FIGURES, {**recorded, "bundled_run": figures})
        print(f"wrote {FIGURES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
