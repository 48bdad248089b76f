"""deploy.target=vertex-endpoint: the real aiplatform and openai clients against a loopback fake of the Model
Registry, endpoints and the vLLM chat route, with 429s, 500s and lost answers. One endpoint per secret, one upload
per model, the old model undeployed only after the new one answers, the secret naming the endpoint; rollback
re-points traffic and secret; apps chat through the endpoint."""
import json
from contextlib import closing
from pathlib import Path

import pytest

from calltune.backends.registry import open_registry
from calltune.backends.vertex_endpoint import EndpointChat, EndpointError
from calltune.cli import main
from calltune.config import DeployConfig, GcpConfig
from calltune.release.deploy import model_sha
from calltune.release.endpoint_deploy import deploy_to_endpoint, rollback, serves_on_endpoint

from fakes.vertex_endpoints import FakeVertexEndpoints


@pytest.fixture
def fake():
    with FakeVertexEndpoints() as f:
        yield f


@pytest.fixture
def env(tmp_path, fake):
    mount = tmp_path / "gcs"
    state = mount / "bucket" / "state"  # on Vertex, state_dir is a /gcs/ folder
    gcp = GcpConfig(project="test-project", api_endpoint=fake.endpoint)
    cfg = DeployConfig(target="vertex-endpoint", max_retries=3, retry_backoff_s=0.01, timeout_s=5)

    def model(name: str, merged: bool = False) -> Path:
        d = mount / "bucket" / "runs" / name
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(name.encode())
        (d / "adapter_config.json").write_text(json.dumps({"r": 8}))
        (d / "calltune_model.json").write_text(json.dumps({"base_model_path": str(mount / "bucket/state/base")}))
        if merged:
            (d / "merged").mkdir()
            (d / "merged" / "model.safetensors").write_bytes(name.encode())
        return d

    def deploy(model_dir: Path, run_id: str) -> dict:
        return deploy_to_endpoint(model_dir, cfg, gcp, state, run_id=run_id, metrics={"accuracy": 0.5}, mount=mount)

    def versions():
        with closing(open_registry(cfg, state)) as r:
            return [(v, r.access(cfg.secret_id, v.version).decode()) for v in r.list_versions(cfg.secret_id)]

    class Env:
        pass
    e = Env()
    e.gcp, e.cfg, e.model, e.deploy, e.versions, e.state = gcp, cfg, model, deploy, versions, state
    return e


def _display(model_dir: Path) -> str:
    return f"calltune-{model_sha(model_dir)}"


def _answer(fake, endpoint: str) -> str:
    return EndpointChat(endpoint, api_endpoint=fake.endpoint, max_retries=3).reply(
        [{"role": "user", "content": "How much is it?"}])


def test_promotions_reuse_one_endpoint_and_undeploy_the_old_model_only_after_the_new_one_answers(fake, env):
    first, second = env.model("m1"), env.model("m2", merged=True)
    one = env.deploy(first, "run-1")
    two = env.deploy(second, "run-2")
    assert len(fake.endpoints) == 1 and one["endpoint"] == two["endpoint"] == next(iter(fake.endpoints))
    assert [u["model"]["displayName"] for u in fake.uploads] == [_display(first), _display(second)]
    # The adapter rides on its base as LoRA module "customer"; a merged model is served whole under that name.
    # Served from the model store, which outlives the run's folder (vLLM reads the files whenever a replica starts).
    lora_args, merged_args = (u["model"]["containerSpec"]["args"] for u in fake.uploads)
    one_sha, two_sha = model_sha(first), model_sha(second)
    assert f"--lora-modules=customer=gs://bucket/state/models/{one_sha}" in lora_args
    assert "--model=gs://bucket/state/base" in lora_args
    assert f"--model=gs://bucket/state/models/{two_sha}/merged" in merged_args and "--served-model-name=customer" in merged_args
    assert (env.state / "models" / one_sha / "adapter_model.safetensors").read_bytes() == b"m1"
    endpoint = fake.endpoints[one["endpoint"]]
    assert [d["model"] for d in endpoint["deployedModels"]] == [two["vertex_model"]]
    paths = [(r.method, r.path.rsplit("/", 1)[-1], r.status) for r in fake.requests]
    last_probe = max(i for i, p in enumerate(paths) if p == ("POST", "completions", 200))
    undeploy = paths.index(("POST", f"{one['endpoint'].rsplit('/', 1)[-1]}:undeployModel", 200))
    assert last_probe < undeploy  # the old model left only once the new one had answered
    versions = env.versions()
    assert [(v.version, payload) for v, payload in versions] == [(2, two["endpoint"]), (1, one["endpoint"])]
    assert versions[0][0].annotations["vertex_model"] == two["vertex_model"]
    assert _answer(fake, two["endpoint"]) == f"{_display(second)} says: How much is it?"
    assert serves_on_endpoint(env.cfg.model_copy(update={"target": "auto"}), env.state)


