import shutil

import pytest

from calltune.backends.registry import SqliteRegistry
from calltune.config import DeployConfig
from calltune.release.deploy import deploy
from calltune.release.store import model_path_from_endpoint, resolve_endpoint


def make_model(path, weights: bytes = b"\x00\x01weights"):
    (path / "tokenizer").mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(weights)
    (path / "adapter_config.json").write_text('{"r": 16}')
    (path / "tokenizer" / "tokenizer.json").write_text("{}")
    return path


def test_deploy_stores_the_model_and_publishes_its_endpoint(tmp_path):
    model, state = make_model(tmp_path / "run1" / "model"), tmp_path / "state"
    res = deploy(model, DeployConfig(), state, run_id="run1", metrics={"accuracy": 0.5, "loss": 2.25})
    assert res["created"] and res["version"] == 1 and res["secret_id"] == "llm-endpoint"
    store = model_path_from_endpoint(res["endpoint"])
    assert store.parent == (state / "models").resolve() and store.name == res["model_sha"] and len(store.name) == 16
    for f in model.rglob("*"):
        if f.is_file():
            assert (store / f.relative_to(model)).read_bytes() == f.read_bytes()
    assert resolve_endpoint(DeployConfig(), state) == res["endpoint"] == store.as_uri()
    with SqliteRegistry(state / "registry.sqlite") as reg:
        assert reg.access("llm-endpoint", 1) == res["endpoint"].encode()
        ann = reg.get_version("llm-endpoint", 1).annotations
    assert ann == {"run_id": "run1", "model_sha": res["model_sha"], "metric.accuracy": "0.5", "metric.loss": "2.25"}


def test_retried_deploy_of_the_same_run_adds_no_version(tmp_path):
    model, state = make_model(tmp_path / "model"), tmp_path / "state"
    first = deploy(model, DeployConfig(), state, run_id="run1", metrics={"accuracy": 0.5})
    again = deploy(model, DeployConfig(), state, run_id="run1", metrics={"accuracy": 0.5})
    assert again == {**first, "created": False}
    with SqliteRegistry(state / "registry.sqlite") as reg:
        assert len(reg.list_versions("llm-endpoint")) == 1


def test_new_model_becomes_latest_and_old_version_stays(tmp_path):
    state = tmp_path / "state"
    a = deploy(make_model(tmp_path / "a"), DeployConfig(), state, run_id="run1", metrics={})
    b = deploy(make_model(tmp_path / "b", b"other weights"), DeployConfig(), state, run_id="run2", metrics={})
    assert (b["version"], b["created"]) == (2, True) and b["model_sha"] != a["model_sha"]
    assert resolve_endpoint(DeployConfig(), state) == b["endpoint"]
    assert resolve_endpoint(DeployConfig(), state, "1") == a["endpoint"]
    # the same files deployed by another run reuse the store entry but still get their own version
    c = deploy(make_model(tmp_path / "c"), DeployConfig(), state, run_id="run3", metrics={})
    assert (c["version"], c["endpoint"]) == (3, a["endpoint"])
    assert sorted(p.name for p in (state / "models").iterdir()) == sorted({a["model_sha"], b["model_sha"]})


def test_endpoint_survives_deleting_the_run_folder(tmp_path):
    model, state = make_model(tmp_path / "run" / "model"), tmp_path / "state"
    deploy(model, DeployConfig(), state, run_id="run1", metrics={})
    shutil.rmtree(tmp_path / "run")
    path = model_path_from_endpoint(resolve_endpoint(DeployConfig(), state))
    assert (path / "adapter_model.safetensors").read_bytes() == b"\x00\x01weights"


def test_bad_model_folder_and_endpoint_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        deploy(tmp_path / "missing", DeployConfig(), tmp_path / "state", run_id="r", metrics={})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        deploy(tmp_path / "empty", DeployConfig(), tmp_path / "state", run_id="r", metrics={})
    with pytest.raises(ValueError, match="not a local file:// model folder"):
        model_path_from_endpoint("gs://bucket/model")
    with pytest.raises(FileNotFoundError, match="is missing"):
        model_path_from_endpoint((tmp_path / "gone").as_uri())
