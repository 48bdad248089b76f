"""deploy.target=vertex-endpoint: the real aiplatform (v1 GAPIC, REST) and openai clients against strict loopback
fakes of Vertex AI (Model Registry, endpoints, long-running operations, the vLLM chat route) and Secret Manager.

One endpoint per secret and one upload per model, under IDs derived from them; the new model deployed beside the old
with a canary share, checked to answer by its own name, then all the traffic in one update, then the secret's new
version, then the sweep. Every scenario (clean, every 2nd request 429, every 3rd 503, lost answers on upload,
endpoint create, deployModel, undeployModel and the traffic update, a pending deployment listed or not) runs deploy,
deploy again and rollback, and ends with the registry and the endpoint agreeing. Reruns after a failure complete
without doing anything twice; `calltune secrets --check` shows drift; apps chat through the endpoint."""
import json
import logging
from collections import Counter
from contextlib import closing, contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from calltune.backends.registry import RegistryError, open_registry
from calltune.backends.vertex_endpoint import EndpointChat, EndpointError, VertexEndpoints
from calltune.cli import main
from calltune.config import DeployConfig, GcpConfig
from calltune.release.deploy import model_sha
from calltune.release.endpoint_deploy import deploy_to_endpoint, rollback, serves_on_endpoint

from fakes import every
from fakes.secret_manager import FakeSecretManager
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
        return _model(mount, name, merged)

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


def test_promotions_reuse_one_endpoint_and_serve_each_model_under_its_own_name(fake, env):
    first, second = env.model("m1"), env.model("m2", merged=True)
    one = env.deploy(first, "run-1")
    two = env.deploy(second, "run-2")
    assert len(fake.endpoints) == 1 and one["endpoint"] == two["endpoint"] == next(iter(fake.endpoints))
    assert one["endpoint"].endswith("/endpoints/calltune-llm-endpoint")  # an ID derived from the secret
    assert [u["model"]["displayName"] for u in fake.uploads] == [_display(first), _display(second)]
    assert [u["modelId"] for u in fake.uploads] == [_display(first), _display(second)]  # IDs derived from the shas
    # The adapter rides on its base as LoRA module "customer"; a merged model is served whole under that name. Each
    # also answers to its own name, which its replies carry. Served from the model store, which outlives the run's
    # folder (vLLM reads the files whenever a replica starts).
    lora_args, merged_args = (u["model"]["containerSpec"]["args"] for u in fake.uploads)
    one_sha, two_sha = model_sha(first), model_sha(second)
    lora = lora_args[lora_args.index("--lora-modules") + 1:]
    store = f"gs://bucket/state/models/{one_sha}"
    assert lora == [f"customer={store}", f"{_display(first)}={store}"]
    assert "--model=gs://bucket/state/base" in lora_args
    assert f"--model=gs://bucket/state/models/{two_sha}/merged" in merged_args
    assert merged_args[merged_args.index("--served-model-name") + 1:] == [_display(second), "customer"]
    assert (env.state / "models" / one_sha / "adapter_model.safetensors").read_bytes() == b"m1"
    assert fake.serving(one["endpoint"]) == {two["vertex_model"]: 100}
    assert two["undeployed"] == [f"{one['endpoint']}: {fake.deploys[0]['deployedModel']['id']}"]
    versions = env.versions()
    assert [(v.version, payload) for v, payload in versions] == [(2, two["endpoint"]), (1, one["endpoint"])]
    assert versions[0][0].annotations["vertex_model"] == two["vertex_model"]
    assert _answer(fake, two["endpoint"]) == f"{_display(second)} says: How much is it?"
    assert serves_on_endpoint(env.cfg.model_copy(update={"target": "auto"}), env.state)


