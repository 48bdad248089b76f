"""Deploying to Google Secret Manager: the real google-cloud-secret-manager client (REST) against a loopback fake
of the v1 API, with injected 429s, 5xx, timeouts and adds that commit but never answer.

The registry semantics both backends share (numbering, `latest`, disable/enable, errors) are in test_registry.py.
"""
import json
import logging
import random
import threading
from contextlib import closing

import pytest
from test_deploy import make_model

from calltune.backends.registry import RegistryError, open_registry
from calltune.config import DeployConfig
from calltune.release.deploy import deploy, rollback
from calltune.release.store import resolve_endpoint

from fakes import HANG, every
from fakes.secret_manager import MAX_ANNOTATIONS_BYTES, FakeSecretManager

pytest.importorskip("google.cloud.secretmanager_v1")

SECRET = "projects/calltune-test/secrets/llm-endpoint"


@pytest.fixture
def fake():
    with FakeSecretManager(lifetime_s=60) as f:
        yield f


def smcfg(fake, **kw) -> DeployConfig:
    return DeployConfig(**{"registry": "secret-manager", "project": "calltune-test", "endpoint": fake.endpoint,
                           "retry_backoff_s": 0.01, "timeout_s": 0.5, **kw})


def records(fake) -> dict[int, dict]:
    """Version -> the annotations calltune recorded for it on the secret."""
    ann = fake.secrets[SECRET]["annotations"]
    return {int(k[len("calltune-v"):]): json.loads(v)["annotations"] for k, v in ann.items() if k.startswith("calltune-v")}


def pending_marks(fake) -> list[str]:
    return [k for k in fake.secrets[SECRET]["annotations"] if k.startswith("calltune-pending-")]


def test_deploy_adds_a_version_holding_the_endpoint_with_run_model_and_metrics(tmp_path, fake):
    cfg, state = smcfg(fake), tmp_path / "state"
    res = deploy(make_model(tmp_path / "m"), cfg, state, run_id="run-1", metrics={"accuracy": 0.5, "loss": 2.25})
    assert (res["version"], res["created"]) == (1, True)
    assert fake.payloads(SECRET) == [res["endpoint"].encode()]
    assert fake.secrets[SECRET]["replication"] == {"automatic": {}}  # created on first deploy
    assert records(fake) == {1: {"run_id": "run-1", "model_sha": res["model_sha"], "metric.accuracy": "0.5",
                                 "metric.loss": "2.25"}}
    assert pending_marks(fake) == []
    assert resolve_endpoint(cfg, state) == res["endpoint"]
    with closing(open_registry(cfg, state)) as reg:
        assert reg.get_version("llm-endpoint").annotations["run_id"] == "run-1"

    again = deploy(make_model(tmp_path / "m2"), cfg, state, run_id="run-1", metrics={"accuracy": 0.5, "loss": 2.25})
    assert again == {**res, "created": False}
    assert fake.calls(":addVersion") == 1


@pytest.mark.parametrize("fault", [HANG, 500, 503])
def test_an_add_that_commits_but_fails_is_found_instead_of_added_twice(tmp_path, fake, fault, caplog):
    caplog.set_level(logging.DEBUG)
    cfg = smcfg(fake)
    first = deploy(make_model(tmp_path / "a"), cfg, tmp_path, run_id="run-1", metrics={"accuracy": 0.5})
    fake.commit_then(fault)  # run-2's add is stored, but its answer is a timeout or an error
    second = deploy(make_model(tmp_path / "b", b"b weights"), cfg, tmp_path, run_id="run-2", metrics={"accuracy": 0.6})
    assert (second["version"], second["created"]) == (2, True)
    assert fake.payloads(SECRET) == [first["endpoint"].encode(), second["endpoint"].encode()]
    assert [r.status for r in fake.requests if r.path.endswith(":addVersion")] == [200, None if fault == HANG else fault]
    assert records(fake)[2] == {"run_id": "run-2", "model_sha": second["model_sha"], "metric.accuracy": "0.6"}
    assert pending_marks(fake) == []
    assert "added by an earlier attempt" in caplog.text
    assert second["endpoint"] not in caplog.text and first["endpoint"] not in caplog.text  # payloads never logged


def test_a_rerun_after_a_crash_mid_add_finds_the_version(tmp_path, fake):
    """The deploy step dies after the service stored its version (here: it gives up at once); KFP retries it."""
    model = make_model(tmp_path / "m")
    fake.commit_then(HANG)
    with pytest.raises(RegistryError, match="add a version to llm-endpoint gave up after 1 attempts"):
        deploy(model, smcfg(fake, max_retries=0), tmp_path, run_id="run-1", metrics={})
    assert len(fake.payloads(SECRET)) == 1 and len(pending_marks(fake)) == 1

    res = deploy(model, smcfg(fake), tmp_path, run_id="run-1", metrics={})
    assert res["version"] == 1 and fake.payloads(SECRET) == [res["endpoint"].encode()]
    assert fake.calls(":addVersion") == 0  # found, not added again
    assert records(fake) == {1: {"run_id": "run-1", "model_sha": res["model_sha"]}} and pending_marks(fake) == []


