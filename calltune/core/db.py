"""SQLite for local state that several processes share: the registry, the translation and generation caches."""
from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def connect_sqlite(path: Path, *, readonly: bool = False, any_thread: bool = False) -> sqlite3.Connection:
    """A connection to local state that several processes can share.

    WAL lets readers run beside one writer; the busy timeout makes a second writer wait instead of failing;
    autocommit mode (isolation_level=None) leaves transactions to `write_transaction`. `readonly` opens an
    existing file with `mode=ro`: it never takes the write lock, so it never waits behind a writer. `any_thread`:
    a connection pool hands it from thread to thread (one thread at a time).
    """
    if readonly:
        return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=not any_thread)
    _use_wal(db)
    return db


def _use_wal(db: sqlite3.Connection, attempts: int = 600) -> None:
    """Switch the file to WAL (it stays so). Connections that open a new file together race to switch it, and SQLite
    answers the losers "database is locked" at once, without its busy handler (two would deadlock waiting), so the
    switch is tried again until one has made it; a plain loop, as tenacity is not on the GPU image (core/ is)."""
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


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


def cache_key(*parts: str) -> bytes:
    """The key of a cached answer: a SHA-256 of the parts that decide it, joined by NUL."""
    return hashlib.sha256("\0".join(parts).encode()).digest()


class KeyedCache:
    """A table of answers by key (cache_key), shared by processes: the translation and generation caches. Each row
    is (key, *columns); the last column is the answer, the others say what it answers (kept for tracing)."""

    _SQL_VARS = 500  # keys per lookup, well below SQLite's bound-parameter limit

    def __init__(self, path: Path, table: str, columns: tuple[str, ...]):
        self._db = connect_sqlite(path)
        self._table, self._width, self._answer = table, len(columns) + 1, columns[-1]
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key BLOB PRIMARY KEY, "
                         f"{', '.join(f'{c} TEXT NOT NULL' for c in columns)}) WITHOUT ROWID")

    def get_many(self, keys: Mapping[bytes, T]) -> dict[T, str]:
        """The cached answers of `keys` (key -> what the caller calls it), by the caller's names."""
        found: dict[T, str] = {}
        items = list(keys)
        for i in range(0, len(items), self._SQL_VARS):
            chunk = items[i:i + self._SQL_VARS]
            rows = self._db.execute(f"SELECT key, {self._answer} FROM {self._table} "
                                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update((keys[k], answer) for k, answer in rows)
        return found

    def put_many(self, rows: Iterable[tuple]) -> None:
        """Store (key, *columns) rows in one transaction."""
        with write_transaction(self._db) as db:
            db.executemany(f"INSERT OR REPLACE INTO {self._table} VALUES ({', '.join('?' * self._width)})", rows)

    def close(self) -> None:
        self._db.close()
