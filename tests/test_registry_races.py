"""Deploys and rollbacks racing in separate processes: no lost update, no model published twice; read-only
commands never take the write lock; half-copied store folders of killed deploys are swept."""
import multiprocessing
import subprocess
import sys
import threading
from contextlib import closing

import pytest
from test_deploy import make_model

from calltune.backends.registry import REGISTRY_FILE, open_registry
from calltune.cli import main
from calltune.config import DeployConfig
from calltune.release.deploy import deploy, rollback

TRIALS = 20
_barrier = None


def _init(barrier) -> None:
    global _barrier
    _barrier = barrier


def _rollback(cfg: DeployConfig, state) -> dict:
    _barrier.wait(30)  # both processes start their rollback together
    return rollback(cfg, state)


def _deploy(cfg: DeployConfig, model, state, run_id: str) -> dict:
    _barrier.wait(30)
    return deploy(model, cfg, state, run_id=run_id, metrics={})


@pytest.fixture(scope="module")
def pool():
    ctx = multiprocessing.get_context("fork")  # the workers start once for all trials
    with ctx.Pool(2, _init, (ctx.Barrier(2),)) as pool:
        yield pool


def _versions(cfg, state):
    with closing(open_registry(cfg, state, readonly=cfg.registry == "sqlite")) as reg:
        return reg.list_versions(cfg.secret_id)


@pytest.fixture(params=["sqlite", "secret-manager"])
def backend(request):
    """(deploy config, trials): Secret Manager is the real client against a loopback fake, fewer trials (slower)."""
    if request.param == "sqlite":
        yield DeployConfig(), TRIALS
        return
    pytest.importorskip("google.cloud.secretmanager_v1")
    from fakes.secret_manager import FakeSecretManager

    with FakeSecretManager(lifetime_s=120) as fake:
        yield DeployConfig(registry="secret-manager", project="races", endpoint=fake.endpoint,
                           retry_backoff_s=0.01, timeout_s=5), 4


def test_concurrent_rollbacks_never_lose_an_update(tmp_path, pool, backend):
    base, trials = backend
    models = [make_model(tmp_path / f"m{i}", f"weights {i}".encode()) for i in range(3)]
    for trial in range(trials):
        cfg = base.model_copy(update={"secret_id": f"rollback-{trial}"})
        state = tmp_path / f"state{trial}"
        for i, model in enumerate(models):
            deploy(model, cfg, state, run_id=f"run-{i}", metrics={})
        results = [pool.apply_async(_rollback, (cfg, state)) for _ in range(2)]
        done = sorted((r.get(60) for r in results), key=lambda r: r["version"])
        # The second rollback saw the first: it left version 4 and went one more model back.
        assert [(r["version"], r["rolled_back_from"], r["rolled_back_to"]) for r in done] == [(4, 3, 2), (5, 4, 1)], trial
        assert len(_versions(cfg, state)) == 5


def test_concurrent_promotions_of_one_model_add_one_version(tmp_path, pool, backend):
    base, trials = backend
    first, model = make_model(tmp_path / "first", b"first"), make_model(tmp_path / "model", b"the model")
    for trial in range(trials):
        cfg = base.model_copy(update={"secret_id": f"promote-{trial}"})
        state = tmp_path / f"state{trial}"
        deploy(first, cfg, state, run_id="run-0", metrics={})
        results = [pool.apply_async(_deploy, (cfg, model, state, f"run-{trial}-{w}")) for w in range(2)]
        done = [r.get(60) for r in results]
        assert sorted(r["created"] for r in done) == [False, True], trial
        assert {r["version"] for r in done} == {2}
        versions = _versions(cfg, state)
        assert [v.version for v in versions] == [2, 1]


def test_listing_opens_read_only_beside_a_writer(tmp_path, capsys):
    state = tmp_path / "state"
    assert main(["secrets", f"state_dir={state}"]) == 1  # nothing deployed: said so, and nothing created
    assert "secret 'llm-endpoint' not found" in capsys.readouterr().err
    assert not (state / REGISTRY_FILE).exists()
    deploy(make_model(tmp_path / "m", b"w"), DeployConfig(), state, run_id="run-1", metrics={})
    with closing(open_registry(DeployConfig(), state)) as writer, writer.exclusive("llm-endpoint"):
        writer.add_version("llm-endpoint", b"file:///uncommitted")  # holds the write lock, uncommitted
        codes = []
        lister = threading.Thread(target=lambda: codes.append(main(["secrets", f"state_dir={state}"])))
        lister.start()
        lister.join(30)  # a lister taking the write lock would wait for this writer (60 s busy timeout)
        assert codes == [0]
    out = capsys.readouterr().out
    assert "run_id=run-1 (latest)" in out and "uncommitted" not in out


def test_half_copied_models_of_killed_deploys_are_swept(tmp_path):
    state = tmp_path / "state"
    models = state / "models"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = models / f".0123456789abcdef.{int(dead.stdout)}.x1y2"
    (orphan / "sub").mkdir(parents=True)
    (orphan / "sub" / "model.safetensors").write_bytes(b"half")
    in_progress = models / f".fedcba9876543210.{multiprocessing.current_process().pid}.z3"
    in_progress.mkdir()
    deploy(make_model(tmp_path / "m", b"w"), DeployConfig(), state, run_id="run-1", metrics={})
    assert not orphan.exists() and in_progress.exists()
