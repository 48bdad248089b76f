"""The practice app for a team, through its HTTP API: sellers sign in with their own keys and see only their own
calls, a manager sees the team; a revoked key stops working within serve.refresh_s (a fake clock decides); a lost
database is a 503 with Retry-After and keeps no transcript in the log."""
import logging
import shutil
from contextlib import closing, contextmanager

import httpx
import pytest

from calltune.apps.serve.app import open_server
from calltune.apps.serve.auth import Authenticator
from calltune.backends.registry import open_registry
from calltune.coaching.history import open_history
from calltune.config import Config, ServeConfig
from calltune.release.model_card import COACH_DIR

from conftest import SCORECARD


class NoModel:
    """What answers /v1/chat/completions in these tests: nothing (the page's own endpoints are under test)."""
    system, split = "", None

    def close(self) -> None:
        pass


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def team_server(tmp_path, coach_dir, database_url: str, refresh_s: float = 30.0):
    """`calltune serve` with the page, its history at `database_url`, serving a "model" that carries the coach;
    yields (url, the history, the clock that decides when keys are re-read)."""
    model = tmp_path / "model"
    shutil.copytree(coach_dir, model / COACH_DIR)
    cfg = Config(state_dir=str(tmp_path / "state"), serve={"database_url": database_url, "port": 0,
                                                           "refresh_s": refresh_s})
    with closing(open_registry(cfg.deploy, cfg.state_path())) as registry:
        registry.add_version(cfg.deploy.secret_id, model.as_uri().encode())
    server, watcher = open_server(cfg.serve, cfg.deploy, cfg.state_path(), load=lambda endpoint: NoModel(), page=cfg)
    clock = server.app.state.auth.clock = Clock()
    history = open_history(database_url, cfg.state_path())
    try:
        server.start()
        yield server.url, history, clock
    finally:
        server.stop()
        watcher.stop()
        history.close()


def call(call_id: str, done: set[str], seller: str = "") -> dict:
    """A practice call whose seller does the checklist items in `done` (SCORECARD's lines) and not the others."""
    lines = [yes if item in done else no for items in SCORECARD.values() for item, yes, no in items]
    turns = [{"role": "customer", "text": "Hello?"}]
    for line in lines:
        turns += [{"role": "seller", "text": line}, {"role": "customer", "text": "Okay."}]
    return {"call_id": call_id, "system": "You are Ana.", "persona": {}, "turns": turns, "seller": seller}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_a_seller_sees_only_their_own_calls_and_a_manager_sees_the_team(tmp_path, coach_dir, monkeypatch):
    monkeypatch.setenv("CALLTUNE_API_KEY", "operator-key")
    with team_server(tmp_path, coach_dir, f"sqlite:///{tmp_path / 'team.sqlite'}") as (url, history, clock):
        ana, bo, boss = history.add_user("Ana"), history.add_user("Bo"), history.add_user("Maria", manager=True)
        clock.now += 30  # the keys are re-read
        with httpx.Client(base_url=url, timeout=60) as http:
            setup = http.get("/practice/api/setup", headers=bearer(ana)).json()
            assert setup["caller"] == {"name": "Ana", "manager": False} and setup["name_notice"] == ""
            # Filed under the signed-in name, whatever the page typed; another seller's name is refused.
            asked = "Asked whether the customer has time"
            first = http.post("/practice/api/calls", json=call("a1", {asked}), headers=bearer(ana)).json()
            assert (first["stored"], first["created"]) == (True, True)
            http.post("/practice/api/calls", json=call("a2", set(), seller=" Ana "), headers=bearer(ana))
            other = http.post("/practice/api/calls", json=call("a3", set(), seller="Bo"), headers=bearer(ana))
            assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
            http.post("/practice/api/calls", json=call("b1", {asked, "Proposed a next step"}), headers=bearer(bo))

            mine = http.get("/practice/api/history", headers=bearer(ana)).json()
            assert [c["call_id"] for c in mine["calls"]] == ["a2", "a1"] and mine["seller"] == "Ana"
            for path in ("/practice/api/history?seller=Bo", "/practice/api/team"):
                refused = http.get(path, headers=bearer(ana))
                assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
            assert http.get("/practice/api/history?seller=Bo", headers=bearer(bo)).status_code == 200
            for headers in ({}, bearer("ct-not-a-key"), {"Authorization": ana}):
                assert http.get("/practice/api/history", headers=headers).status_code == 401
                assert http.get("/v1/models", headers=headers).status_code == 401

            # The manager: any seller's calls, and the team view with the items each misses most.
            assert [c["call_id"] for c in http.get("/practice/api/history?seller=Bo", headers=bearer(boss))
                    .json()["calls"]] == ["b1"]
            team = http.get("/practice/api/team", headers=bearer(boss)).json()
            by_name = {s["seller"]: s for s in team["sellers"]}
            assert list(by_name) == ["Ana", "Bo", "Maria"] and team["next"] is None
            assert by_name["Ana"]["calls"] == 2 and by_name["Maria"]["calls"] == 0
            assert [(m["item"], m["missed"], m["judged"]) for m in by_name["Ana"]["missed"]][0][1:] == (2, 2)
            assert all(m["missed"] <= m["judged"] for s in team["sellers"] for m in s["missed"])
            assert [s["seller"] for s in http.get("/practice/api/team?limit=2", headers=bearer(boss))
                    .json()["sellers"]] == ["Ana", "Bo"]
            assert http.get("/practice/api/team?limit=51", headers=bearer(boss)).status_code == 400  # bounded

            # The operator's shared key (the single key of earlier versions) still works: typed names, any history.
            op = bearer("operator-key")
            assert http.get("/practice/api/setup", headers=op).json()["caller"] == {"name": None, "manager": True}
            assert http.post("/practice/api/calls", json=call("c1", set(), seller="Cy"), headers=op).json()["stored"]
            assert http.get("/practice/api/history?seller=Cy", headers=op).json()["calls"][0]["call_id"] == "c1"


