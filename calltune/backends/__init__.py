"""Backends: one small interface per step that has variants (translators, tuners, registries), picked by config name."""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """A connection to local state that several processes can share.

    WAL lets readers run beside one writer; the busy timeout makes a second writer wait instead of failing;
    autocommit mode (isolation_level=None) leaves transactions to `write_transaction`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    return db


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front, so read-then-write sequences cannot interleave."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