def test_traffic_moves_last_in_one_update_once_the_new_model_itself_answered(fake, env):
    first, second = env.model("m1"), env.model("m2", merged=True)
    one = env.deploy(first, "run-1")
    old, before = fake.deploys[0]["deployedModel"]["id"], len(fake.requests)
    seen = []  # (request, secret versions, traffic on the endpoint) as each request arrives

    def observe(body) -> bool:
        kind = next((k for k in ("deployedModel", "messages", "deployedModelId", "trafficSplit") if k in (body or {})),
                    None)
        if kind:
            traffic = dict(fake.endpoints[one["endpoint"]]["trafficSplit"])
            seen.append((kind, body, len(env.versions()), traffic))
        return False
    fake.fail_when(observe, 500)
    env.deploy(second, "run-2")
    new = fake.deploys[1]["deployedModel"]["id"]
    kinds = [k for k, *_ in seen]
    deploying, patch, undeploy = (kinds.index(k) for k in ("deployedModel", "trafficSplit", "deployedModelId"))
    assert seen[deploying][1]["trafficSplit"] == {"0": 10, old: 90}  # beside the old model, a canary share
    assert deploying < patch < undeploy and kinds.count("trafficSplit") == 1
    assert all(traffic.get(old, 0) >= 90 for k, _, _, traffic in seen[:patch] if k == "messages")
    # The check asked for the new model by its own name, which only it serves: a reply proves it answered.
    asked = [r for r in fake.requests[before:] if r.path.endswith("/chat/completions")]
    assert {r.body["model"] for r in asked} == {_display(second)} and asked[-1].status == 200
    assert seen[patch][1:3] == ({"trafficSplit": {new: 100}}, 1)  # all of it, and the secret not yet changed
    assert seen[undeploy][1]["deployedModelId"] == old and seen[undeploy][2] == 2  # after the secret's new version


def test_a_step_retried_whole_or_run_again_for_the_served_model_makes_nothing_new(fake, env):
    first = env.model("m1")
    fake.inject(429, 500)  # the first two calls fail outright
    for route in (":upload", "/endpoints", ":deployModel"):  # each change made, its answer lost
        fake.lose_answer(lambda method, path, route=route: method == "POST" and path.endswith(route))
    result = env.deploy(first, "run-1")
    assert len(fake.uploads) == 1 and len(fake.endpoints) == 1 and len(fake.deploys) == 1
    assert len(fake.endpoints[result["endpoint"]]["deployedModels"]) == 1
    # The whole step retried (the pipeline's own retry): nothing new anywhere.
    fake.lose_answer(lambda method, path: path.endswith("/chat/completions"))
    again = env.deploy(first, "run-1")
    assert again["version"] == result["version"] == 1 and not again["created"]
    assert (len(fake.uploads), len(fake.endpoints), len(fake.deploys), len(env.versions())) == (1, 1, 1, 1)
    # Another run promoting the model already served (an evaluation-only run of the champion): nothing changes.
    assert not env.deploy(first, "run-2")["created"] and len(env.versions()) == 1 and len(fake.deploys) == 1


def test_a_model_that_does_not_answer_is_taken_off_and_the_champion_keeps_serving(fake, env):
    first, second, silent = env.model("m1"), env.model("m2"), env.model("m0")
    fake.silent.add(_display(silent))
    with pytest.raises(EndpointError, match="did not answer.*the sweep undeployed"):  # a first promotion: no champion
        env.deploy(silent, "run-0")
    assert [e["deployedModels"] for e in fake.endpoints.values()] == [[]] and fake.deploys  # nothing left billed
    one = env.deploy(first, "run-1")
    fake.silent.add(_display(second))
    with pytest.raises(EndpointError, match="did not answer.*the secret is unchanged, and the sweep undeployed"):
        env.deploy(second, "run-2")
    assert fake.serving(one["endpoint"]) == {one["vertex_model"]: 100}  # the only model, with all the traffic
    assert [v.version for v, _ in env.versions()] == [1]  # the secret never named a silent model
    fake.silent.add(_display(first))  # the champion stops answering; its run is retried: it alone serves, and stays
    with pytest.raises(EndpointError, match="did not answer.*the secret is unchanged"):
        env.deploy(first, "run-1")
    assert fake.serving(one["endpoint"]) == {one["vertex_model"]: 100}


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
    assert fake.serving(one["endpoint"]) == {one["vertex_model"]: 100}
    latest, payload = env.versions()[0]
    assert (latest.version, latest.annotations["rollback_to"], latest.annotations["rollback_from"]) == (3, "1", "2")
    assert payload == one["endpoint"] and latest.annotations["vertex_model"] == one["vertex_model"]
    assert latest.annotations["deployed_model_id"] == fake.deploys[2]["deployedModel"]["id"]
    assert _answer(fake, one["endpoint"]).startswith(_display(first))
    with pytest.raises(ValueError, match="no earlier enabled version"):  # m2 was left by a rollback: not a target
        rollback(env.cfg, env.gcp, env.state)


