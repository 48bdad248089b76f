"""Secret registry with Google Secret Manager's semantics: a local SQLite implementation here, Google Secret
Manager itself in calltune.backends.secret_manager; `open_registry` picks one by `deploy.registry`.

- A secret holds numbered versions 1, 2, 3, ... that are never overwritten, renumbered or reused.
- `latest` is the most recently created version. If it is disabled, accessing `latest` fails: like Secret Manager,
  it never falls back to an older version.
- A disabled version cannot be accessed until it is enabled again.
- `exclusive(secret_id)` holds off other writers of the secret, so a deploy or rollback decides from versions
  nobody else changes before its write lands (SQLite: one BEGIN IMMEDIATE transaction; Secret Manager: a lease).
Payloads are never logged and never appear in errors or in `SecretVersion`.
"""
from __future__ import annotations

import json
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import ContextManager, Iterator, Protocol

from calltune.backends import connect_sqlite, write_transaction
from calltune.config import DeployConfig

REGISTRY_FILE = "registry.sqlite"
_SECRET_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")  # Secret Manager's rule for secret ids


class RegistryError(LookupError):
    """A registry request that failed; a LookupError, so the CLI reports it without a traceback."""


class SecretNotFound(RegistryError):
    pass


class VersionNotFound(RegistryError):
    pass


class VersionDisabled(RegistryError):
    pass


class RequestIdConflict(RegistryError):
    """A request_id was reused with a different payload: a retry must resend the same payload."""


@dataclass(frozen=True)
class SecretVersion:
    secret_id: str
    version: int
    state: str  # ENABLED | DISABLED
    create_time: str  # ISO 8601, UTC
    annotations: dict[str, str] = field(default_factory=dict)


class Registry(Protocol):
    def add_version(self, secret_id: str, payload: bytes, *, annotations: dict[str, str] | None = None,
                    request_id: str | None = None) -> SecretVersion: ...
    def access(self, secret_id: str, version: int | str = "latest") -> bytes: ...
    def get_version(self, secret_id: str, version: int | str = "latest") -> SecretVersion: ...
    def list_versions(self, secret_id: str) -> list[SecretVersion]: ...
    def list_secrets(self) -> list[str]: ...
    def disable(self, secret_id: str, version: int | str) -> SecretVersion: ...
    def enable(self, secret_id: str, version: int | str) -> SecretVersion: ...
    def exclusive(self, secret_id: str) -> ContextManager[None]: ...
    def close(self) -> None: ...


def check_secret_id(secret_id: str) -> str:
    if not _SECRET_ID.fullmatch(secret_id):
        raise RegistryError(f"invalid secret id {secret_id!r}: use 1-255 letters, digits, '-' or '_'")
    return secret_id


