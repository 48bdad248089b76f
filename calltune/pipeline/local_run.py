"""`calltune run`: the whole pipeline under kfp.local, then a summary.json of what happened."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from calltune.config import Config
from calltune.core.io import write_json


def run_local(cfg: Config, out: Path, *, verbose: bool = False) -> dict[str, Any]:
    """verbose: kfp.local's own log as it is (every task's executor input and outputs); otherwise one line per
    step's start and end, and the steps' own progress lines (see run_log)."""
    from kfp import local

    from calltune.pipelines import build_pipeline

    if cfg.evaluate.model:  # a bad reference fails here, before the data steps run
        from calltune.release.model_ref import locate

        locate(cfg.evaluate.model, cfg.deploy, cfg.state_path())
    out.mkdir(parents=True, exist_ok=True)
    root = (out / "pipeline_root").resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    pipeline = build_pipeline("local", cfg)
    with run_log(root, verbose):
        pipeline(**cfg.pipeline_params())
    run_dir = _only_run_dir(root)
    # The evaluate step's completed model card replaces the tune-time one in this run's model folder.
    card, model_dir = run_dir / "evaluate" / "evaluation" / "model_card.md", run_dir / "tune" / "model"
    if card.is_file() and model_dir.is_dir():
        shutil.copyfile(card, model_dir / "README.md")
    summary = summarize(cfg, run_dir)
    write_json(out / "summary.json", summary)
    return summary


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CUSTOM_IMAGE = "You may be attemping to run a task that uses custom"  # kfp.local's words, misspelling included
_TASK_SITE = Path(__file__).with_name("quiet_kfp")  # its sitecustomize configures the task processes' logging


class _StepLines(logging.Filter):
    """kfp.local's orchestration log (records of the root logger) as one line per step: its start, and its end
    with the step's figures; the per-task artifact listings are dropped."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        text = _ANSI.sub("", record.getMessage())
        if done := re.fullmatch(r"Task '(.+)' finished with status SUCCESS", text):
            text = f"{done[1]}: done{_figures(self.root, done[1])}"
        elif not text.startswith(("Running pipeline", "Executing task")):
            return False
        record.msg, record.args = text, ()
        return True


def _figures(root: Path, task: str, limit: int = 8) -> str:
    """A finished step's returned value and first metrics, e.g. ": calls=60, quarantined=4, rows=64"."""
    runs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    outputs = task_outputs(runs[-1], task) if runs else None
    if not outputs:
        return ""
    figures = {"result": outputs["Output"]} if "Output" in outputs else {}
    figures.update(outputs.get("metrics") or {})
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(figures.items())[:limit]]
    return (": " + ", ".join(shown) + (", ..." if len(figures) > limit else "")) if shown else ""


@contextmanager
def run_log(root: Path, verbose: bool):
    """While the pipeline runs: the step lines above, no custom-image warning (every calltune step runs in
    calltune:latest, which kfp.local cannot know is this environment), and task processes that log only calltune's
    progress and warnings (calltune/pipeline/quiet_kfp/sitecustomize.py). verbose: nothing changed."""
    if verbose:
        yield
        return
    root_logger, warnings_logger = logging.getLogger(), logging.getLogger("py.warnings")
    steps = _StepLines(root)

    def not_custom_image(record: logging.LogRecord) -> bool:
        return _CUSTOM_IMAGE not in record.getMessage()

    old_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(_TASK_SITE), *([old_path] if old_path else [])])
    logging.captureWarnings(True)
    root_logger.addFilter(steps)
    warnings_logger.addFilter(not_custom_image)
    try:
        yield
    finally:
        warnings_logger.removeFilter(not_custom_image)
        root_logger.removeFilter(steps)
        logging.captureWarnings(False)
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path


def _only_run_dir(root: Path) -> Path:
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    if len(runs) != 1:
        raise RuntimeError(f"expected one pipeline run under {root}, found {len(runs)}")
    return runs[0]


def task_outputs(run_dir: Path, task: str) -> dict[str, Any] | None:
    """A finished task's parameter outputs and artifact metadata, from its executor output file."""
    path = run_dir / task / "executor_output.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, Any] = dict(raw.get("parameterValues", {}))
    for name, group in raw.get("artifacts", {}).items():
        out[name] = group["artifacts"][0].get("metadata", {})
    return out


