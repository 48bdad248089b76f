"""Run a function over chunks of work on several processes, in order, with flat memory."""
from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

_WORKER_STATE: Any = None


def _init_worker(state: Any) -> None:
    global _WORKER_STATE
    _WORKER_STATE = state


def _in_worker(fn: Callable, chunk: Any, *extra: Any) -> Any:
    return fn(_WORKER_STATE, chunk, *extra)


def map_chunks(fn: Callable, state: Any, chunks: Iterator, workers: int,
               extra: Callable[[], tuple] = tuple) -> Iterator:
    """fn(state, chunk, *extra()) for each chunk, in order, on `workers` processes (fn a module-level
    function; state picklable, sent once to each process); extra() is called as each chunk is sent."""
    if workers <= 1:
        for chunk in chunks:
            yield fn(state, chunk, *extra())
        return
    # Spawned, not forked: safe whatever threads the parent runs. At most two chunks per process in
    # flight, so the reader never runs ahead of the parsers (flat memory).
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (state,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_in_worker, (fn, chunk, *extra())))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