def test_faults_and_lost_answers_never_make_a_second_endpoint_upload_or_version(fake, env):
    first = env.model("m1")
    fake.inject(429, 500)  # the first two calls fail outright
    for route in (":upload", "/endpoints", ":deployModel"):  # each change made, its answer lost
        fake.lose_answer(lambda method, path, route=route: method == "POST" and path.endswith(route))
    result = env.deploy(first, "run-1")
    assert len(fake.uploads) == 1 and len(fake.endpoints) == 1
    assert len(fake.endpoints[result["endpoint"]]["deployedModels"]) == 1
    # The whole step retried (the pipeline's own retry): nothing new anywhere.
    fake.lose_answer(lambda method, path: path.endswith("/chat/completions"))
    again = env.deploy(first, "run-1")
    assert again["version"] == result["version"] == 1 and not again["created"]
    assert len(fake.uploads) == 1 and len(fake.endpoints) == 1 and len(env.versions()) == 1
    # Another run promoting the model already served (an evaluation-only run of the champion): nothing changes.
    assert not env.deploy(first, "run-2")["created"] and len(env.versions()) == 1 and len(fake.uploads) == 1


def test_a_model_that_does_not_answer_is_taken_off_and_the_champion_keeps_serving(fake, env):
    first, second = env.model("m1"), env.model("m2")
    one = env.deploy(first, "run-1")
    fake.silent.add(_display(second))
    with pytest.raises(EndpointError, match="did not answer"):
        env.deploy(second, "run-2")
    assert fake.serving(one["endpoint"]) == one["vertex_model"]
    assert [d["model"] for d in fake.endpoints[one["endpoint"]]["deployedModels"]] == [one["vertex_model"]]
    assert [v.version for v, _ in env.versions()] == [1]  # the secret never named the silent model


def test_rollback_puts_the_previous_model_back_on_the_endpoint_and_in_the_secret(fake, env):
    first, second = env.model("m1"), env.model("m2")
    one = env.deploy(first, "run-1")
    env.deploy(second, "run-2")
    fake.inject(503)
    fake.lose_answer(lambda method, path: path.endswith(":undeployModel"))
    # `calltune rollback` with the default deploy.target=auto sees that the secret names a Vertex model
    assert main(["rollback", f"state_dir={env.state}", "deploy.registry=sqlite", "deploy.max_retries=3",
                 "deploy.retry_backoff_s=0.01", "gcp.project=test-project", f"gcp.api_endpoint={fake.endpoint}"]) == 0
    assert len(fake.uploads) == 2  # re-deployed, not re-uploaded
    assert [d["model"] for d in fake.endpoints[one["endpoint"]]["deployedModels"]] == [one["vertex_model"]]
    latest, payload = env.versions()[0]
    assert (latest.version, latest.annotations["rollback_to"], latest.annotations["rollback_from"]) == (3, "1", "2")
    assert payload == one["endpoint"] and latest.annotations["vertex_model"] == one["vertex_model"]
    assert _answer(fake, one["endpoint"]).startswith(_display(first))
    with pytest.raises(ValueError, match="no earlier enabled version"):  # m2 was left by a rollback: not a target
        rollback(env.cfg, env.gcp, env.state)


def test_apps_chat_through_the_endpoint_despite_429_500_and_a_lost_answer(fake, env):
    served = env.deploy(env.model("m1"), "run-1")
    fake.inject(429, 500)
    fake.lose_answer(lambda method, path: path.endswith("/chat/completions"))
    chat = EndpointChat(served["endpoint"], api_endpoint=fake.endpoint, max_retries=4)
    assert chat.reply([{"role": "user", "content": "Hi"}]).endswith("says: Hi")
    with pytest.raises(ValueError, match="not a Vertex endpoint"):
        EndpointChat("file:///models/abc")


def test_a_state_dir_outside_cloud_storage_is_refused_before_any_call(fake, env, tmp_path):
    with pytest.raises(ValueError, match="not on Cloud Storage"):  # the model store must be where Vertex reads
        deploy_to_endpoint(env.model("m1"), env.cfg, env.gcp, tmp_path / "local-state", run_id="run-1",
                           metrics={}, mount=tmp_path / "gcs")
    assert fake.requests == []


def test_calltune_serve_answers_through_the_endpoint_the_secret_names(fake, env):
    from fastapi.testclient import TestClient

    from calltune.apps.serve.app import create_app
    from calltune.apps.serve.watcher import Watcher, load_responder
    from calltune.config import ServeConfig
    from calltune.runtime.responders import EndpointResponder

    first = env.model("m1")
    env.deploy(first, "run-1")
    cfg = ServeConfig(vertex_base_url=fake.endpoint)
    watcher = Watcher(env.cfg, env.state, 60, lambda endpoint: load_responder(endpoint, cfg))
    watcher.start()
    try:
        assert isinstance(watcher.current.responder, EndpointResponder)  # not Gemini's generateContent
        client = TestClient(create_app(watcher, cfg))
        fake.inject(429, 500)
        fake.lose_answer(lambda method, path: path.endswith("/chat/completions"))
        answer = client.post("/v1/chat/completions", json={"model": env.cfg.secret_id, "messages": [
            {"role": "system", "content": "You are Ana, a buyer."}, {"role": "user", "content": "How much is it?"}]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"] == f"{_display(first)} says: How much is it?"
        sent = [r.body for r in fake.answered() if r.path.endswith("/chat/completions")][-1]
        assert sent["model"] == "customer" and sent["messages"][0] == {"role": "system", "content": "You are Ana, a buyer."}
        with client.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "Hi"}], "stream": True}) as streamed:
            body = "".join(streamed.iter_text())
        assert body.count("data: ") >= 3 and "says:" in body and body.rstrip().endswith("data: [DONE]")
    finally:
        watcher.stop()
