"""The local secret registry: one SQLite file with Secret Manager's semantics (calltune.backends.registry_base)."""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from calltune.backends import registry_base as base
from calltune.core.db import connect_sqlite, write_transaction

REGISTRY_FILE = "registry.sqlite"


_COLUMNS = "secret_id, version, state, create_time, annotations"


def _row_to_version(row: tuple) -> base.SecretVersion:
    return base.SecretVersion(row[0], row[1], row[2], row[3], json.loads(row[4]))


class SqliteRegistry:
    """Local registry in one SQLite file; every write is one BEGIN IMMEDIATE transaction, safe across processes.
    `readonly` (listing, reading) opens the file with mode=ro and creates nothing: it never waits behind a writer."""

    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path)
        if readonly and self.path.is_file():
            self._db = connect_sqlite(self.path, readonly=True)
            return
        # Nothing deployed yet, read-only: an empty registry in memory, so no file is created by a reader.
        self._db = sqlite3.connect(":memory:", isolation_level=None) if readonly else connect_sqlite(self.path)
        with write_transaction(self._db) as db:
            db.execute("CREATE TABLE IF NOT EXISTS secrets (secret_id TEXT PRIMARY KEY, create_time TEXT NOT NULL)")
            db.execute("""CREATE TABLE IF NOT EXISTS versions (
                secret_id TEXT NOT NULL REFERENCES secrets(secret_id),
                version INTEGER NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('ENABLED', 'DISABLED')),
                create_time TEXT NOT NULL,
                annotations TEXT NOT NULL,
                request_id TEXT,
                payload BLOB NOT NULL,
                PRIMARY KEY (secret_id, version),
                UNIQUE (secret_id, request_id))""")
        if readonly:
            self._db.execute("PRAGMA query_only = ON")

    def __enter__(self) -> SqliteRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def exclusive(self, secret_id: str) -> Iterator[None]:
        """Every read and write inside is one transaction holding the write lock (other writers wait)."""
        base.check_secret_id(secret_id)
        with write_transaction(self._db):
            yield

    def add_version(self, secret_id: str, payload: bytes, *, annotations: dict[str, str] | None = None,
                    request_id: str | None = None) -> base.SecretVersion:
        """Add the next version (creating the secret if needed); a repeated request_id returns the version it added."""
        annotations = base.check_new_version(secret_id, payload, annotations)
        now = datetime.now(UTC).isoformat()
        with write_transaction(self._db) as db:
            if request_id is not None:
                row = db.execute(f"SELECT {_COLUMNS}, payload FROM versions WHERE secret_id = ? AND request_id = ?",
                                 (secret_id, request_id)).fetchone()
                if row:
                    if row[5] != payload:
                        raise base.RequestIdConflict(f"secret {secret_id}: request_id {request_id!r} already added "
                                                f"version {row[1]} with a different payload")
                    return _row_to_version(row)
            db.execute("INSERT OR IGNORE INTO secrets VALUES (?, ?)", (secret_id, now))
            (number,) = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE secret_id = ?",
                                   (secret_id,)).fetchone()
            db.execute("INSERT INTO versions VALUES (?, ?, 'ENABLED', ?, ?, ?, ?)",
                       (secret_id, number, now, json.dumps(annotations, sort_keys=True), request_id, payload))
        return base.SecretVersion(secret_id, number, "ENABLED", now, annotations)

    def _find(self, db: sqlite3.Connection, secret_id: str, version: int | str, columns: str) -> tuple:
        """The row of `version` ('latest', an int or a digit string); raises when the secret or version is missing."""
        if version == "latest":
            row = db.execute(f"SELECT {columns} FROM versions WHERE secret_id = ? ORDER BY version DESC LIMIT 1",
                             (secret_id,)).fetchone()
        else:
            number = base.version_number(secret_id, version)
            row = db.execute(f"SELECT {columns} FROM versions WHERE secret_id = ? AND version = ?",
                             (secret_id, number)).fetchone()
        if row is None:
            if not db.execute("SELECT 1 FROM secrets WHERE secret_id = ?", (secret_id,)).fetchone():
                raise base.SecretNotFound(f"secret {secret_id!r} not found in {self.path}")
            raise base.VersionNotFound(f"secret {secret_id}: version {version} not found")
        return row

    def access(self, secret_id: str, version: int | str = "latest") -> bytes:
        """The payload of an enabled version; `latest` is the newest version and fails if that one is disabled."""
        row = self._find(self._db, secret_id, version, f"{_COLUMNS}, payload")
        if row[2] != "ENABLED":
            alias = " (latest; older versions are not used instead)" if version == "latest" else ""
            raise base.VersionDisabled(f"secret {secret_id}: version {row[1]}{alias} is disabled; enable it or add a new version")
        return row[5]

    def get_version(self, secret_id: str, version: int | str = "latest") -> base.SecretVersion:
        return _row_to_version(self._find(self._db, secret_id, version, _COLUMNS))

    def list_versions(self, secret_id: str) -> list[base.SecretVersion]:
        """Newest first, as Secret Manager lists them."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM versions WHERE secret_id = ? ORDER BY version DESC",
                                (secret_id,)).fetchall()
        if not rows and not self._db.execute("SELECT 1 FROM secrets WHERE secret_id = ?", (secret_id,)).fetchone():
            raise base.SecretNotFound(f"secret {secret_id!r} not found in {self.path}")
        return [_row_to_version(r) for r in rows]

    def list_secrets(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT secret_id FROM secrets ORDER BY secret_id")]

    def _set_state(self, secret_id: str, version: int | str, state: str) -> base.SecretVersion:
        with write_transaction(self._db) as db:
            row = self._find(db, secret_id, version, _COLUMNS)
            db.execute("UPDATE versions SET state = ? WHERE secret_id = ? AND version = ?", (state, secret_id, row[1]))
        return _row_to_version((*row[:2], state, *row[3:]))

    def disable(self, secret_id: str, version: int | str) -> base.SecretVersion:
        return self._set_state(secret_id, version, "DISABLED")

    def enable(self, secret_id: str, version: int | str) -> base.SecretVersion:
        return self._set_state(secret_id, version, "ENABLED")