def summarize(cfg: Config, run_dir: Path) -> dict[str, Any]:
    from calltune.backends.registry import SecretNotFound, open_registry

    steps = {t: task_outputs(run_dir, t) for t in ("ingest", "translate", "turn-split", "sample", "coach", "synthesize",
                                                   "tune", "resolve-model", "evaluate", "gate", "deploy")}
    evaluation = steps["evaluate"] or {}
    accuracy = evaluation.get("Output")  # the evaluate component's return value, the gate metric
    deployed = steps["deploy"]
    # The gate step runs only past the threshold; its output is "promote" or the check that failed.
    verdict = (steps["gate"] or {}).get("Output")
    decided_by = ("threshold" if verdict is None else "all checks passed" if verdict == "promote" else verdict)
    comparison = run_dir / "evaluate" / "evaluation" / "comparison.json"
    compared = json.loads(comparison.read_text(encoding="utf-8")) if comparison.is_file() else {}
    checks = compared.get("gate", {}).get("checks", [])
    try:
        with closing(open_registry(cfg.deploy, cfg.state_path(), readonly=True)) as registry:
            versions = registry.list_versions(cfg.deploy.secret_id)
    except SecretNotFound:
        versions = []
    return {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "counts": {
            "ingest": (steps["ingest"] or {}).get("metrics", {}),
            "translate": (steps["translate"] or {}).get("metrics", {}),
            "turn_split": (steps["turn-split"] or {}).get("metrics", {}),
            "sample": (steps["sample"] or {}).get("metrics", {}),
            "synthesize": (steps["synthesize"] or {}).get("metrics", {}),
        },
        # The scorecard and the offline review's figures (calltune.coaching.step), and the coach's own report.
        "coach": (steps["coach"] or {}).get("metrics", {}),
        "coach_report": str(run_dir / "coach" / "coaching" / "report.html") if steps["coach"] else None,
        "tune": (steps["tune"] or {}).get("metrics", {}),
        "metrics": evaluation.get("metrics", {}),
        "gate": {"metric": "accuracy", "accuracy": accuracy, "threshold": cfg.evaluate.threshold,
                 "passed": deployed is not None, "decision": "promote" if deployed else "keep",
                 "decided_by": decided_by, "checks": checks},
        # Every compared model's gate metric with its 95% interval ({value, low, high, n}), or why it was skipped.
        "accuracy": {name: model["metrics"].get("accuracy") if "metrics" in model else {"skipped": model["skipped"]}
                     for name, model in compared.get("models", {}).items()},
        "report": str(run_dir / "evaluate" / "evaluation" / "report.html") if comparison.is_file() else None,
        # An evaluation-only run: the model evaluated instead of a tuned one (reference, kind, source, model_sha, ...).
        "evaluation_only": (steps["resolve-model"] or {}).get("model"),
        # new_version false: the secret's latest version already served this model (calltune.release.deploy.deploy).
        "promoted": ({"secret_id": cfg.deploy.secret_id, "version": deployed["version"],
                      "endpoint": deployed["endpoint"],
                      "new_version": any(v.version == deployed["version"] and v.annotations.get("run_id")
                                         == run_dir.name for v in versions)} if deployed else None),
        "serving_version": max((v.version for v in versions), default=None),
    }


def outcome(summary: dict[str, Any], cfg: Config, out: Path, same_state: str = "") -> list[str]:
    """The end of `calltune run` for a person: each model's score with its interval, the decision and the check
    that made it, what now serves, where the report is, and what to try next (with `same_state`: the options
    that point the next commands at this run's state folder and secret)."""
    lines = [""]
    accuracy = summary["accuracy"]  # tuned first, then what it is compared with (summary.json sorts its keys)
    for name, acc in sorted(accuracy.items(), key=lambda item: (item[0] != "tuned", item[0] != "base", item[0])):
        if acc and "skipped" in acc:
            lines.append(f"{name:<9} skipped: {acc['skipped']}")
        elif acc and acc.get("value") is not None:
            interval = f" [95% interval {acc['low']:.4f} to {acc['high']:.4f}]" if acc.get("low") is not None else ""
            lines.append(f"{name:<9} token accuracy {acc['value']:.4f}{interval} on {acc.get('n', '?')} test examples")
    gate, promoted = summary["gate"], summary["promoted"]
    if gate["accuracy"] is None:
        lines.append("no token accuracy: the evaluate step did not finish")
    else:
        lines.append(f"gate: accuracy {gate['accuracy']:.4f} vs threshold {gate['threshold']}; "
                     f"decided by: {gate['decided_by']}")
    lines += [f"  {c['check']}: {({True: 'pass', False: 'FAIL', None: 'skipped'})[c['passed']]} ({c['detail']})"
              for c in gate["checks"]]
    if promoted:
        lines.append(f"promoted as {promoted['secret_id']} version {promoted['version']}" if promoted["new_version"]
                     else f"promoted; {promoted['secret_id']} version {promoted['version']} already serves this model, "
                          f"no version added")
    else:
        prev = summary["serving_version"]
        lines.append(f"not promoted; {cfg.deploy.secret_id} stays at "
                     f"{'version ' + str(prev) if prev else 'no version (nothing deployed yet)'}")
    if evaluated := summary["evaluation_only"]:
        lines.append(f"evaluation-only run (no tuning) of {evaluated['reference']}: {evaluated['kind']} model "
                     f"{evaluated['source']}, sha {evaluated['model_sha']}")
    if coach := summary.get("coach"):
        grade = (f"grade estimate MAE {coach['grade_mae']:.2f} against {coach['grade_baseline_mae']:.2f} for always the "
                 f"mean" if "grade_mae" in coach else "no grade estimate")
        lines.append(f"coach: {coach.get('criteria', 0)} criteria, {coach.get('items', 0)} checklist items "
                     f"({coach.get('items_judged', 0)} beat their baseline); {grade}, on {coach.get('graded_test', 0)} "
                     f"graded test calls; report: {summary['coach_report']}")
    if summary.get("report"):
        lines.append(f"report:  {summary['report']}")
    if (card := Path(summary["run_dir"]) / "tune" / "model" / "README.md").is_file():
        lines.append(f"model card: {card}")
    lines.append(f"summary: {out / 'summary.json'}")
    same = f" {same_state}" if same_state else ""
    if not summary["serving_version"]:
        lines.append("nothing serves yet: tune longer (e.g. tune.epochs=2) or lower evaluate.threshold, run again; "
                     "then:")
    lines += ["next:", f"  calltune chat{same}    talk to the serving model, as the seller",
              f"  calltune serve{same}   an OpenAI-compatible API for it (http://127.0.0.1:8000/v1)"]
    return lines
