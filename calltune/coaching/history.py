"""The practice history of a team: each seller's practice calls and their reviews, and who may sign in (the sellers'
and managers' keys), behind one small interface (`PracticeHistory`), implemented once on SQLAlchemy Core
(`SqlHistory`): by default a SQLite file in the state folder, or PostgreSQL by URL (`serve.database_url`), which
several `calltune serve` instances share.

- The schema is versioned: MIGRATIONS run forward at start, once however many servers start together
  (calltune.core.sql.migrate). A list of numbered functions rather than Alembic: two small migrations on one
  metadata need no migration environment, and the lock that makes them run once is three lines.
- Writes are transactions (on SQLite each takes the write lock at its start), so concurrent writers queue and lose
  nothing.
- A call is stored once under (seller, call_id), a unique key: the page sends the same call_id when it retries, so
  a retry after a lost answer finds the call stored and adds nothing; a second writer of the same key gets the first
  one's row.
- Each call's checklist verdicts (the coach's, and the judge's when it reviewed the call) and analytics are kept in
  rows of their own as well, so that the team view is aggregated by the database, not by reading every review.
- A key is stored as its SHA-256 only: it is 256 random bits, so no salt or slow hash adds anything; the key itself
  is shown once, by `calltune users add`.
"""
from __future__ import annotations

import hashlib
import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    and_,
    case,
    exists,
    func,
    insert,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.exc import IntegrityError

from calltune.core.sql import migrate, sql_engine

