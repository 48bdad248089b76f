"""End to end under kfp.local with the real SmolLM2, on a tiny slice of the bundled calls.

Runs the compiled YAML itself (loaded back with load_component_from_file) with a threshold that
promotes, then `calltune run` with a threshold no model can reach: the secret must keep its version. Each test has
a state folder of its own (sharing only the converted base model), so neither depends on the other or its order.
"""
import json
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from kfp import components, local

from calltune.backends.registry import open_registry
from calltune.config import load_config
from calltune.release.store import model_path_from_endpoint
from calltune.runtime.loading import model_sha

ROOT = Path(__file__).resolve().parents[1]
TINY = ["sample.train_size=24", "sample.validation_size=0", "sample.test_size=8", "tune.max_steps=2",
        "tune.batch_size=4", "tune.max_seq_len=128", "evaluate.max_examples=8",
        "simulate.adversarial=off"]  # the adversarial suite (30 lines a test call) is tested in test_realism.py


@pytest.fixture
def state_dir(tmp_path, base_model_state):
    """A state folder of this test's own that already holds the converted base model (conversion is tested
    elsewhere): its registry starts empty whatever the other tests did."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "base_models").symlink_to(base_model_state / "base_models", target_is_directory=True)
    return state


def test_compiled_pipeline_promotes_when_accuracy_clears_the_threshold(tmp_path, state_dir):
    yaml_path = tmp_path / "calltune.yaml"
    subprocess.run([sys.executable, "compile.py", "--output", str(yaml_path), f"state_dir={state_dir}",
                    "evaluate.threshold=0.0", *TINY], cwd=ROOT, check=True, capture_output=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    components.load_component_from_file(str(yaml_path))()  # every parameter from the compiled defaults

    cfg = load_config(None, [f"state_dir={state_dir}"])
    with closing(open_registry(cfg.deploy, cfg.state_path())) as registry:
        versions = registry.list_versions(cfg.deploy.secret_id)
        endpoint = registry.access(cfg.deploy.secret_id, "latest").decode()
    run_dir = next((tmp_path / "root").iterdir())
    model_dir = run_dir / "tune" / "model"
    assert (model_dir / "adapter_model.safetensors").exists()
    # One version, publishing the model this run tuned (its store copy: the same files), annotated with the
    # accuracy the evaluate step measured.
    assert [v.version for v in versions] == [1]
    served = model_path_from_endpoint(endpoint)
    assert model_sha(served) == model_sha(model_dir)
    comparison = json.loads((run_dir / "evaluate" / "evaluation" / "comparison.json").read_text())
    accuracy = comparison["models"]["tuned"]["metrics"]["accuracy"]["value"]
    assert float(versions[0].annotations["metric.accuracy"]) == pytest.approx(accuracy)
    assert comparison["gate"]["decision"] == "promote"
    # The coach step's scorecard: the bundled export's 4 criteria and 9 items; the model carries it, and so does
    # the promoted copy that is served.
    scorecard = json.loads((run_dir / "coach" / "coaching" / "scorecard.json").read_text())
    assert (len(scorecard["criteria"]), sum(len(c["items"]) for c in scorecard["criteria"])) == (4, 9)
    assert json.loads((served / "coach" / "scorecard.json").read_text()) == scorecard
    assert "## Coaching" in (model_dir / "README.md").read_text()
    assert "<h2>Coaching</h2>" in (run_dir / "evaluate" / "evaluation" / "report.html").read_text()


def test_cli_run_keeps_the_serving_version_below_the_threshold(tmp_path, state_dir):
    cfg = load_config(None, [f"state_dir={state_dir}"])
    serving = (tmp_path / "serving-model").as_uri()  # a version already serves (its folder is gone: no champion)
    with closing(open_registry(cfg.deploy, cfg.state_path())) as registry:
        registry.add_version(cfg.deploy.secret_id, serving.encode())
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "calltune.cli", "run", "--out", str(out), f"state_dir={state_dir}",
                           "evaluate.threshold=1.0", *TINY], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gate"]["passed"] is False and summary["promoted"] is None
    assert 0.0 <= summary["gate"]["accuracy"] <= 1.0
    assert summary["counts"]["sample"]["overlap_calls"] == 0
    assert summary["counts"]["ingest"]["quarantined"] > 0  # the bundled sample carries deliberate defects
    assert (summary["coach"]["criteria"], summary["coach"]["items"]) == (4, 9)
    assert "coach: 4 criteria, 9 checklist items" in proc.stdout
    assert summary["serving_version"] == 1
    with closing(open_registry(cfg.deploy, cfg.state_path(), readonly=True)) as registry:
        assert [v.version for v in registry.list_versions(cfg.deploy.secret_id)] == [1]
        assert registry.access(cfg.deploy.secret_id, "latest").decode() == serving
    assert "not promoted" in proc.stdout
    # A log for people: no kfp executor dumps or custom-image warnings (all still there with --verbose) ...
    log = proc.stdout + proc.stderr
    assert "executor_input" not in log and "attemping to run a task that uses custom" not in log
    assert "Executing task 'tune'" in log and "tune: done" in log  # one line per step's start and end
    # ... ending with each model's score and interval, the check that decided, the report and what to do next.
    base = summary["accuracy"]["base"]
    end = proc.stdout[proc.stdout.index("\ntuned "):]
    assert f"base      token accuracy {base['value']:.4f} [95% interval {base['low']:.4f} to {base['high']:.4f}]" in end
    assert "decided by: threshold" in end and f"report:  {summary['report']}" in end
    assert Path(summary["report"]).is_file()
    assert end.rstrip().splitlines()[-2:] == [f"  calltune chat state_dir={state_dir}    talk to the serving model, as the seller",
                                              f"  calltune serve state_dir={state_dir}   an OpenAI-compatible API for it (http://127.0.0.1:8000/v1)"]
    # The run's model folder holds the completed model card.
    card = (Path(summary["run_dir"]) / "tune" / "model" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "Gate decision: kept out" in card
