"""The promotion gate: each check decides on its own, NaN never promotes, and the nested dsl.If runs under kfp.local."""
import json
import math

import pytest
from kfp import dsl, local
from kfp.dsl import Artifact, Output

from calltune.components import IMAGE
from calltune.components import gate as gate_component
from calltune.config import EvaluateConfig
from calltune.evaluation.gate import decide, gate
from calltune.pipeline.local_run import task_outputs

CFG = EvaluateConfig(threshold=0.4, min_gain_over_base=0.02, champion_tolerance=0.01)


def test_promotes_when_every_check_passes():
    d = decide({"tuned": 0.50, "base": 0.45, "champion": 0.505}, CFG)
    assert d["decision"] == "promote" and d["decided_by"] == "all checks passed"
    assert [c["check"] for c in d["checks"]] == ["evaluation", "threshold", "base", "champion"]
    assert all(c["passed"] for c in d["checks"])


@pytest.mark.parametrize("accuracy, decided_by", [
    ({"tuned": 0.39, "base": 0.10, "champion": 0.10}, "threshold"),
    ({"tuned": 0.46, "base": 0.45, "champion": 0.10}, "base"),       # above the threshold, but not 2 points over base
    ({"tuned": 0.50, "base": 0.40, "champion": 0.52}, "champion"),   # worse than the champion beyond the tolerance
    ({"tuned": 0.50, "base": None, "champion": 0.40}, "base"),       # the base evaluation failed: no comparison
])
def test_keeps_the_current_model_and_names_the_check(accuracy, decided_by):
    d = decide(accuracy, CFG)
    assert d["decision"] == "keep" and d["decided_by"] == decided_by
    failed = next(c for c in d["checks"] if c["check"] == decided_by)
    assert failed["passed"] is False and failed["detail"]


@pytest.mark.parametrize("bad", [math.nan, None, math.inf])
def test_a_failed_or_nan_evaluation_never_promotes(bad):
    d = decide({"tuned": bad, "base": 0.1, "champion": 0.1}, EvaluateConfig(threshold=0.0))
    assert d["decision"] == "keep" and d["decided_by"] == "evaluation"
    assert decide({"tuned": 0.9, "base": 0.1, "champion": math.nan}, CFG)["decided_by"] == "champion"


def test_skipped_checks_do_not_block():
    d = decide({"tuned": 0.5, "base": 0.1}, CFG, skipped={"champion": "nothing deployed yet"})
    assert d["decision"] == "promote"
    assert d["checks"][-1] == {"check": "champion", "passed": None, "detail": "skipped: nothing deployed yet"}
    only_threshold = EvaluateConfig(threshold=0.4, compare=[])
    assert decide({"tuned": 0.41}, only_threshold)["decision"] == "promote"
    assert decide({"tuned": 0.41, "base": 0.9}, only_threshold)["decision"] == "promote"  # base not compared


def test_gate_reads_the_comparison_file(tmp_path):
    comparison = {"models": {"tuned": {"metrics": {"accuracy": {"value": 0.5}}},
                             "base": {"metrics": {"accuracy": {"value": 0.49}}},
                             "champion": {"skipped": "nothing deployed yet"}}}
    (tmp_path / "comparison.json").write_text(json.dumps(comparison))
    assert gate(tmp_path / "comparison.json", CFG)["decided_by"] == "base"
    comparison["models"]["tuned"]["metrics"]["accuracy"]["value"] = None  # NaN is written as null
    (tmp_path / "comparison.json").write_text(json.dumps(comparison))
    assert gate(tmp_path / "comparison.json", CFG)["decided_by"] == "evaluation"


# ---- the nested condition under kfp.local, with stand-ins for evaluate and deploy and the real gate component

@dsl.component(base_image=IMAGE)
def stand_in_evaluate(accuracy: float, base: float, evaluation: Output[Artifact]) -> float:
    import json
    from pathlib import Path

    Path(evaluation.path).mkdir(parents=True, exist_ok=True)
    (Path(evaluation.path) / "comparison.json").write_text(json.dumps({"models": {
        "tuned": {"metrics": {"accuracy": {"value": accuracy}}},
        "base": {"metrics": {"accuracy": {"value": base}}},
        "champion": {"skipped": "nothing deployed"}}}))
    return accuracy


@dsl.component(base_image=IMAGE)
def stand_in_deploy(accuracy: float) -> float:
    return accuracy


@dsl.pipeline(name="gate-check")
def gated(accuracy: float, base: float, threshold: float):
    evaluation = stand_in_evaluate(accuracy=accuracy, base=base)
    with dsl.If(evaluation.outputs["Output"] >= threshold, name="accuracy-gate"):
        decision = gate_component(evaluation=evaluation.outputs["evaluation"], evaluate_threshold=threshold,
                                  evaluate_min_gain_over_base=0.05, evaluate_champion_tolerance=0.0,
                                  evaluate_compare=["base", "champion"])
        with dsl.If(decision.output == "promote", name="comparison-gate"):
            stand_in_deploy(accuracy=evaluation.outputs["Output"])


@pytest.mark.parametrize("base, promoted", [(0.3, True), (0.48, False)])
def test_nested_condition_runs_under_kfp_local(tmp_path, base, promoted):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    gated(accuracy=0.5, base=base, threshold=0.4)
    run_dir = next(tmp_path.iterdir())
    assert task_outputs(run_dir, "gate")["Output"] == ("promote" if promoted else "base")
    deployed = task_outputs(run_dir, "stand-in-deploy")
    assert (deployed is not None) is promoted
    if promoted:
        assert deployed["Output"] == 0.5
