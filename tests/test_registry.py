import threading
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing

import pytest

from calltune.backends.registry import (
    RegistryError,
    RequestIdConflict,
    SecretNotFound,
    SqliteRegistry,
    VersionDisabled,
    VersionNotFound,
    open_registry,
)
from calltune.config import DeployConfig


@pytest.fixture(params=["sqlite", "secret-manager"])
def open_reg(request, tmp_path):
    """Opens registries of one backend over one store (reopening shows what persisted). Both backends must
    behave alike: Secret Manager runs through the real client against a loopback fake of its REST API."""
    if request.param == "sqlite":
        yield lambda: SqliteRegistry(tmp_path / "registry.sqlite")
        return
    pytest.importorskip("google.cloud.secretmanager_v1")
    from fakes.secret_manager import FakeSecretManager

    with FakeSecretManager(lifetime_s=60) as fake:
        cfg = DeployConfig(registry="secret-manager", project="calltune-test", endpoint=fake.endpoint,
                           retry_backoff_s=0.01, timeout_s=5)
        yield lambda: open_registry(cfg, tmp_path)


@pytest.fixture
def reg(open_reg):
    with closing(open_reg()) as r:
        yield r


def test_versions_are_numbered_and_never_overwritten(reg, open_reg):
    for i in range(1, 4):
        v = reg.add_version("llm-endpoint", f"model-{i}".encode(), annotations={"run_id": f"r{i}"})
        assert (v.version, v.state, v.annotations) == (i, "ENABLED", {"run_id": f"r{i}"})
    assert [reg.access("llm-endpoint", n) for n in (1, 2, 3, "2")] == [b"model-1", b"model-2", b"model-3", b"model-2"]
    assert reg.access("llm-endpoint") == b"model-3"
    assert [v.version for v in reg.list_versions("llm-endpoint")] == [3, 2, 1]
    assert reg.list_secrets() == ["llm-endpoint"]
    with closing(open_reg()) as again:  # persisted
        assert again.access("llm-endpoint", 1) == b"model-1"
        assert again.get_version("llm-endpoint").version == 3


def test_disabled_version_is_refused_until_enabled(reg):
    for i in (1, 2, 3):
        reg.add_version("s", f"p{i}".encode())
    reg.disable("s", 2)
    with pytest.raises(VersionDisabled, match="version 2 is disabled"):
        reg.access("s", 2)
    assert reg.access("s", 1) == b"p1" and reg.access("s") == b"p3"
    assert [v.state for v in reg.list_versions("s")] == ["ENABLED", "DISABLED", "ENABLED"]
    reg.enable("s", 2)
    assert reg.access("s", 2) == b"p2"


def test_latest_disabled_fails_instead_of_falling_back(reg):
    reg.add_version("s", b"old")
    reg.add_version("s", b"new")
    reg.disable("s", "latest")
    with pytest.raises(VersionDisabled, match="version 2 \\(latest"):
        reg.access("s")
    assert reg.get_version("s").state == "DISABLED"
    assert reg.add_version("s", b"newer").version == 3  # disabled versions keep their number
    assert reg.access("s") == b"newer"


def test_repeated_request_id_returns_the_existing_version(reg):
    first = reg.add_version("s", b"endpoint-a", request_id="run-1")
    again = reg.add_version("s", b"endpoint-a", request_id="run-1")
    assert again == first and len(reg.list_versions("s")) == 1
    assert reg.add_version("s", b"endpoint-b", request_id="run-2").version == 2
    with pytest.raises(RequestIdConflict, match="run-1"):
        reg.add_version("s", b"endpoint-c", request_id="run-1")
    assert len(reg.list_versions("s")) == 2


def test_missing_and_invalid_are_clear_registry_errors(reg):
    with pytest.raises(SecretNotFound, match="'nope'"):
        reg.access("nope")
    with pytest.raises(SecretNotFound):
        reg.list_versions("nope")
    reg.add_version("s", b"x")
    with pytest.raises(VersionNotFound, match="version 9"):
        reg.access("s", 9)
    with pytest.raises(RegistryError, match="'latest' or a number"):
        reg.access("s", "newest")
    with pytest.raises(RegistryError, match="invalid secret id"):
        reg.add_version("bad/id", b"x")
    assert issubclass(SecretNotFound, RegistryError) and issubclass(VersionDisabled, RegistryError)


def _add_many(path, worker: int, n: int) -> list[int]:
    with SqliteRegistry(path) as r:
        return [r.add_version("s", f"{worker}-{i}".encode()).version for i in range(n)]


def test_concurrent_writers_get_distinct_versions(tmp_path):
    path = tmp_path / "registry.sqlite"
    SqliteRegistry(path).close()
    with ProcessPoolExecutor(2) as pool:
        procs = [pool.submit(_add_many, path, w, 25) for w in range(2)]
        results: dict[int, list[int]] = {}
        threads = [threading.Thread(target=lambda w=w: results.__setitem__(w, _add_many(path, w, 25))) for w in (2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        numbers = [n for f in procs for n in f.result()] + [n for r in results.values() for n in r]
    assert sorted(numbers) == list(range(1, 101))
    with SqliteRegistry(path) as r:
        payloads = {r.access("s", n) for n in range(1, 101)}
    assert payloads == {f"{w}-{i}".encode() for w in range(4) for i in range(25)}


def test_open_registry_uses_the_state_dir(tmp_path):
    with closing(open_registry(DeployConfig(), tmp_path)) as r:
        r.add_version("llm-endpoint", b"x")
    assert (tmp_path / "registry.sqlite").exists()
