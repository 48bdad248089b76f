"""`calltune serve` under concurrent clients: replies/s and p50/p99 latency, batched against one at a time.

    .venv/bin/python benchmarks/serve_throughput.py                        # 1, 8 and 32 clients
    .venv/bin/python benchmarks/serve_throughput.py --clients 1,8,32 --max-tokens 32 --state-dir ~/.calltune

The bundled SmolLM2-135M-Instruct (converted into --state-dir, a temporary one by default) is published in a local
registry and served by the real server (FastAPI/uvicorn on loopback, in this process), twice in one run: first with
`serve.max_batch=1` (the baseline: one generation at a time, as the old server's lock did), then with
`serve.max_batch=32` (continuous batching: requests decoded together, joining and leaving between tokens). For each
number of clients, a fresh server (an empty prefix cache), and the clients (threads, in a process of their own, with
one kept-alive httpx connection each) send the same requests, the conversations of the bundled sample calls' test
split as OpenAI messages (several turns of each call, as sellers in the middle of their calls send them), greedy,
`--max-tokens` each, one after another until all are answered.
Prints replies/s, p50 and p99 latency per level and the ratio of batched to baseline replies/s. Runs on the GPU when
torch sees one.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's calltune, when run as a script


def conversations(state: Path, n: int) -> list[list[dict]]:
    from calltune.config import Config
    from calltune.conversation.render import to_messages
    from calltune.core.io import read_jsonl
    from calltune.data.ingest import bundled_sample_path
    from calltune.data.prepare import prepare

    cfg = Config(state_dir=str(state))
    cfg.translate.backend = "none"
    out = state / "bench-prepared"
    prepare(bundled_sample_path(), out, cfg, workers=1)
    examples = [e for name in ("test", "validation", "train") for e in read_jsonl(out / f"{name}.examples.jsonl")]
    if len(examples) < n:
        sys.exit(f"only {len(examples)} examples in the bundled sample; ask for fewer requests")
    return [to_messages(e)["messages"][:-1] for e in examples[:n]]


def load(url: str, clients: int, requests: list[list[dict]], max_tokens: int) -> dict:
    """Answer every request with `clients` concurrent clients; replies/s and latency percentiles."""
    import httpx

    todo = list(enumerate(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            while True:
                with lock:
                    if not todo:
                        return
                    _, messages = todo.pop(0)  # in the calls' turn order
                started = time.monotonic()
                r = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": max_tokens})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                with lock:
                    latencies.append(time.monotonic() - started)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    if failures:
        sys.exit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    latencies.sort()
    return {"replies_per_s": len(latencies) / seconds, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))], "seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,8,32", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--requests-per-client", type=int, default=4,
                        help="requests per level: this many per client, at least 8 (fewer measure mostly the first "
                             "burst, when every client's prompt is read before any reply is decoded)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--state-dir", type=Path, help="where the converted base model is kept (default: temporary)")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core this process may use)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from calltune.apps.serve.app import serving
    from calltune.backends.registry import open_registry
    from calltune.config import DeployConfig, ServeConfig
    from calltune.runtime.loading import resolve_base_model, set_threads

    set_threads()
    if args.threads:  # on a machine shared with other work, fewer threads than cores can be faster
        import torch

        torch.set_num_threads(args.threads)
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        state = (args.state_dir or Path(tmp)).expanduser()
        model_dir = resolve_base_model("smollm2-135m-instruct", state)
        registry_state = Path(tmp) / "serve"
        with closing(open_registry(DeployConfig(), registry_state)) as registry:
            registry.add_version(DeployConfig().secret_id, model_dir.as_uri().encode())
        pool = conversations(state, max(max(levels) * args.requests_per_client, 8))
        results: dict[str, dict[int, dict]] = {}
        # the clients in a process of their own, as a server's clients are: they do not contend for its GIL
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients_process:
            for name, batch in (("one at a time", 1), ("batched", max(levels))):
                cfg = ServeConfig(port=0, max_batch=batch, max_queue=1024, max_tokens=args.max_tokens,
                                  request_timeout_s=3600)
                for clients in levels:  # a server each: every level starts with an empty prefix cache
                    with serving(cfg, DeployConfig(), registry_state) as url:
                        load(url, 1, [[{"role": "user", "content": "Hello?"}]], 4)  # warm-up, outside the requests
                        requests = pool[:max(clients * args.requests_per_client, 8)]
                        results.setdefault(name, {})[clients] = r = clients_process.submit(
                            load, url, clients, requests, args.max_tokens).result()
                    print(f"{name:>14}  {clients:>3} clients  {len(requests):>3} requests  {r['replies_per_s']:6.2f} "
                          f"replies/s  p50 {r['p50']:6.2f} s  p99 {r['p99']:6.2f} s", flush=True)
    print("\nclients  replies/s batched / one at a time   p99 batched / one at a time")
    for clients in levels:
        b, o = results["batched"][clients], results["one at a time"][clients]
        print(f"{clients:>7}  {b['replies_per_s'] / o['replies_per_s']:>33.2f}x  {b['p99'] / o['p99']:>27.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
