"""The practice history: each seller's practice calls and their reviews, behind one small interface
(`PracticeHistory`), implemented once on SQLAlchemy Core (`SqlHistory`): by default a SQLite file in the state folder,
or any database SQLAlchemy reaches by URL (`serve.database_url`, e.g. PostgreSQL for a team's app).

- Writes are transactions (calltune.core.sql.sql_engine: on SQLite each takes the write lock at its start), so
  concurrent writers queue and lose nothing.
- A call is stored once under (seller, call_id), a unique key: the page sends the same call_id when it retries, so
  a retry after a lost answer finds the call stored and adds nothing; a second writer of the same key gets the first
  one's row.
- A seller name proves nothing about who typed it: until sign-in exists, anyone who reaches the API can read any
  name's history. Beyond loopback the API needs its key (`calltune serve`), like every route.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from calltune.core.sql import sql_engine

DB_FILE = "practice.sqlite"
NAME_CHARS = 100    # longest seller name
KEY_CHARS = 100     # longest call id (the page's idempotency key)
PAGE = 50           # calls listed at most per request

metadata = MetaData()
calls = Table(
    "practice_calls", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("seller", String(NAME_CHARS), nullable=False, index=True),
    Column("call_id", String(KEY_CHARS), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model_version", Integer),
    Column("grade", Float),         # the coach's grade estimate, when it showed one
    Column("judge_grade", Float),
    Column("call", JSON, nullable=False),
    Column("review", JSON, nullable=False),
    Column("judge_review", JSON),
    UniqueConstraint("seller", "call_id", name="one_call_per_key"),
)


@dataclass(frozen=True)
class StoredCall:
    id: int
    seller: str
    call_id: str
    created_at: datetime
    model_version: int | None
    grade: float | None
    judge_grade: float | None
    call: dict
    review: dict
    judge_review: dict | None


class PracticeHistory(Protocol):
    """Where practice calls are kept, per seller."""

    def add(self, seller: str, call_id: str, call: dict, review: dict, *, model_version: int | None = None,
            grade: float | None = None) -> tuple[StoredCall, bool]:
        """Store a call and its review once: (the stored call, whether this request stored it)."""

    def add_judge_review(self, seller: str, call_id: str, review: dict) -> bool:
        """Attach the judge's review to a stored call; False when there is no such call."""

    def list(self, seller: str, *, limit: int = PAGE, before: int | None = None) -> list[StoredCall]:
        """The seller's calls, newest first: at most `limit`, older than the call whose id is `before`."""

    def close(self) -> None: ...


class SqlHistory:
    """PracticeHistory on any database SQLAlchemy reaches by URL."""

    def __init__(self, url: str):
        self.engine = sql_engine(url)
        with self.engine.begin() as conn:  # one transaction: two servers starting at once create the table once
            metadata.create_all(conn)

    def add(self, seller: str, call_id: str, call: dict, review: dict, *, model_version: int | None = None,
            grade: float | None = None) -> tuple[StoredCall, bool]:
        row = {"seller": seller, "call_id": call_id, "created_at": datetime.now(UTC), "model_version": model_version,
               "grade": grade, "call": call, "review": review}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(calls).values(**row))
            created = True
        except IntegrityError:  # stored already: a retry, or a second writer of the same key
            created = False
        return self._one(seller, call_id), created

    def add_judge_review(self, seller: str, call_id: str, review: dict) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(update(calls).where(calls.c.seller == seller, calls.c.call_id == call_id)
                                .values(judge_review=review, judge_grade=review.get("grade")))
        return done.rowcount > 0

    def list(self, seller: str, *, limit: int = PAGE, before: int | None = None) -> list[StoredCall]:
        query = select(calls).where(calls.c.seller == seller)
        if before is not None:
            query = query.where(calls.c.id < before)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(calls.c.id.desc()).limit(max(1, min(limit, PAGE))))
            return [_stored(r) for r in rows]

    def _one(self, seller: str, call_id: str) -> StoredCall:
        with self.engine.connect() as conn:
            return _stored(conn.execute(select(calls).where(calls.c.seller == seller,
                                                            calls.c.call_id == call_id)).one())

    def close(self) -> None:
        self.engine.dispose()


def _stored(row) -> StoredCall:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)  # SQLite keeps no zone
    return StoredCall(row.id, row.seller, row.call_id, created, row.model_version, row.grade, row.judge_grade,
                      row.call, row.review, row.judge_review)


def open_history(url: str, state_dir: str | Path) -> PracticeHistory:
    """The history at `url` (serve.database_url); empty: a SQLite file in the state folder."""
    return SqlHistory(url or f"sqlite:///{Path(state_dir).expanduser() / DB_FILE}")
