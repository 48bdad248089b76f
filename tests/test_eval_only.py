"""Evaluation-only runs (evaluate.model): resolving the reference, deploying a model the secret already serves,
and, end to end under kfp.local, an evaluation-only run of the promoted model that reproduces its gate metric."""
import json
from contextlib import closing

import numpy as np
import pytest
from safetensors.numpy import save_file

from calltune.backends.registry import open_registry
from calltune.cli import main
from calltune.config import DeployConfig, load_config
from calltune.pipeline.local_run import run_local
from calltune.release.deploy import deploy, model_sha
from calltune.release.model_ref import ModelRefError, locate, resolve_model
from calltune.runtime.loading import MODEL_CARD

from conftest import make_example, write_examples
from fakes.secret_manager import FakeSecretManager


def plain_model(path, value: float = 0.0):
    """A Hugging Face model folder as resolution sees it: config.json and safetensors weights."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": np.full(4, value, dtype=np.float32)}, str(path / "model.safetensors"))
    return path


def tuned_model_folder(path, base, value: float = 1.0):
    """A tuned calltune model folder: peft adapter, tokenizer, and the model card naming its base folder."""
    path.mkdir(parents=True)
    save_file({"lora": np.full(4, value, dtype=np.float32)}, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text('{"r": 4}')
    (path / "tokenizer.json").write_text("{}")
    (path / MODEL_CARD).write_text(json.dumps({"base_model_path": str(base), "config": {"max_seq_len": 64}}))
    return path


@pytest.fixture
def models(tmp_path):
    base = plain_model(tmp_path / "base")
    return base, tuned_model_folder(tmp_path / "a", base), tuned_model_folder(tmp_path / "b", base, value=2.0)


def test_a_tuned_folder_is_copied_whole_and_keeps_its_sha(tmp_path, models):
    _, a, _ = models
    report = resolve_model(str(a), tmp_path / "out", DeployConfig(), tmp_path / "state")
    assert report == {"reference": str(a), "kind": "tuned", "source": str(a.resolve()), "model_sha": model_sha(a)}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in a.iterdir())


def test_a_plain_hugging_face_folder_is_evaluated_as_a_base_model(tmp_path, models):
    base, _, _ = models
    report = resolve_model(str(base), tmp_path / "out", DeployConfig(), tmp_path / "state")
    assert (report["kind"], report["model_sha"]) == ("base", model_sha(base))
    assert not (tmp_path / "out" / MODEL_CARD).exists()  # so evaluate scores it as a base model, with no base beside


def test_secret_latest_and_a_numbered_version_name_the_models_deployed_there(tmp_path, models):
    _, a, b = models
    state, cfg = tmp_path / "state", DeployConfig()
    first = deploy(a, cfg, state, run_id="run-1", metrics={})
    second = deploy(b, cfg, state, run_id="run-2", metrics={})
    latest = resolve_model("secret:latest", tmp_path / "latest", cfg, state)
    assert (latest["secret_version"], latest["model_sha"], latest["kind"]) == (2, second["model_sha"], "tuned")
    assert latest["source"] == str(state.resolve() / "models" / second["model_sha"])
    one = resolve_model("secret:1", tmp_path / "one", cfg, state)
    assert (one["secret_version"], one["model_sha"]) == (1, first["model_sha"]) == (1, model_sha(a))


def test_secret_versions_through_secret_manager(tmp_path, models):
    pytest.importorskip("google.cloud.secretmanager_v1")
    _, a, b = models
    with FakeSecretManager(lifetime_s=60) as fake:
        cfg = DeployConfig(registry="secret-manager", project="calltune-test", endpoint=fake.endpoint,
                           retry_backoff_s=0.01, timeout_s=2)
        first = deploy(a, cfg, tmp_path / "state", run_id="run-1", metrics={})
        deploy(b, cfg, tmp_path / "state", run_id="run-2", metrics={})
        fake.inject(503, 429)  # retried like every registry call
        ref = locate("secret:1", cfg, tmp_path / "state")
        assert (ref.secret_version, ref.source) == (1, str(tmp_path.resolve() / "state" / "models" / first["model_sha"]))
        with closing(open_registry(cfg, tmp_path / "state")) as registry:
            registry.disable(cfg.secret_id, 2)
        with pytest.raises(ModelRefError, match=r"evaluate.model='secret:latest'.*version 2.*disabled"):
            locate("secret:latest", cfg, tmp_path / "state")


def test_disabled_and_unknown_versions_are_clear_errors(tmp_path, models):
    _, a, b = models
    state, cfg = tmp_path / "state", DeployConfig()
    with pytest.raises(ModelRefError, match=r"secret:latest.*secret 'llm-endpoint' not found"):
        locate("secret:latest", cfg, state)  # nothing deployed yet
    deploy(a, cfg, state, run_id="run-1", metrics={})
    deploy(b, cfg, state, run_id="run-2", metrics={})
    with pytest.raises(ModelRefError, match=r"secret:7.*version 7 not found"):
        locate("secret:7", cfg, state)
    with closing(open_registry(cfg, state)) as registry:
        registry.disable(cfg.secret_id, 2)
    with pytest.raises(ModelRefError, match=r"secret:2.*version 2 is disabled"):
        locate("secret:2", cfg, state)
    # like Secret Manager, latest never falls back to an older version
    with pytest.raises(ModelRefError, match=r"secret:latest.*version 2 is disabled"):
        locate("secret:latest", cfg, state)
    assert locate("secret:1", cfg, state).secret_version == 1


@pytest.mark.parametrize("reference, message", [
    ("", "evaluate.model is empty"),
    ("secret:", "the version must be 'latest' or a number"),
    ("secret:newest", "the version must be 'latest' or a number"),
    ("secret:0", "the version must be 'latest' or a number"),
    ("projects/p/endpoints/e", r"not a Vertex endpoint \(projects/P/locations/L/endpoints/E\)"),
    ("no/such/folder", "no such model folder; expected a model folder, secret:latest"),
])
def test_malformed_references_are_refused(tmp_path, reference, message):
    with pytest.raises(ModelRefError, match=message):
        locate(reference, DeployConfig(), tmp_path)


def test_folders_that_hold_no_usable_model_are_refused(tmp_path, models):
    base, a, _ = models
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelRefError, match=r"empty.*no config.json"):
        locate(str(tmp_path / "empty"), DeployConfig(), tmp_path)
    (base / "model.safetensors").rename(base / "pytorch_model.bin")
    with pytest.raises(ModelRefError, match="no .safetensors weights"):
        locate(str(base), DeployConfig(), tmp_path)
    (base / "config.json").unlink()  # the adapter's base folder is gone
    with pytest.raises(ModelRefError, match=rf"{MODEL_CARD} field base_model_path: base model folder .* is missing"):
        locate(str(a), DeployConfig(), tmp_path)
    (a / MODEL_CARD).write_text("{not json")
    with pytest.raises(ModelRefError, match=rf"{MODEL_CARD} is not valid JSON"):
        locate(str(a), DeployConfig(), tmp_path)


def test_an_endpoint_becomes_a_model_folder_that_batch_inference_asks_and_deploy_publishes(tmp_path):
    pytest.importorskip("google.genai")
    from calltune.config import InferConfig
    from calltune.evaluation.batch_infer import predict

    from fakes.vertex import FakeVertex

    endpoint, state, cfg = "projects/p/locations/us-central1/endpoints/123", tmp_path / "state", DeployConfig()
    report = resolve_model(endpoint, tmp_path / "direct", cfg, state)
    assert (report["kind"], report["source"]) == ("endpoint", endpoint)
    assert json.loads((tmp_path / "direct" / MODEL_CARD).read_text()) == {"endpoint": endpoint}
    first = deploy(tmp_path / "direct", cfg, state, run_id="run-1", metrics={})
    assert first["endpoint"] == endpoint and not (state / "models").exists()  # nothing local to store

    # the same endpoint, from the secret: the version is read, and batch inference asks the endpoint
    report = resolve_model("secret:latest", tmp_path / "from-secret", cfg, state)
    assert (report["kind"], report["source"], report["secret_version"]) == ("endpoint", endpoint, 1)
    test = write_examples(tmp_path / "test.examples.jsonl", [make_example(0, [], "Hello, is this Ana?", "Yes.")])
    with FakeVertex() as fake:
        rows, _ = predict(tmp_path / "from-secret", test, None, InferConfig(vertex_base_url=fake.endpoint))
    assert [(r["model_id"], r["candidate_responses"]) for r in rows] == [(endpoint, "123 says: Hello, is this Ana?")]
    # promoted again, it is what the latest version already serves: no new version
    again = deploy(tmp_path / "from-secret", cfg, state, run_id="run-2", metrics={})
    assert (again["version"], again["created"]) == (1, False)


def test_deploying_the_model_the_latest_version_serves_adds_no_version(tmp_path, models):
    _, a, b = models
    state, cfg = tmp_path / "state", DeployConfig()
    first = deploy(a, cfg, state, run_id="run-1", metrics={"accuracy": 0.5})
    # an evaluation-only run of the champion, promoted: apps already get this model
    resolve_model("secret:latest", tmp_path / "champion", cfg, state)
    again = deploy(tmp_path / "champion", cfg, state, run_id="run-2", metrics={"accuracy": 0.5})
    assert (again["version"], again["created"], again["endpoint"]) == (1, False, first["endpoint"])
    deploy(b, cfg, state, run_id="run-3", metrics={})
    # an older model promoted again is a change: a new version, and its retry adds no other
    older = [deploy(tmp_path / "champion", cfg, state, run_id="run-4", metrics={}) for _ in range(2)]
    assert [(d["version"], d["created"]) for d in older] == [(3, True), (3, False)]
    with closing(open_registry(cfg, state)) as registry:
        assert [v.version for v in registry.list_versions(cfg.secret_id)] == [3, 2, 1]


def test_cli_refuses_a_bad_reference_before_running_anything(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), f"state_dir={tmp_path / 'state'}", "evaluate.model=secret:3"]) == 1
    assert "evaluate.model='secret:3'" in capsys.readouterr().err
    assert not out.exists()


# ---- end to end under kfp.local, with the real SmolLM2 ----

TINY = ["translate.backend=none", "sample.train_size=24", "sample.validation_size=0", "sample.test_size=8",
        "tune.max_steps=2", "tune.batch_size=4", "tune.max_seq_len=128", "evaluate.max_examples=8",
        "evaluate.threshold=0.0", "evaluate.compare=[champion]", "evaluate.bootstrap_samples=10",
        "evaluate.embedding_model=", "evaluate.samples=2", "infer.max_new_tokens=8",
        "simulate.adversarial=off"]  # the adversarial suite (30 lines a test call) is tested in test_realism.py


def test_evaluation_only_run_of_the_promoted_model_reproduces_its_gate_metric(tmp_path, base_model_state, capsys):
    state = tmp_path / "state"
    state.mkdir()
    (state / "base_models").symlink_to(base_model_state / "base_models")  # converted once per session
    tuned = run_local(load_config(None, [f"state_dir={state}", *TINY]), tmp_path / "tune-run")
    assert (tuned["promoted"]["version"], tuned["promoted"]["new_version"], tuned["evaluation_only"]) == (1, True, None)
    cfg = load_config(None, [f"state_dir={state}", *TINY])
    with closing(open_registry(cfg.deploy, state)) as registry:
        deployed_sha = registry.get_version(cfg.deploy.secret_id, 1).annotations["model_sha"]

    out = tmp_path / "eval-run"
    assert main(["run", "--out", str(out), f"state_dir={state}", *TINY, "evaluate.model=secret:latest"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    run_dir = out / "pipeline_root" / summary["run"]
    assert not (run_dir / "tune").exists() and not (run_dir / "synthesize").exists()
    evaluated = summary["evaluation_only"]
    assert evaluated == {"reference": "secret:latest", "kind": "tuned", "secret_version": 1,
                         "source": str(state.resolve() / "models" / deployed_sha), "model_sha": deployed_sha}
    assert f"evaluation-only run (no tuning) of secret:latest: tuned model {evaluated['source']}, sha {deployed_sha}" \
        in printed
    # the same test split, the same weights: teacher-forced accuracy is deterministic on CPU
    assert summary["gate"]["accuracy"] == pytest.approx(tuned["gate"]["accuracy"], abs=1e-6)
    # the champion is the evaluated model itself: its check compares it with itself and passes
    checks = {c["check"]: c["passed"] for c in summary["gate"]["checks"]}
    assert checks == {"evaluation": True, "threshold": True, "base": None, "champion": True}
    assert summary["metrics"]["champion_accuracy"] == summary["gate"]["accuracy"]
    # deploy ran, and the secret already served this model: no second version
    assert summary["promoted"] == {**tuned["promoted"], "new_version": False}
    assert summary["serving_version"] == 1
    assert "version 1 already serves this model, no version added" in printed
