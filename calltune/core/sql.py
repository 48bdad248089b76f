"""SQLAlchemy engines for the practice history: SQLite here by default, any database (PostgreSQL) by URL; and the
schema's forward migrations, run once however many servers start together.

Apart from calltune.core.db so that the pipeline's steps, which reach db for their caches, never import SQLAlchemy
(the GPU image lacks it: benchmarks/gpu_imports.py)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import Column, Connection, Engine, Integer, MetaData, Table, create_engine, event, insert, select, text
from sqlalchemy.engine import make_url

from calltune.core.db import connect_sqlite

log = logging.getLogger(__name__)
Migration = Callable[[Connection], None]
_version = Table("schema_version", MetaData(), Column("version", Integer, nullable=False))
_LOCK_ID = 0x63616C6C74756E65  # pg_advisory_xact_lock's key: "calltune" in ASCII


def postgres_url(url: str) -> str:
    """postgresql:// and postgres:// URLs go through psycopg 3 (SQLAlchemy's own default would be psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def sql_engine(url: str) -> Engine:
    """A SQLAlchemy engine for a database URL. A SQLite file is opened as connect_sqlite opens local state (WAL, a
    60 s busy timeout), and each transaction takes the write lock at its start (BEGIN IMMEDIATE, SQLAlchemy's recipe
    for pysqlite): concurrent writers queue instead of failing halfway. Other databases (PostgreSQL, through psycopg
    3) are SQLAlchemy's own, their connections checked before use. Errors never carry the statement's parameters
    (a call's transcript): they reach the server log."""
    parsed = make_url(postgres_url(url))
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, hide_parameters=True)
    if not parsed.database or parsed.database == ":memory:":
        raise ValueError(f"{url}: name a SQLite file (an in-memory database is not shared)")
    path = Path(parsed.database).expanduser()
    engine = create_engine(parsed, creator=lambda: connect_sqlite(path, any_thread=True), hide_parameters=True)

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # the connection is in autocommit mode: the transaction is ours to open
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def migrate(engine: Engine, migrations: Sequence[Migration]) -> int:
    """Bring the schema to version len(migrations): migration i (1-based) runs once, in order, all of them in one
    transaction under a lock that a second server starting at the same time waits on (PostgreSQL: an advisory lock;
    SQLite: the write lock that BEGIN IMMEDIATE takes); the waiter then finds the work done. Returns the version the
    database was at."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        _version.create(conn, checkfirst=True)
        found = conn.execute(select(_version.c.version)).scalar()
        if found is None:
            conn.execute(insert(_version).values(version=0))
            found = 0
        if found > len(migrations):
            raise ValueError(f"the database's schema is version {found}, newer than this calltune's "
                             f"{len(migrations)}: upgrade calltune")
        for number, step in enumerate(migrations[found:], start=found + 1):
            step(conn)
            log.info("database: schema migrated to version %d", number)
        if found < len(migrations):
            conn.execute(_version.update().values(version=len(migrations)))
        return found