def test_a_revoked_key_stops_working_within_refresh_s_and_a_new_one_starts(tmp_path, coach_dir):
    with team_server(tmp_path, coach_dir, f"sqlite:///{tmp_path / 'team.sqlite'}") as (url, history, clock):
        with httpx.Client(base_url=url, timeout=60) as http:
            # No key issued yet, on loopback: nothing is asked, as before keys existed.
            assert http.get("/practice/api/setup").json()["caller"] == {"name": None, "manager": True}
            key = history.add_user("Ana")
            assert http.get("/practice/api/setup").status_code == 200  # not read yet: within refresh_s
            clock.now += 30
            assert http.get("/practice/api/setup").status_code == 401  # a key exists: it is asked for
            assert http.get("/practice/api/history", headers=bearer(key)).status_code == 200
            assert history.revoke_user("Ana")
            clock.now += 29.9
            assert http.get("/practice/api/history", headers=bearer(key)).status_code == 200  # still within refresh_s
            clock.now += 0.1
            assert http.get("/practice/api/history", headers=bearer(key)).status_code == 401


def test_beyond_loopback_someone_must_be_asked(tmp_path):
    history = open_history("", tmp_path)
    with pytest.raises(ValueError, match="serve.auth=none is for loopback only"):
        Authenticator(ServeConfig(host="0.0.0.0", auth="none"), history)
    with pytest.raises(ValueError, match=r"set an API key in \$CALLTUNE_API_KEY .* `calltune users add NAME`"):
        Authenticator(ServeConfig(host="0.0.0.0"), history)
    history.add_user("Ana")
    Authenticator(ServeConfig(host="0.0.0.0"), history)  # a seller's key exists: the server may start
    with pytest.raises(ValueError, match="serve.auth=iap needs serve.iap_audience"):
        Authenticator(ServeConfig(host="0.0.0.0", auth="iap"), history)
    history.close()


def test_a_lost_database_is_a_503_with_retry_after_and_the_call_is_stored_once_on_retry(tmp_path, coach_dir, postgres,
                                                                                        caplog):
    caplog.set_level(logging.DEBUG)
    url = postgres.new_database()
    name = url.split("?")[0].rsplit("/", 1)[1]
    secret_line = "Our plan is the best around."  # said by the seller: must never reach the log
    with team_server(tmp_path, coach_dir, url) as (base, history, clock):
        key = history.add_user("Ana")
        clock.now += 30
        with httpx.Client(base_url=base, headers=bearer(key), timeout=60) as http:
            assert http.get("/practice/api/history").status_code == 200
            postgres.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            postgres.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            lost = http.post("/practice/api/calls", json=call("a1", set()))
            assert lost.status_code == 503 and lost.headers["Retry-After"] == "5"
            assert lost.json()["error"]["code"] == "database_unavailable"
            assert http.get("/practice/api/history").status_code == 503
            postgres.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            for _ in range(2):  # the page's retry, and one more: stored once
                assert http.post("/practice/api/calls", json=call("a1", set())).status_code == 200
            assert [c["call_id"] for c in http.get("/practice/api/history").json()["calls"]] == ["a1"]
    logged = "\n".join(r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records)
    assert "database is unreachable (OperationalError)" in logged
    assert secret_line not in logged and "Hello?" not in logged
