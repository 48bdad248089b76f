"""The secret registry `deploy.registry` names: `open_registry` picks the local SQLite one or Google Secret Manager.
The interface and errors are in calltune.backends.registry_base; they are importable from here too."""
from __future__ import annotations

from pathlib import Path

from calltune.backends.registry_base import (
    Registry,
    RegistryError,
    RequestIdConflict,
    SecretNotFound,
    SecretVersion,
    VersionDisabled,
    VersionNotFound,
)
from calltune.backends.sqlite_registry import REGISTRY_FILE, SqliteRegistry
from calltune.config import DeployConfig

__all__ = ["REGISTRY_FILE", "Registry", "RegistryError", "RequestIdConflict", "SecretNotFound", "SecretVersion",
           "SqliteRegistry", "VersionDisabled", "VersionNotFound", "open_registry"]


def open_registry(cfg: DeployConfig, state_dir: str | Path, *, readonly: bool = False) -> Registry:
    """The registry `deploy.registry` names: sqlite (in state_dir) or secret-manager (in deploy.project).
    `readonly`: for commands that only read (a missing local registry reads as empty and is not created)."""
    if cfg.registry == "sqlite":
        return SqliteRegistry(Path(state_dir).expanduser() / REGISTRY_FILE, readonly=readonly)
    if cfg.registry == "secret-manager":
        from calltune.backends.secret_manager import SecretManagerRegistry

        return SecretManagerRegistry(cfg)
    raise ValueError(f"unknown deploy.registry {cfg.registry!r}")
