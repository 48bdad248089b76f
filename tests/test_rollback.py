"""Rollback and "keep the newest N enabled", on both registry backends, through deploy() and the CLI."""
from contextlib import closing

import pytest
from test_deploy import make_model

from calltune.backends.registry import VersionDisabled, VersionNotFound, open_registry
from calltune.cli import main
from calltune.config import DeployConfig
from calltune.release.deploy import deploy, rollback
from calltune.release.store import resolve_endpoint


@pytest.fixture(params=["sqlite", "secret-manager"])
def cfg(request):
    """The deploy config of a backend; Secret Manager is the real client against a loopback fake."""
    if request.param == "sqlite":
        yield DeployConfig()
        return
    pytest.importorskip("google.cloud.secretmanager_v1")
    from fakes.secret_manager import FakeSecretManager

    with FakeSecretManager(lifetime_s=60) as fake:
        yield DeployConfig(registry="secret-manager", project="calltune-test", endpoint=fake.endpoint,
                           retry_backoff_s=0.01, timeout_s=5)


def deploy_models(tmp_path, cfg, n: int) -> list[str]:
    """Deploy n distinct models as runs 1..n; their endpoints."""
    return [deploy(make_model(tmp_path / f"m{i}", f"weights {i}".encode()), cfg, tmp_path / "state",
                   run_id=f"run-{i}", metrics={"accuracy": i / 10})["endpoint"] for i in range(1, n + 1)]


def states(cfg, tmp_path) -> dict[int, str]:
    with closing(open_registry(cfg, tmp_path / "state")) as reg:
        return {v.version: v.state for v in reg.list_versions(cfg.secret_id)}


def test_rollback_adds_the_previous_endpoint_as_the_newest_version(tmp_path, cfg):
    a, b, c = deploy_models(tmp_path, cfg, 3)
    res = rollback(cfg, tmp_path / "state")
    assert res == {"secret_id": "llm-endpoint", "version": 4, "rolled_back_to": 2, "rolled_back_from": 3, "disabled": [],
                   "latest_was_disabled": False}
    assert resolve_endpoint(cfg, tmp_path / "state") == b
    with closing(open_registry(cfg, tmp_path / "state")) as reg:
        assert reg.get_version(cfg.secret_id, 4).annotations == {
            "run_id": "run-2", "model_sha": reg.get_version(cfg.secret_id, 2).annotations["model_sha"],
            "metric.accuracy": "0.2", "rollback_from": "3", "rollback_to": "2"}
        assert [reg.access(cfg.secret_id, n).decode() for n in (1, 2, 3)] == [a, b, c]  # nothing rewritten

    # Again: one more model back, not forward to the model the first rollback left (c), nor b's copy.
    assert rollback(cfg, tmp_path / "state")["rolled_back_to"] == 1
    assert resolve_endpoint(cfg, tmp_path / "state") == a
    with pytest.raises(ValueError, match="no earlier enabled version"):
        rollback(cfg, tmp_path / "state")
    assert len(states(cfg, tmp_path)) == 5


def test_rollback_skips_disabled_versions_and_takes_a_named_one(tmp_path, cfg):
    a, b, c = deploy_models(tmp_path, cfg, 3)
    with closing(open_registry(cfg, tmp_path / "state")) as reg:
        reg.disable(cfg.secret_id, 2)
    assert rollback(cfg, tmp_path / "state")["rolled_back_to"] == 1
    assert rollback(cfg, tmp_path / "state", to=3)["version"] == 5
    assert resolve_endpoint(cfg, tmp_path / "state") == c
    with pytest.raises(VersionDisabled, match="version 2 is disabled"):
        rollback(cfg, tmp_path / "state", to=2)
    with pytest.raises(ValueError, match="same endpoint as version 5, served now"):
        rollback(cfg, tmp_path / "state", to=3)
    with pytest.raises(VersionNotFound):
        rollback(cfg, tmp_path / "state", to=9)
    assert len(states(cfg, tmp_path)) == 5


def test_versions_older_than_the_newest_n_are_disabled_never_destroyed(tmp_path, cfg):
    cfg = cfg.model_copy(update={"keep_enabled_versions": 2})
    endpoints = deploy_models(tmp_path, cfg, 4)
    assert states(cfg, tmp_path) == {4: "ENABLED", 3: "ENABLED", 2: "DISABLED", 1: "DISABLED"}
    res = rollback(cfg, tmp_path / "state")  # to 3, the only other enabled one
    assert (res["rolled_back_to"], res["disabled"]) == (3, [3])
    assert states(cfg, tmp_path) == {5: "ENABLED", 4: "ENABLED", 3: "DISABLED", 2: "DISABLED", 1: "DISABLED"}
    with closing(open_registry(cfg, tmp_path / "state")) as reg:
        with pytest.raises(VersionDisabled):
            reg.access(cfg.secret_id, 1)
        reg.enable(cfg.secret_id, 1)  # disabled, not destroyed: enabling brings it back
        assert reg.access(cfg.secret_id, 1).decode() == endpoints[0]
    # A retried deploy changes nothing.
    again = deploy(tmp_path / "m4", cfg, tmp_path / "state", run_id="run-4", metrics={"accuracy": 0.4})
    assert (again["version"], again["created"]) == (4, False)


def test_cli_rollback(tmp_path, cfg, capsys):
    a, b = deploy_models(tmp_path, cfg, 2)
    overrides = [f"state_dir={tmp_path / 'state'}"] + [f"deploy.{k}={v}" for k, v in cfg.model_dump().items()]
    assert main(["rollback", *overrides]) == 0
    assert "llm-endpoint version 3 (now latest) holds version 1's endpoint" in capsys.readouterr().out
    assert resolve_endpoint(cfg, tmp_path / "state") == a
    assert main(["rollback", "--to", "7", *overrides]) == 1
    assert "version 7 not found" in capsys.readouterr().err


def test_rollback_with_the_latest_disabled_leaves_the_model_it_held(tmp_path, cfg, capsys):
    """A, B, C with C (the latest) disabled: B is the newest enabled model, so rollback goes to A, not to B."""
    a, b, c = deploy_models(tmp_path, cfg, 3)
    with closing(open_registry(cfg, tmp_path / "state")) as reg:
        reg.disable(cfg.secret_id, 3)
    res = rollback(cfg, tmp_path / "state")
    assert (res["rolled_back_to"], res["rolled_back_from"], res["latest_was_disabled"]) == (1, 2, True)
    assert resolve_endpoint(cfg, tmp_path / "state") == a


def test_rollback_after_a_model_is_promoted_again(tmp_path, cfg):
    """A, B, rollback (to A), B again, A again: a rollback goes back to B."""
    state = tmp_path / "state"
    a, b = deploy_models(tmp_path, cfg, 2)
    assert rollback(cfg, state)["rolled_back_to"] == 1
    for run, name in (("run-3", "m2"), ("run-4", "m1")):
        deploy(tmp_path / name, cfg, state, run_id=run, metrics={})
    assert [resolve_endpoint(cfg, state, str(n)) for n in range(1, 6)] == [a, b, a, b, a]
    assert rollback(cfg, state)["rolled_back_to"] == 4
    assert resolve_endpoint(cfg, state) == b
