"""The pipeline factory and the compiled YAML (structure only; running it is in test_pipeline_run.py)."""
import subprocess
import sys
from pathlib import Path

import yaml

from calltune import components
from calltune.config import Config, load_config
from calltune.pipelines import build_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _compile(tmp_path, *overrides) -> dict:
    out = tmp_path / "pipeline.yaml"
    subprocess.run([sys.executable, "compile.py", "--output", str(out), *overrides], cwd=ROOT, check=True,
                   capture_output=True)
    return yaml.safe_load(out.read_text()), out.read_bytes()


def test_compiled_yaml_gates_deploy_on_the_threshold_parameter(tmp_path):
    spec, _ = _compile(tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    gate = next(t for t in tasks.values() if "triggerPolicy" in t)
    condition = gate["triggerPolicy"]["condition"]
    assert "evaluate-Output" in condition and ">=" in condition and "evaluate_threshold" in condition
    inner = spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
    # inside it, the gate step's verdict (margin over base, tolerance to champion) guards deploy in turn
    assert inner["gate"]["inputs"]["artifacts"]["evaluation"] == {"componentInputArtifact": "pipelinechannel--evaluate-evaluation"}
    nested = next(t for name, t in inner.items() if name != "gate")
    assert "gate-Output" in nested["triggerPolicy"]["condition"] and "promote" in nested["triggerPolicy"]["condition"]
    assert list(spec["components"][nested["componentRef"]["name"]]["dag"]["tasks"]) == ["deploy"]
    # deploy and the gate run only inside the conditions
    assert "deploy" not in tasks and "gate" not in tasks


def test_every_parameter_has_the_config_default_and_a_description(tmp_path):
    spec, _ = _compile(tmp_path, "evaluate.threshold=0.6")
    params = spec["root"]["inputDefinitions"]["parameters"]
    expected = load_config(ROOT / "configs" / "local.yaml", ["evaluate.threshold=0.6"]).pipeline_params()
    assert set(params) == set(expected)
    assert params["evaluate_threshold"]["defaultValue"] == 0.6
    assert all(p.get("description") for p in params.values())


def test_compile_is_deterministic(tmp_path):
    _, first = _compile(tmp_path)
    _, second = _compile(tmp_path)
    assert first == second


def test_components_consume_every_config_field_and_nothing_else():
    params = set(Config().pipeline_params())
    inputs = set()
    for name in components.__all__[1:]:
        inputs |= set(getattr(components, name).component_spec.inputs or {})
    config_like = {i for i in inputs if i.split("_")[0] in {"data", "translate", "split", "sample", "tune",
                                                             "infer", "evaluate", "judge", "deploy", "seed",
                                                             "state"}}
    assert config_like <= params, config_like - params            # no component asks for a field that isn't there
    assert params - inputs == set()                                # every field is used by some step


def test_unknown_target_is_refused():
    import pytest

    with pytest.raises(ValueError, match="target"):
        build_pipeline("kubernetes")


def _model_wiring(spec: dict) -> tuple[dict, str]:
    """(top-level tasks, the task whose model deploy publishes, traced through both conditions)."""
    tasks = spec["root"]["dag"]["tasks"]
    outer = next(t for t in tasks.values() if "triggerPolicy" in t)
    inner = spec["components"][outer["componentRef"]["name"]]["dag"]["tasks"]
    nested = next(t for name, t in inner.items() if name != "gate")
    deploy = spec["components"][nested["componentRef"]["name"]]["dag"]["tasks"]["deploy"]
    channel = deploy["inputs"]["artifacts"]["model"]["componentInputArtifact"]
    assert nested["inputs"]["artifacts"][channel] == {"componentInputArtifact": channel}
    return tasks, outer["inputs"]["artifacts"][channel]["taskOutputArtifact"]["producerTask"]


def test_evaluation_only_dag_resolves_the_model_instead_of_synthesizing_and_tuning(tmp_path):
    spec, _ = _compile(tmp_path, "evaluate.model=secret:latest")
    tasks, deployed = _model_wiring(spec)
    assert "resolve-model" in tasks and not {"synthesize", "tune"} & set(tasks)
    for name in ("batch-infer", "evaluate"):  # the test split comes straight from sample
        assert tasks[name]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "resolve-model"
        assert tasks[name]["inputs"]["artifacts"]["splits"]["taskOutputArtifact"]["producerTask"] == "sample"
    assert deployed == "resolve-model"
    assert tasks["resolve-model"]["inputs"]["parameters"]["evaluate_model"] == {"componentInputParameter": "evaluate_model"}
    assert spec["root"]["inputDefinitions"]["parameters"]["evaluate_model"]["defaultValue"] == "secret:latest"


def test_tuning_dag_has_no_resolve_step(tmp_path):
    spec, _ = _compile(tmp_path)
    tasks, deployed = _model_wiring(spec)
    assert {"synthesize", "tune"} <= set(tasks) and "resolve-model" not in tasks
    for name in ("batch-infer", "evaluate"):
        assert tasks[name]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "tune"
        assert tasks[name]["inputs"]["artifacts"]["splits"]["taskOutputArtifact"]["producerTask"] == "synthesize"
    assert deployed == "tune"