DB_FILE = "practice.sqlite"
NAME_CHARS = 100    # longest seller name
KEY_CHARS = 100     # longest call id (the page's idempotency key)
ITEM_CHARS = 400    # longest "criterion: checklist item"
PAGE = 50           # calls (or sellers) listed at most per request
MISSED_SHOWN = 5    # checklist items listed per seller in the team view

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
users = Table(
    "users", metadata,
    Column("name", String(NAME_CHARS), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("manager", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)
items = Table(  # a call's checklist verdicts: from the coach ("coach") or the judge ("judge"); "not judged" is left out
    "call_items", metadata,
    Column("call", Integer, ForeignKey("practice_calls.id"), primary_key=True),
    Column("source", String(8), primary_key=True),
    Column("item", String(ITEM_CHARS), primary_key=True),
    Column("missed", Boolean, nullable=False),
)
metrics = Table(  # a call's analytics (the coach's), one number each
    "call_metrics", metadata,
    Column("call", Integer, ForeignKey("practice_calls.id"), primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("value", Float),
)


def _v1_calls(conn: Connection) -> None:
    calls.create(conn, checkfirst=True)  # a history from before the schema was versioned is adopted as it is


def _v2_team(conn: Connection) -> None:
    for table in (users, items, metrics):
        table.create(conn)
    for row in conn.execute(select(calls.c.id, calls.c.review, calls.c.judge_review)):
        _add_details(conn, row.id, row.review, row.judge_review)


# Forward migrations, in order: migration i brings the schema to version i. Append; never edit a shipped one.
MIGRATIONS = [_v1_calls, _v2_team]


def coach_items(review: dict) -> dict[str, bool]:
    """The coach's checklist verdicts of a call: {"criterion: item": missed}, items not judged left out."""
    return {f"{c['title']}: {i['name']}"[:ITEM_CHARS]: i["verdict"] == "no"
            for c in review.get("criteria", []) for i in c.get("items", []) if i.get("verdict") in ("yes", "no")}


def judge_items(review: dict | None) -> dict[str, bool]:
    """The judge's checklist of a call, in the scorecard's terms: {"criterion: item": missed}."""
    return {f"{f['title']}: {c['type']}"[:ITEM_CHARS]: not c["status"]
            for f in (review or {}).get("feedbacks") or [] for c in f.get("checklist") or []
            if isinstance(c.get("status"), bool)}


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _item_rows(call: int, source: str, verdicts: dict[str, bool]) -> list[dict]:
    return [{"call": call, "source": source, "item": k, "missed": v} for k, v in verdicts.items()]


def _add_details(conn: Connection, call: int, review: dict, judge_review: dict | None = None) -> None:
    rows = _item_rows(call, "coach", coach_items(review)) + _item_rows(call, "judge", judge_items(judge_review))
    if rows:
        conn.execute(insert(items), rows)
    shown = [{"call": call, "metric": a["metric"][:64], "value": _number(a.get("value"))}
             for a in review.get("analytics", [])]
    if shown:
        conn.execute(insert(metrics), shown)


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


@dataclass(frozen=True)
class User:
    name: str
    manager: bool
    created_at: datetime
    revoked_at: datetime | None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def normal_name(name: str) -> str:
    """A seller's name as stored: its whitespace collapsed."""
    return " ".join(name.split())


class PracticeHistory(Protocol):
    """Where practice calls are kept, per seller, and who may sign in."""

    def add(self, seller: str, call_id: str, call: dict, review: dict, *, model_version: int | None = None,
            grade: float | None = None) -> tuple[StoredCall, bool]:
        """Store a call and its review once: (the stored call, whether this request stored it)."""

    def add_judge_review(self, seller: str, call_id: str, review: dict) -> bool:
        """Attach the judge's review to a stored call; False when there is no such call."""

    def list(self, seller: str, *, limit: int = PAGE, before: int | None = None) -> list[StoredCall]:
        """The seller's calls, newest first: at most `limit`, older than the call whose id is `before`."""

    def team(self, since: datetime, *, limit: int = PAGE, after: str = "") -> list[dict]:
        """The team view: per seller (by name, after `after`), their calls since `since` summarised."""

    def add_user(self, name: str, *, manager: bool = False) -> str:
        """Issue a key to a new (or revoked) user; the key is returned once and only its hash is kept."""

    def users(self) -> list[User]: ...

    def revoke_user(self, name: str) -> bool:
        """Revoke a user's key; False when there is no such user signed in."""

    def keys(self) -> dict[str, tuple[str, bool, bool]]:
        """Every key issued: {key hash: (name, manager, still valid)}."""

    def close(self) -> None: ...


class SqlHistory:
    """PracticeHistory on any database SQLAlchemy reaches by URL, its schema migrated at start."""

    def __init__(self, url: str):
        self.engine = sql_engine(url)
        migrate(self.engine, MIGRATIONS)

    def add(self, seller: str, call_id: str, call: dict, review: dict, *, model_version: int | None = None,
            grade: float | None = None) -> tuple[StoredCall, bool]:
        row = {"seller": seller, "call_id": call_id, "created_at": datetime.now(UTC), "model_version": model_version,
               "grade": grade, "call": call, "review": review}
        try:
            with self.engine.begin() as conn:
                pk = conn.execute(insert(calls).values(**row).returning(calls.c.id)).scalar_one()
                _add_details(conn, pk, review)
            created = True
        except IntegrityError:  # stored already: a retry, or a second writer of the same key
            created = False
        return self._one(seller, call_id), created

    def add_judge_review(self, seller: str, call_id: str, review: dict) -> bool:
        with self.engine.begin() as conn:
            pk = conn.execute(update(calls).where(calls.c.seller == seller, calls.c.call_id == call_id)
                              .values(judge_review=review, judge_grade=_number(review.get("grade")))
                              .returning(calls.c.id)).scalar()
            if pk is None:
                return False
            conn.execute(items.delete().where(items.c.call == pk, items.c.source == "judge"))  # a second review replaces
            found = _item_rows(pk, "judge", judge_items(review))
            if found:
                conn.execute(insert(items), found)
        return True

    def list(self, seller: str, *, limit: int = PAGE, before: int | None = None) -> list[StoredCall]:
        query = select(calls).where(calls.c.seller == seller)
        if before is not None:
            query = query.where(calls.c.id < before)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(calls.c.id.desc()).limit(max(1, min(limit, PAGE))))
            return [_stored(r) for r in rows]

    def team(self, since: datetime, *, limit: int = PAGE, after: str = "") -> list[dict]:
        names_q = union(select(calls.c.seller.label("name")).where(calls.c.created_at >= since),
                        select(users.c.name.label("name")).where(users.c.revoked_at.is_(None))).subquery()
        with self.engine.connect() as conn:
            names = list(conn.execute(select(names_q.c.name).where(names_q.c.name > after)
                                      .order_by(names_q.c.name).limit(max(1, min(limit, PAGE)))).scalars())
            if not names:
                return []
            mine = and_(calls.c.created_at >= since, calls.c.seller.in_(names))
            day = func.date(calls.c.created_at)
            days = conn.execute(select(calls.c.seller, day.label("day"), func.count().label("n"),
                                       func.avg(calls.c.grade).label("grade"),
                                       func.avg(calls.c.judge_grade).label("judge_grade"))
                                .where(mine).group_by(calls.c.seller, day).order_by(calls.c.seller, day))
            shown = conn.execute(select(calls.c.seller, metrics.c.metric, func.avg(metrics.c.value).label("value"))
                                 .select_from(metrics.join(calls, metrics.c.call == calls.c.id)).where(mine)
                                 .group_by(calls.c.seller, metrics.c.metric))
            # The judge's verdicts where it reviewed the call, the coach's elsewhere.
            judge = items.alias("judge")
            judged = exists().where(judge.c.call == items.c.call, judge.c.source == "judge")
            counted = conn.execute(select(calls.c.seller, items.c.item,
                                          func.sum(case((items.c.missed, 1), else_=0)).label("missed"),
                                          func.count().label("judged"))
                                   .select_from(items.join(calls, items.c.call == calls.c.id))
                                   .where(mine, or_(items.c.source == "judge", ~judged))
                                   .group_by(calls.c.seller, items.c.item))
            out = {n: {"seller": n, "calls": 0, "days": [], "analytics": {}, "missed": []} for n in names}
            for r in days:
                out[r.seller]["days"].append({"day": str(r.day), "calls": r.n, "grade": _round(r.grade),
                                              "judge_grade": _round(r.judge_grade)})
                out[r.seller]["calls"] += r.n
            for r in shown:
                out[r.seller]["analytics"][r.metric] = _round(r.value, 3)
            missed = defaultdict(list)
            for r in counted:
                if r.missed:
                    missed[r.seller].append({"item": r.item, "missed": int(r.missed), "judged": int(r.judged)})
            for seller, found in missed.items():
                out[seller]["missed"] = sorted(found, key=lambda m: (-m["missed"] / m["judged"], -m["missed"],
                                                                     m["item"]))[:MISSED_SHOWN]
        return list(out.values())

    def add_user(self, name: str, *, manager: bool = False) -> str:
        name = normal_name(name)
        if not name or len(name) > NAME_CHARS:
            raise ValueError(f"a user's name is 1 to {NAME_CHARS} characters: {name!r}")
        key = f"ct-{secrets.token_urlsafe(32)}"
        row = {"key_hash": key_hash(key), "manager": manager, "created_at": datetime.now(UTC), "revoked_at": None}
        with self.engine.begin() as conn:
            revoked = conn.execute(update(users).where(users.c.name == name, users.c.revoked_at.is_not(None))
                                   .values(**row)).rowcount
            if not revoked:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(users).values(name=name, **row))
                except IntegrityError:
                    raise ValueError(f"user {name!r} exists: revoke the key first (calltune users revoke) to issue "
                                     f"a new one") from None
        return key

    def users(self) -> list[User]:
        with self.engine.connect() as conn:
            return [User(r.name, r.manager, _utc(r.created_at), r.revoked_at and _utc(r.revoked_at))
                    for r in conn.execute(select(users).order_by(users.c.name))]

    def revoke_user(self, name: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(update(users).where(users.c.name == normal_name(name), users.c.revoked_at.is_(None))
                                .values(revoked_at=datetime.now(UTC))).rowcount > 0

    def keys(self) -> dict[str, tuple[str, bool, bool]]:
        with self.engine.connect() as conn:
            return {r.key_hash: (r.name, r.manager, r.revoked_at is None) for r in
                    conn.execute(select(users.c.key_hash, users.c.name, users.c.manager, users.c.revoked_at))}

    def _one(self, seller: str, call_id: str) -> StoredCall:
        with self.engine.connect() as conn:
            return _stored(conn.execute(select(calls).where(calls.c.seller == seller,
                                                            calls.c.call_id == call_id)).one())

    def close(self) -> None:
        self.engine.dispose()


def _round(value, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite keeps no zone


def _stored(row) -> StoredCall:
    return StoredCall(row.id, row.seller, row.call_id, _utc(row.created_at), row.model_version, row.grade,
                      row.judge_grade, row.call, row.review, row.judge_review)


def open_history(url: str, state_dir: str | Path) -> PracticeHistory:
    """The history at `url` (serve.database_url); empty: a SQLite file in the state folder."""
    return SqlHistory(url or f"sqlite:///{Path(state_dir).expanduser() / DB_FILE}")
