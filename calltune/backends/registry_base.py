"""The secret registry's interface (`Registry`), its errors and the argument checks every backend shares.

Semantics (Google Secret Manager's; calltune.backends.sqlite_registry keeps them locally):
- A secret holds numbered versions 1, 2, 3, ... that are never overwritten, renumbered or reused.
- `latest` is the most recently created version. If it is disabled, accessing `latest` fails: like Secret Manager,
  it never falls back to an older version.
- A disabled version cannot be accessed until it is enabled again.
- `exclusive(secret_id)` holds off other writers of the secret, so a deploy or rollback decides from versions
  nobody else changes before its write lands (SQLite: one BEGIN IMMEDIATE transaction; Secret Manager: a lease).
Payloads are never logged and never appear in errors or in `SecretVersion`.
"""
from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

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
    def exclusive(self, secret_id: str) -> AbstractContextManager[None]: ...
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