def test_a_rollback_to_a_model_uploaded_before_models_had_their_own_name_is_refused_before_any_change(fake, env):
    first, second = env.model("m1"), env.model("m2")
    one = env.deploy(first, "run-1")
    env.deploy(second, "run-2")
    spec = fake.models[one["vertex_model"]]["containerSpec"]  # as the previous calltune uploaded it
    spec["args"] = [a for a in spec["args"][:spec["args"].index("--lora-modules")]] + [
        f"--lora-modules=customer=gs://bucket/state/models/{model_sha(first)}"]
    with pytest.raises(EndpointError, match="uploaded before calltune served each model under its own name"):
        rollback(env.cfg, env.gcp, env.state)
    assert len(fake.deploys) == 2 and len(env.versions()) == 2


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


# ---- the faults real Google APIs produce: every scenario runs deploy, deploy again and rollback ----

SECRET = "projects/test-project/secrets/llm-endpoint"
SCENARIOS = {  # name -> (every n-th request fails: (n, status), routes whose answer is lost once a step, fake options)
    "clean": (None, (), {}),
    "every 2nd request 429": ((2, 429), (), {}),
    "every 3rd request 503": ((3, 503), (), {}),
    "lost upload answer": (None, ("POST :upload",), {}),
    "lost endpoint create answer": (None, ("POST /endpoints",), {}),
    "lost deployModel answer": (None, ("POST :deployModel",), {}),
    "lost undeployModel answer": (None, ("POST :undeployModel",), {}),
    "lost traffic update answer": (None, ("PATCH endpoints/",), {}),
    "pending deployment listed": (None, ("POST :deployModel",), {"op_steps": 6, "list_pending": True}),
    "pending deployment not listed": (None, ("POST :deployModel",), {"op_steps": 6, "list_pending": False}),
}


def _route(rule: str):
    method, route = rule.split(" ")
    if route.endswith("/"):  # a path under that collection
        return lambda m, path: m == method and f"/{route}" in path and ":" not in path.rsplit("/", 1)[-1]
    return lambda m, path: m == method and path.endswith(route)


@contextmanager
def _cloud(tmp_path, **options):
    """Strict fakes of Vertex AI and Secret Manager, and the deploy settings that point at them."""
    with FakeVertexEndpoints(**options) as fake, FakeSecretManager() as sm:
        mount = tmp_path / "gcs"
        c = SimpleNamespace(fake=fake, sm=sm, mount=mount, state=mount / "bucket" / "state",
                            gcp=GcpConfig(project="test-project", api_endpoint=fake.endpoint),
                            cfg=DeployConfig(target="vertex-endpoint", registry="secret-manager",
                                             project="test-project", endpoint=sm.endpoint, max_retries=3,
                                             retry_backoff_s=0.001, timeout_s=5))
        c.overrides = [f"state_dir={c.state}", "deploy.registry=secret-manager", "deploy.project=test-project",
                       f"deploy.endpoint={sm.endpoint}", "deploy.max_retries=3", "deploy.retry_backoff_s=0.001",
                       "gcp.project=test-project", f"gcp.api_endpoint={fake.endpoint}"]
        c.deploy = lambda model_dir, run_id, cfg=c.cfg: deploy_to_endpoint(model_dir, cfg, c.gcp, c.state,
                                                                           run_id=run_id, metrics={}, mount=mount)
        yield c


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_deploy_deploy_again_and_rollback_leave_the_registry_and_the_endpoint_agreeing(tmp_path, scenario):
    fault, lost, options = SCENARIOS[scenario]
    with _cloud(tmp_path, **options) as c:
        if fault:
            c.fake.fail_when(every(fault[0]), fault[1])
            c.sm.fail_when(every(fault[0]), fault[1])
        first, second = _model(c.mount, "m1"), _model(c.mount, "m2", merged=True)

        def step(call):
            for rule in lost:  # each step meets each lost answer once, wherever it sends that request
                c.fake.lose_answer(_route(rule))
            try:
                return call()
            finally:
                c.fake.forget_lost_answers()

        step(lambda: c.deploy(first, "run-1"))
        step(lambda: c.deploy(second, "run-2"))
        step(lambda: rollback(c.cfg, c.gcp, c.state))
        c.fake.heal()
        c.sm.heal()
        _assert_agree(c, versions=3, shas={model_sha(first), model_sha(second)})
        assert (len(c.fake.uploads), len(c.fake.deploys)) == (2, 3)  # nothing done twice: one deployment a step
        assert _latest_enabled(c.cfg, c.state).annotations["model_sha"] == model_sha(first)  # rolled back


