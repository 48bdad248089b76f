"""The team's practice history as a store, on SQLite and on a real PostgreSQL (tests/conftest.py's throwaway
cluster): the versioned schema and its migrations, the sellers' keys, and the team view's aggregates."""
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, inspect, select, text

from calltune.coaching.history import MIGRATIONS, SqlHistory, calls, key_hash, metadata, users
from calltune.core.sql import migrate, postgres_url, sql_engine


def review(grade, verdicts: dict[str, str], talk_ratio=0.5) -> dict:
    """A coach's review in the shape the coach answers: criteria of items with verdicts, analytics."""
    criteria = {}
    for key, verdict in verdicts.items():
        title, name = key.split(": ")
        criteria.setdefault(title, []).append({"name": name, "verdict": verdict})
    return {"grade": {"estimate": grade}, "analytics": [{"metric": "talk_ratio", "value": talk_ratio},
                                                        {"metric": "next_step", "value": True}],
            "criteria": [{"title": t, "items": i} for t, i in criteria.items()]}


def test_two_servers_starting_together_migrate_once(database_url):
    engines = [sql_engine(database_url) for _ in range(4)]
    start, found, errors = threading.Barrier(len(engines)), [], []

    def run(engine):
        try:
            start.wait()
            found.append(migrate(engine, MIGRATIONS))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(found) == [0] + [len(MIGRATIONS)] * (len(engines) - 1)
    with engines[0].connect() as conn:
        assert conn.execute(text("SELECT version FROM schema_version")).scalars().all() == [len(MIGRATIONS)]
    with pytest.raises(ValueError, match="newer than this calltune's"):
        migrate(engines[0], MIGRATIONS[:1])
    for e in engines:
        e.dispose()


def test_a_history_from_before_the_schema_was_versioned_is_migrated_with_its_calls(database_url):
    old = create_engine(postgres_url(database_url))
    with old.begin() as conn:  # what the coach issue's store created: the calls table alone, a call in it
        calls.create(conn)
        conn.execute(calls.insert().values(seller="Ana", call_id="c1", created_at=datetime.now(UTC), grade=4.0,
                                           call={"turns": []}, review=review(4.0, {"Open: Asked": "no"})))
    old.dispose()
    history = SqlHistory(database_url)
    assert set(inspect(history.engine).get_table_names()) >= {t.name for t in metadata.sorted_tables}
    [ana] = history.team(datetime.now(UTC) - timedelta(days=1))
    assert (ana["calls"], ana["missed"]) == (1, [{"item": "Open: Asked", "missed": 1, "judged": 1}])
    history.close()


def test_a_key_is_shown_once_kept_as_its_hash_and_revoked(database_url):
    history = SqlHistory(database_url)
    key = history.add_user("  Ana   Souza ")
    boss = history.add_user("Maria", manager=True)
    assert key != boss and key.startswith("ct-") and len(key) > 40
    assert history.keys() == {key_hash(key): ("Ana Souza", False, True), key_hash(boss): ("Maria", True, True)}
    with history.engine.connect() as conn:  # nothing but the hash is kept
        stored = [str(v) for row in conn.execute(select(users)) for v in row]
    assert not any(key in v or boss in v for v in stored)
    with pytest.raises(ValueError, match="exists: revoke the key first"):
        history.add_user("Ana Souza")
    assert history.revoke_user("Ana Souza") and not history.revoke_user("Ana Souza") and not history.revoke_user("Bo")
    assert history.keys() == {key_hash(key): ("Ana Souza", False, False), key_hash(boss): ("Maria", True, True)}
    assert [(u.name, u.revoked_at is not None) for u in history.users()] == [("Ana Souza", True), ("Maria", False)]
    again = history.add_user("Ana Souza")  # a revoked name gets a new key; the old one stays dead
    assert {h for h, (_, _, valid) in history.keys().items() if valid} == {key_hash(boss), key_hash(again)}
    with pytest.raises(ValueError, match="1 to 100 characters"):
        history.add_user("   ")
    history.close()


def test_the_team_view_counts_the_judges_verdicts_where_it_judged_and_leaves_out_the_unjudged(database_url):
    history = SqlHistory(database_url)
    history.add_user("Zoe")  # signed up, no call yet: listed with none
    history.add("Ana", "a1", {}, review(6.0, {"Open: Asked": "yes", "Close: Next step": "no", "Close: Price": "not judged"}),
                grade=6.0)
    history.add("Ana", "a2", {}, review(4.0, {"Open: Asked": "no", "Close: Next step": "no"}, 0.7), grade=4.0)
    history.add("Bo", "b1", {}, review(8.0, {"Open: Asked": "no", "Close: Next step": "yes"}), grade=8.0)
    # The judge reviewed Bo's call: its checklist replaces the coach's verdicts for that call.
    judge = {"grade": 7, "feedbacks": [{"title": "Open", "checklist": [{"type": "Asked", "status": True}]},
                                       {"title": "Close", "checklist": [{"type": "Next step", "status": False}]}]}
    assert history.add_judge_review("Bo", "b1", judge) and history.add_judge_review("Bo", "b1", judge)

    since = datetime.now(UTC) - timedelta(days=1)
    ana, bo, zoe = history.team(since)
    assert (ana["seller"], ana["calls"], ana["analytics"]) == ("Ana", 2, {"talk_ratio": 0.6, "next_step": 1.0})
    assert [(d["calls"], d["grade"], d["judge_grade"]) for d in ana["days"]] == [(2, 5.0, None)]
    assert ana["missed"] == [{"item": "Close: Next step", "missed": 2, "judged": 2},
                             {"item": "Open: Asked", "missed": 1, "judged": 2}]  # "Close: Price" was not judged
    assert bo["missed"] == [{"item": "Close: Next step", "missed": 1, "judged": 1}]
    assert [(d["grade"], d["judge_grade"]) for d in bo["days"]] == [(8.0, 7.0)]
    assert (zoe["seller"], zoe["calls"], zoe["missed"]) == ("Zoe", 0, [])
    # A page at a time, by name; nothing before the window.
    assert [s["seller"] for s in history.team(since, limit=2)] == ["Ana", "Bo"]
    assert [s["seller"] for s in history.team(since, limit=2, after="Bo")] == ["Zoe"]
    assert [s["calls"] for s in history.team(datetime.now(UTC) + timedelta(minutes=1))] == [0]  # Zoe only
    history.close()
