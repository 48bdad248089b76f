"""SQLAlchemy engines for the practice history: SQLite here by default, any database (PostgreSQL) by URL.

Apart from calltune.core.db so that the pipeline's steps, which reach db for their caches, never import SQLAlchemy
(the GPU image lacks it: benchmarks/gpu_imports.py)."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url

from calltune.core.db import connect_sqlite


def sql_engine(url: str):
    """A SQLAlchemy engine for a database URL. A SQLite file is opened as connect_sqlite opens local state (WAL, a
    60 s busy timeout), and each transaction takes the write lock at its start (BEGIN IMMEDIATE, SQLAlchemy's recipe
    for pysqlite): concurrent writers queue instead of failing halfway. Other databases (PostgreSQL) are SQLAlchemy's
    own, their connections checked before use."""

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if not parsed.database or parsed.database == ":memory:":
        raise ValueError(f"{url}: name a SQLite file (an in-memory database is not shared)")
    path = Path(parsed.database).expanduser()
    engine = create_engine(url, creator=lambda: connect_sqlite(path, any_thread=True))

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # the connection is in autocommit mode: the transaction is ours to open
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