def test_a_deploy_that_failed_after_the_traffic_moved_completes_on_a_rerun_and_check_shows_the_drift(tmp_path, capsys):
    with _cloud(tmp_path) as c:
        first, second = _model(c.mount, "m1"), _model(c.mount, "m2")
        c.deploy(first, "run-1")
        c.sm.fail_when(lambda body: "payload" in (body or {}), 503)  # Secret Manager refuses to add versions
        with pytest.raises(RegistryError, match="gave up"):
            c.deploy(second, "run-2")
        # The new model took all the traffic, but the secret still names the first, which stays deployed.
        assert main(["secrets", "--check", *c.overrides]) == 1
        out = capsys.readouterr().out
        assert "drift: version 1's model, the latest enabled, takes 0% of the traffic, not 100%" in out
        assert f"calltune-llm-endpoint: deployed model {c.fake.deploys[1]['deployedModel']['id']} " \
               f"({_display(second)}) takes 100% of the traffic; the latest enabled version does not name it" in out
        c.sm.heal()
        c.deploy(second, "run-2")
        assert main(["secrets", "--check", *c.overrides]) == 0
        out = capsys.readouterr().out
        assert "in agreement" in out and "deployed, 100% of the traffic (latest enabled)" in out
        _assert_agree(c, versions=2, shas={model_sha(first), model_sha(second)})
        assert len(c.fake.deploys) == 2


def test_a_rollback_after_a_failed_sweep_puts_back_the_model_still_deployed_without_deploying_it_again(tmp_path):
    with _cloud(tmp_path) as c:
        first, second = _model(c.mount, "m1"), _model(c.mount, "m2")
        c.deploy(first, "run-1")
        c.fake.fail_when(lambda body: "deployedModelId" in (body or {}), 500)  # undeploys keep failing
        with pytest.raises(EndpointError, match="gave up"):
            c.deploy(second, "run-2")  # published; the first model stays deployed, outside the traffic split
        c.fake.heal()
        assert main(["secrets", "--check", *c.overrides]) == 1
        rollback(c.cfg, c.gcp, c.state)
        assert len(c.fake.deploys) == 2  # the first model's deployment is used again: a canary share, then all
        _assert_agree(c, versions=3, shas={model_sha(first), model_sha(second)})


def test_check_refuses_a_secret_that_names_no_vertex_model_without_calling_vertex(tmp_path, capsys):
    assert main(["secrets", "--check", f"state_dir={tmp_path}"]) == 1
    assert "no version names a Vertex model" in capsys.readouterr().err


def test_a_rerun_after_a_run_died_while_its_deployment_ran_waits_for_that_deployment(tmp_path):
    with _cloud(tmp_path, op_steps=8) as c:
        first, second = _model(c.mount, "m1"), _model(c.mount, "m2")
        c.deploy(first, "run-1")
        c.fake.outage_after(lambda method, path: path.endswith(":deployModel"))  # the run dies right after it
        with pytest.raises(EndpointError, match="gave up"):
            c.deploy(second, "run-2")
        assert len(c.fake.pending()) == 1  # the deployment, still under way and not listed on the endpoint
        c.fake.heal()
        c.deploy(second, "run-2")
        assert len(c.fake.deploys) == 2  # found again by name and waited for, never sent twice
        _assert_agree(c, versions=2, shas={model_sha(first), model_sha(second)})


