"""`calltune run`: the whole pipeline under kfp.local, then a summary.json of what happened."""
from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Any

from calltune.config import Config
from calltune.io import write_json


def run_local(cfg: Config, out: Path) -> dict[str, Any]:
    from kfp import local

    from calltune.pipelines import build_pipeline

    if cfg.evaluate.model:  # a bad reference fails here, before the data steps run
        from calltune.model_ref import locate

        locate(cfg.evaluate.model, cfg.deploy, cfg.state_path())
    out.mkdir(parents=True, exist_ok=True)
    root = (out / "pipeline_root").resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    build_pipeline("local", cfg)(**cfg.pipeline_params())
    summary = summarize(cfg, _only_run_dir(root))
    write_json(out / "summary.json", summary)
    return summary


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

    steps = {t: task_outputs(run_dir, t) for t in ("ingest", "translate", "turn-split", "sample", "synthesize", "tune",
                                                   "resolve-model", "evaluate", "gate", "deploy")}
    evaluation = steps["evaluate"] or {}
    accuracy = evaluation.get("Output")  # the evaluate component's return value, the gate metric
    deployed = steps["deploy"]
    # The gate step runs only past the threshold; its output is "promote" or the check that failed.
    verdict = (steps["gate"] or {}).get("Output")
    decided_by = ("threshold" if verdict is None else "all checks passed" if verdict == "promote" else verdict)
    comparison = run_dir / "evaluate" / "evaluation" / "comparison.json"
    checks = json.loads(comparison.read_text(encoding="utf-8"))["gate"]["checks"] if comparison.is_file() else []
    try:
        with closing(open_registry(cfg.deploy, cfg.state_path())) as registry:
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
        "tune": (steps["tune"] or {}).get("metrics", {}),
        "metrics": evaluation.get("metrics", {}),
        "gate": {"metric": "accuracy", "accuracy": accuracy, "threshold": cfg.evaluate.threshold,
                 "passed": deployed is not None, "decision": "promote" if deployed else "keep",
                 "decided_by": decided_by, "checks": checks},
        # An evaluation-only run: the model evaluated instead of a tuned one (reference, kind, source, model_sha, ...).
        "evaluation_only": (steps["resolve-model"] or {}).get("model"),
        # new_version false: the secret's latest version already served this model (calltune.deploy.deploy).
        "promoted": ({"secret_id": cfg.deploy.secret_id, "version": deployed["version"],
                      "endpoint": deployed["endpoint"],
                      "new_version": any(v.version == deployed["version"] and v.annotations.get("run_id")
                                         == run_dir.name for v in versions)} if deployed else None),
        "serving_version": max((v.version for v in versions), default=None),
    }