def check_new_version(secret_id: str, payload: bytes, annotations: dict[str, str] | None) -> dict[str, str]:
    """The arguments of `add_version`, checked the same way by every backend; returns a copy of the annotations."""
    check_secret_id(secret_id)
    if not isinstance(payload, bytes):
        raise RegistryError(f"secret {secret_id}: payload must be bytes, not {type(payload).__name__}")
    annotations = dict(annotations or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise RegistryError(f"secret {secret_id}: annotation keys and values must be strings")
    return annotations


def version_number(secret_id: str, version: int | str) -> int | str:
    """'latest' or the version as an int (from an int or a digit string)."""
    if version == "latest":
        return version
    try:
        return int(version)
    except (TypeError, ValueError):
        raise RegistryError(f"secret {secret_id}: version must be 'latest' or a number, not {version!r}") from None


_COLUMNS = "secret_id, version, state, create_time, annotations"


def _row_to_version(row: tuple) -> SecretVersion:
    return SecretVersion(row[0], row[1], row[2], row[3], json.loads(row[4]))


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
        check_secret_id(secret_id)
        with write_transaction(self._db):
            yield

    def add_version(self, secret_id: str, payload: bytes, *, annotations: dict[str, str] | None = None,
                    request_id: str | None = None) -> SecretVersion:
        """Add the next version (creating the secret if needed); a repeated request_id returns the version it added."""
        annotations = check_new_version(secret_id, payload, annotations)
        now = datetime.now(timezone.utc).isoformat()
        with write_transaction(self._db) as db:
            if request_id is not None:
                row = db.execute(f"SELECT {_COLUMNS}, payload FROM versions WHERE secret_id = ? AND request_id = ?",
                                 (secret_id, request_id)).fetchone()
                if row:
                    if row[5] != payload:
                        raise RequestIdConflict(f"secret {secret_id}: request_id {request_id!r} already added "
                                                f"version {row[1]} with a different payload")
                    return _row_to_version(row)
            db.execute("INSERT OR IGNORE INTO secrets VALUES (?, ?)", (secret_id, now))
            (number,) = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE secret_id = ?",
                                   (secret_id,)).fetchone()
            db.execute("INSERT INTO versions VALUES (?, ?, 'ENABLED', ?, ?, ?, ?)",
                       (secret_id, number, now, json.dumps(annotations, sort_keys=True), request_id, payload))
        return SecretVersion(secret_id, number, "ENABLED", now, annotations)

    def _find(self, db: sqlite3.Connection, secret_id: str, version: int | str, columns: str) -> tuple:
        """The row of `version` ('latest', an int or a digit string); raises when the secret or version is missing."""
        if version == "latest":
            row = db.execute(f"SELECT {columns} FROM versions WHERE secret_id = ? ORDER BY version DESC LIMIT 1",
                             (secret_id,)).fetchone()
        else:
            number = version_number(secret_id, version)
            row = db.execute(f"SELECT {columns} FROM versions WHERE secret_id = ? AND version = ?",
                             (secret_id, number)).fetchone()
        if row is None:
            if not db.execute("SELECT 1 FROM secrets WHERE secret_id = ?", (secret_id,)).fetchone():
                raise SecretNotFound(f"secret {secret_id!r} not found in {self.path}")
            raise VersionNotFound(f"secret {secret_id}: version {version} not found")
        return row

    def access(self, secret_id: str, version: int | str = "latest") -> bytes:
        """The payload of an enabled version; `latest` is the newest version and fails if that one is disabled."""
        row = self._find(self._db, secret_id, version, f"{_COLUMNS}, payload")
        if row[2] != "ENABLED":
            alias = " (latest; older versions are not used instead)" if version == "latest" else ""
            raise VersionDisabled(f"secret {secret_id}: version {row[1]}{alias} is disabled; enable it or add a new version")
        return row[5]

    def get_version(self, secret_id: str, version: int | str = "latest") -> SecretVersion:
        return _row_to_version(self._find(self._db, secret_id, version, _COLUMNS))

    def list_versions(self, secret_id: str) -> list[SecretVersion]:
        """Newest first, as Secret Manager lists them."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM versions WHERE secret_id = ? ORDER BY version DESC",
                                (secret_id,)).fetchall()
        if not rows and not self._db.execute("SELECT 1 FROM secrets WHERE secret_id = ?", (secret_id,)).fetchone():
            raise SecretNotFound(f"secret {secret_id!r} not found in {self.path}")
        return [_row_to_version(r) for r in rows]

    def list_secrets(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT secret_id FROM secrets ORDER BY secret_id")]

    def _set_state(self, secret_id: str, version: int | str, state: str) -> SecretVersion:
        with write_transaction(self._db) as db:
            row = self._find(db, secret_id, version, _COLUMNS)
            db.execute("UPDATE versions SET state = ? WHERE secret_id = ? AND version = ?", (state, secret_id, row[1]))
        return _row_to_version((*row[:2], state, *row[3:]))

    def disable(self, secret_id: str, version: int | str) -> SecretVersion:
        return self._set_state(secret_id, version, "DISABLED")

    def enable(self, secret_id: str, version: int | str) -> SecretVersion:
        return self._set_state(secret_id, version, "ENABLED")


def open_registry(cfg: DeployConfig, state_dir: str | Path, *, readonly: bool = False) -> Registry:
    """The registry `deploy.registry` names: sqlite (in state_dir) or secret-manager (in deploy.project).
    `readonly`: for commands that only read (a missing local registry reads as empty and is not created)."""
    if cfg.registry == "sqlite":
        return SqliteRegistry(Path(state_dir).expanduser() / REGISTRY_FILE, readonly=readonly)
    if cfg.registry == "secret-manager":
        from calltune.backends.secret_manager import SecretManagerRegistry

        return SecretManagerRegistry(cfg)
    raise ValueError(f"unknown deploy.registry {cfg.registry!r}")