def test_an_endpoint_made_before_ids_is_adopted_and_duplicates_are_emptied_then_deleted(tmp_path, caplog):
    with _cloud(tmp_path, op_steps=1) as c:
        label = {"calltune-secret": "llm-endpoint"}
        legacy = c.fake.add_endpoint("calltune-llm-endpoint", label)  # a server-chosen number
        first, second = _model(c.mount, "m1"), _model(c.mount, "m2")
        one = c.deploy(first, "run-1")
        assert one["endpoint"] == legacy and list(c.fake.endpoints) == [legacy]  # adopted: none created
        duplicate = c.fake.add_endpoint("calltune-llm-endpoint", label, models=(one["vertex_model"],))  # a lost create
        with caplog.at_level(logging.WARNING, logger="calltune.release.endpoint_deploy"):
            two = c.deploy(second, "run-2")
        assert two["duplicates"] == [duplicate] and c.fake.endpoints[duplicate]["deployedModels"] == []
        reported = [r.getMessage() for r in caplog.records if duplicate in r.getMessage()]
        assert len(reported) == 1 and "deploy.sweep_endpoints=true deletes them" in reported[0]
        c.fake.lose_answer(lambda method, path: method == "DELETE")  # deleted by then: a retry meets NOT_FOUND
        rollback(c.cfg.model_copy(update={"sweep_endpoints": True}), c.gcp, c.state)
        assert duplicate not in c.fake.endpoints
        assert [r.status for r in c.fake.requests if r.method == "DELETE"] == [200, 404]  # the first answer lost
        _assert_agree(c, versions=3, shas={model_sha(first), model_sha(second)})


def test_a_sweep_never_empties_the_endpoint_the_secret_names(fake, env):
    one = env.deploy(env.model("m1"), "run-1")
    with pytest.raises(EndpointError, match="not deployed there: nothing swept"):
        VertexEndpoints(env.gcp, env.cfg).sweep(one["endpoint"], "1234567890", "projects/p/locations/l/models/other",
                                                delete_empty=True)
    assert fake.serving(one["endpoint"]) == {one["vertex_model"]: 100}


def _model(mount: Path, name: str, merged: bool = False) -> Path:
    d = mount / "bucket" / "runs" / name
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(name.encode())
    (d / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (d / "calltune_model.json").write_text(json.dumps({"base_model_path": str(mount / "bucket/state/base")}))
    if merged:
        (d / "merged").mkdir()
        (d / "merged" / "model.safetensors").write_bytes(name.encode())
    return d


def _latest_enabled(cfg, state):
    with closing(open_registry(cfg, state)) as r:
        return next(v for v in r.list_versions(cfg.secret_id) if v.state == "ENABLED")


def _assert_agree(c, *, versions: int, shas: set[str]) -> None:
    """One endpoint; one model per sha; one deployed model, with all the traffic, the one the latest enabled version
    names; nothing under way; as many versions as deploys plus rollbacks."""
    fake, cfg, state = c.fake, c.cfg, c.state
    assert len(fake.endpoints) == 1, sorted(fake.endpoints)
    endpoint = next(iter(fake.endpoints.values()))
    per_sha = Counter(m["labels"]["calltune-model"] for m in fake.models.values())
    assert set(per_sha) == shas and set(per_sha.values()) == {1}, per_sha
    assert len(endpoint["deployedModels"]) == 1, endpoint["deployedModels"]
    deployed = endpoint["deployedModels"][0]
    assert endpoint["trafficSplit"] == {deployed["id"]: 100}
    latest = _latest_enabled(cfg, state)
    with closing(open_registry(cfg, state)) as r:
        assert r.access(cfg.secret_id, latest.version).decode() == endpoint["name"]
        assert len(r.list_versions(cfg.secret_id)) == versions
    assert (latest.annotations["vertex_model"], latest.annotations["deployed_model_id"]) == \
        (deployed["model"], deployed["id"])
    assert fake.pending() == []
