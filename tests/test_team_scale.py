"""Scale out: two `calltune serve` processes share one PostgreSQL and one model endpoint (the loopback Vertex fake);
ten sellers hold practice calls at once through the real HTTP API, each request to the next instance in turn. Every
call and review is stored exactly once, each seller's history is the same from either instance, and a promotion is
followed by both. (benchmarks/team_load.py is the big version: 50 sellers, with figures.)"""
import httpx
import pytest
from team_harness import ENDPOINT, TimedVertex, practise, publish, start_instances, stop_instances, wait_for_version

from calltune.coaching.history import open_history


def test_two_instances_share_one_database_and_one_model(postgres, tmp_path):
    pytest.importorskip("google.genai")
    url, state = postgres.new_database(), tmp_path / "state"
    history = open_history(url, state)
    sellers = {f"seller-{i:02d}": history.add_user(f"seller-{i:02d}") for i in range(10)}
    boss = history.add_user("boss", manager=True)
    publish(state, ENDPOINT.format(111))
    with TimedVertex(lifetime_s=600) as model:
        instances = start_instances(2, state, url, model.endpoint)
        try:
            urls = [i.url for i in instances]
            timings = practise(urls, sellers, calls_each=2, turns=2, model=model)
            assert timings.failures == []
            assert len(timings.chat_s) == 10 * 2 * 2 and len(timings.review_s) == 10 * 2 * 2

            with history.engine.connect() as conn:  # every call once, with its review
                from sqlalchemy import func, select

                from calltune.coaching.history import calls
                rows = conn.execute(select(calls.c.seller, calls.c.call_id, func.count())
                                    .group_by(calls.c.seller, calls.c.call_id)).all()
            assert sorted((s, c) for s, c, _ in rows) == sorted((s, f"{s}-call-{c}") for s in sellers for c in range(2))
            assert {n for _, _, n in rows} == {1}
            for name, key in sellers.items():  # the same history whichever instance answers
                seen = [httpx.get(f"{u}/practice/api/history", headers={"Authorization": f"Bearer {key}"},
                                  timeout=60).json() for u in urls]
                assert seen[0] == seen[1] and [c["call_id"] for c in seen[0]["calls"]] == [f"{name}-call-1",
                                                                                          f"{name}-call-0"]
                assert all(c["turns"] == 4 and c["analytics"] for c in seen[0]["calls"])
            teams = [httpx.get(f"{u}/practice/api/team", headers={"Authorization": f"Bearer {boss}"}, timeout=60)
                     .json()["sellers"] for u in urls]
            assert teams[0] == teams[1] and sum(s["calls"] for s in teams[0]) == 20

            publish(state, ENDPOINT.format(222))  # a promotion: both instances follow it
            wait_for_version(urls, 2)
            for u in urls:
                r = httpx.post(f"{u}/v1/chat/completions", headers={"Authorization": f"Bearer {boss}"}, timeout=60,
                               json={"model": "llm-endpoint", "messages": [{"role": "user", "content": "Hello?"}]})
                assert r.json()["model"] == "llm-endpoint/versions/2" and r.json()["choices"][0]["message"][
                    "content"] == "222 says: Hello?"
        finally:
            stop_instances(instances)
    logs = "".join(line for i in instances for line in i.log)
    assert "do you have a minute" not in logs and "says line" not in logs  # no transcript text in the server log
    history.close()
