"""The practice app for a team under load: `calltune serve` instances sharing one PostgreSQL and one model endpoint,
many sellers practising at once through the real HTTP API.

    .venv/bin/python benchmarks/team_load.py                                  # 50 sellers, 2 instances
    .venv/bin/python benchmarks/team_load.py --sellers 50 --calls 4 --turns 3 --instances 2 --model-ms 200

A throwaway PostgreSQL cluster (Debian's server, as the tests start it; under root it runs as the `postgres` user)
or --database-url; the model is the loopback Vertex fake of tests/fakes, answering each request after --model-ms
(the model's time, measured at the endpoint per request). Every seller (a key of their own) holds --calls calls of
--turns lines, each request to the next instance in turn (as a load balancer spreads them), then files the call
with its coach review, and files it again (the page's retry after a lost answer).

The baseline, from the same run: the same sellers sending the same lines straight to the model endpoint, no app in
between. Printed: calls/s and replies/s through the app against the baseline's, the p50/p99 of each reply's time,
of the app's own overhead (a reply's time less the model's time for that very request) beside the model's time,
and of filing a review; then the checks: every call stored exactly once, each seller's history the same from every
instance, and how long a promotion took to reach every instance.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the checkout's calltune and the test harness, run as a script


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 50) * 1000:7.1f} ms  p99 {pct(values, 99) * 1000:7.1f} ms  (n={len(values)})"


def direct(model, sellers: list[str], calls: int, turns: int) -> tuple[float, list[float]]:
    """The baseline: the sellers' lines straight to the model endpoint (seconds taken, each reply's time)."""
    import httpx
    from team_harness import ENDPOINT

    url = f"{model.endpoint}/v1beta1/{ENDPOINT.format(111)}:generateContent"
    times, lock, start = [], threading.Lock(), threading.Barrier(len(sellers) + 1)

    def seller(name: str) -> None:
        with httpx.Client(timeout=120) as client:
            start.wait()
            for c in range(calls):
                contents = []
                for t in range(turns):
                    contents.append({"role": "user", "parts": [{"text": f"{name} (direct) line {t} of call {c}"}]})
                    began = time.perf_counter()
                    r = client.post(url, json={"contents": contents})
                    r.raise_for_status()
                    with lock:
                        times.append(time.perf_counter() - began)
                    contents.append({"role": "model", "parts": r.json()["candidates"][0]["content"]["parts"]})

    threads = [threading.Thread(target=seller, args=(n,)) for n in sellers]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - began, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sellers", type=int, default=50)
    parser.add_argument("--calls", type=int, default=4, help="practice calls per seller")
    parser.add_argument("--turns", type=int, default=3, help="seller lines (model replies) per call")
    parser.add_argument("--instances", type=int, default=2, help="calltune serve processes")
    parser.add_argument("--model-ms", type=float, default=200.0, help="the model's time per reply at the endpoint")
    parser.add_argument("--database-url", default="", help="an empty PostgreSQL database (default: a throwaway "
                                                           "cluster of Debian's server)")
    args = parser.parse_args()

    import httpx
    from sqlalchemy import func, select
    from team_harness import ENDPOINT, TimedVertex, postgres_cluster, practise, publish, start_instances, stop_instances

    from calltune.coaching.history import calls, open_history

    with ExitStack() as stack:
        url = args.database_url or stack.enter_context(postgres_cluster()).new_database()
        state = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "state"
        history = open_history(url, state)
        stack.callback(history.close)
        sellers = {f"seller-{i:03d}": history.add_user(f"seller-{i:03d}") for i in range(args.sellers)}
        warmup = history.add_user("warm-up")
        publish(state, ENDPOINT.format(111))
        model = stack.enter_context(TimedVertex(delay_s=args.model_ms / 1000, lifetime_s=24 * 3600,
                                                max_requests=10**7))
        instances = start_instances(args.instances, state, url, model.endpoint)
        stack.callback(stop_instances, instances)
        urls = [i.url for i in instances]
        for u in urls:  # each instance's first review loads the coach: not part of the measurement
            httpx.post(f"{u}/practice/api/calls", headers={"Authorization": f"Bearer {warmup}"}, timeout=300,
                       json={"call_id": "warm-up", "turns": [{"role": "seller", "text": "Hello?"}]}).raise_for_status()

        base_s, base_times = direct(model, list(sellers), args.calls, args.turns)
        began = time.perf_counter()
        timings = practise(urls, sellers, args.calls, args.turns, model)
        app_s = time.perf_counter() - began
        model_times = [model.model_s[k] for k in model.model_s if " says line " in k]

        n_calls, n_replies = args.sellers * args.calls, args.sellers * args.calls * args.turns
        print(f"{args.sellers} sellers x {args.calls} calls x {args.turns} lines, {args.instances} instances, "
              f"model {args.model_ms:g} ms/reply")
        print(f"baseline (straight to the model): {n_calls / base_s:7.2f} calls/s  {n_replies / base_s:7.1f} "
              f"replies/s   reply {ms(base_times)}")
        print(f"through calltune serve:            {n_calls / app_s:7.2f} calls/s  {n_replies / app_s:7.1f} "
              f"replies/s   ({app_s / base_s:.2f}x the baseline's time; reviews filed twice each included)")
        print(f"  reply, as the seller waited:   {ms(timings.chat_s)}")
        print(f"  the model's time (endpoint):   {ms(model_times)}")
        print(f"  the app's own overhead:        {ms(timings.overhead_s)}")
        print(f"  filing a call and its review:  {ms(timings.review_s)}")
        print(f"  failures: {len(timings.failures)}" + (f" (first: {timings.failures[0]})" if timings.failures else ""))

        with history.engine.connect() as conn:
            rows = conn.execute(select(calls.c.seller, calls.c.call_id, func.count())
                                .where(calls.c.seller != "warm-up").group_by(calls.c.seller, calls.c.call_id)).all()
        once = len(rows) == n_calls and all(n == 1 for _, _, n in rows)
        print(f"stored: {len(rows)} calls with their reviews, {n_calls} expected, each once: {once}")
        same = 0
        for key in sellers.values():
            seen = [httpx.get(f"{u}/practice/api/history", headers={"Authorization": f"Bearer {key}"}, timeout=60)
                    .json() for u in urls]
            same += all(s == seen[0] for s in seen) and len(seen[0]["calls"]) == args.calls
        print(f"the same history from every instance: {same} of {len(sellers)} sellers")
        began = time.perf_counter()
        publish(state, ENDPOINT.format(222))
        waiting = list(urls)
        while waiting:
            waiting = [u for u in waiting if httpx.get(f"{u}/health", timeout=30).json().get("version") != 2]
            time.sleep(0.02)
        print(f"a promotion reached all {len(urls)} instances in {time.perf_counter() - began:.2f} s "
              f"(serve.refresh_s=0.2)")
        if timings.failures or not once or same != len(sellers):
            sys.exit(1)


if __name__ == "__main__":
    main()
