"""Backends: one small interface per step that has variants (translators, tuners, registries), picked by config name."""
from __future__ import annotations

import logging
import random
import sqlite3
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BACKOFF_S = 60.0  # the longest wait between two attempts of a remote call


def brief(exc: BaseException) -> str:
    """An exception in one short line, for logs and error messages (never a payload: see the callers)."""
    return f"{type(exc).__name__}: {exc}"[:300]


class Retrying:
    """Runs remote calls with retries and full-jitter exponential backoff, and counts requests (attempts),
    failures and retries (thread-safe). `close()` stops the waiting: a run that ends early (Ctrl-C, a failure
    elsewhere) does not wait out the backoffs. Errors are raised as `error`, naming `service` and `setting`."""

    def __init__(self, *, service: str, setting: str, max_retries: int, backoff_s: float,
                 retryable: Callable[[BaseException], bool], error: type[Exception]):
        self.service, self.setting, self.max_retries, self.backoff_s = service, setting, max_retries, backoff_s
        self.retryable, self.error = retryable, error
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def count(self, counts: dict[str, int]) -> None:
        with self._lock:
            self.counters.update(counts)

    def close(self) -> None:
        self._closed.set()

    def call(self, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            self.count({"requests": 1})
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - sorted into retryable or not just below
                self.count({"failures": 1})
                if not self.retryable(exc):
                    raise self.error(f"{self.service} refused the request: {brief(exc)}") from exc
                if attempt == self.max_retries:
                    raise self.error(f"{self.service} gave up after {attempt + 1} attempts ({self.setting}="
                                     f"{self.max_retries}); last error: {brief(exc)}") from exc
                delay = random.uniform(0, min(MAX_BACKOFF_S, self.backoff_s * 2 ** attempt))
                attempt += 1
                log.warning("%s failed (%s); retry %d/%d in %.1f s", self.service, brief(exc), attempt,
                            self.max_retries, delay)
                self.count({"retries": 1})
                if self._closed.wait(delay):
                    raise self.error(f"{self.service}: stopped before retrying (the run is ending)") from exc


def connect_sqlite(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to local state that several processes can share.

    WAL lets readers run beside one writer; the busy timeout makes a second writer wait instead of failing;
    autocommit mode (isolation_level=None) leaves transactions to `write_transaction`. `readonly` opens an
    existing file with `mode=ro`: it never takes the write lock, so it never waits behind a writer.
    """
    if readonly:
        return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    return db


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front, so read-then-write sequences cannot interleave. Inside a
    transaction already open (a registry's `exclusive`), it joins that one: the outer one commits or rolls back."""
    if db.in_transaction:
        yield db
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