@pytest.mark.parametrize("seed", range(3))
def test_random_429_5xx_and_timeouts_never_lose_or_duplicate_a_version(tmp_path, fake, seed):
    rng = random.Random(seed)
    # A third of the requests fail before doing anything; some adds are stored but fail anyway. (Seeded: the
    # same requests fail on every run.)
    fake.inject(*(rng.choice([None] * 10 + [429, 500, 503, 504, HANG]) for _ in range(120)))
    fake.commit_then(*(rng.choice([None, 500, HANG]) for _ in range(4)))
    cfg = smcfg(fake, max_retries=6, timeout_s=0.2)
    results = []
    for i in range(4):
        model = make_model(tmp_path / f"m{i}", f"weights {i}".encode())
        results.append(deploy(model, cfg, tmp_path, run_id=f"run-{i}", metrics={"accuracy": i / 10}))
        assert deploy(model, cfg, tmp_path, run_id=f"run-{i}", metrics={"accuracy": i / 10})["version"] == i + 1
    assert [r["version"] for r in results] == [1, 2, 3, 4]
    assert fake.payloads(SECRET) == [r["endpoint"].encode() for r in results]
    assert {v: a["run_id"] for v, a in records(fake).items()} == {i + 1: f"run-{i}" for i in range(4)}
    assert pending_marks(fake) == []
    assert len(fake.answered()) < len(fake.requests)  # faults did happen


def test_gives_up_after_max_retries_naming_the_call(tmp_path, fake):
    fake.fail_when(lambda body: True, 503)
    with pytest.raises(RegistryError, match=r"get secret llm-endpoint gave up after 3 attempts \(deploy.max_retries=2\)"):
        deploy(make_model(tmp_path / "m"), smcfg(fake, max_retries=2), tmp_path, run_id="r", metrics={})
    assert len(fake.requests) == 3


def test_concurrent_deploys_keep_each_others_records(tmp_path):
    with FakeSecretManager(latency_s=0.01, lifetime_s=60) as fake:
        cfg = smcfg(fake, timeout_s=5)
        models = [make_model(tmp_path / f"m{i}", f"weights {i}".encode()) for i in range(4)]
        results = {}

        def run(i):
            results[i] = deploy(models[i], cfg, tmp_path / "state", run_id=f"run-{i}", metrics={})

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r["version"] for r in results.values()) == [1, 2, 3, 4]
        assert {v: a["run_id"] for v, a in records(fake).items()} == {r["version"]: f"run-{i}" for i, r in results.items()}
        assert sorted(fake.payloads(SECRET)) == sorted(r["endpoint"].encode() for r in results.values())


def test_old_records_are_dropped_to_stay_under_the_16kib_annotation_limit(tmp_path, fake):
    metrics = {f"metric_{k:02d}_with_a_long_name": 0.123456789 for k in range(12)}  # ~700 bytes per version
    with closing(open_registry(smcfg(fake), tmp_path)) as reg:
        for i in range(1, 41):
            reg.add_version("llm-endpoint", f"endpoint-{i}".encode(),
                            annotations={"run_id": f"run-{i}", **{k: str(v) for k, v in metrics.items()}},
                            request_id=f"run-{i}")
        kept = records(fake)
        annotations = fake.secrets[SECRET]["annotations"]
        assert sum(len(k) + len(v) for k, v in annotations.items()) < MAX_ANNOTATIONS_BYTES
        assert 40 in kept and 1 not in kept and sorted(kept) == list(range(41 - len(kept), 41))
        assert len(fake.payloads(SECRET)) == 40 and reg.access("llm-endpoint", 1) == b"endpoint-1"  # versions stay
        assert reg.get_version("llm-endpoint", 1).annotations == {}
        assert reg.get_version("llm-endpoint", 40).annotations["run_id"] == "run-40"


def test_missing_project_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs deploy.project"):
        open_registry(DeployConfig(registry="secret-manager"), tmp_path)


@pytest.mark.parametrize("n, status", [(2, 429), (3, 500), (3, 503)])
def test_deploy_and_rollback_complete_when_every_nth_request_fails(tmp_path, fake, n, status):
    """A fault retries its own request, not the sequence before it, so a fixed fault cycle cannot starve the add;
    a 429 is sent again at once, a 5xx (which may have stored the version) after looking for it."""
    fake.fail_when(every(n), status)
    cfg, state = smcfg(fake, retry_backoff_s=0.001), tmp_path / "state"
    a, b = (deploy(make_model(tmp_path / f"m{i}", f"weights {i}".encode()), cfg, state, run_id=f"run-{i}",
                   metrics={})["endpoint"] for i in range(2))
    assert rollback(cfg, state)["rolled_back_to"] == 1
    assert fake.payloads(SECRET) == [a.encode(), b.encode(), a.encode()]  # nothing added twice
    assert pending_marks(fake) == [] and "calltune-lease" not in fake.secrets[SECRET]["annotations"]
    assert sum(r.status == status for r in fake.requests) >= len(fake.requests) // n - 1
