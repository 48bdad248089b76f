"""Deploy step: copy the model into the content-addressed model store and publish its endpoint as a new secret version.

Apps read the secret's `latest` version (`resolve_endpoint`) to find the model to serve. The store copy means a
deleted run folder never breaks a published endpoint.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from calltune.backends.registry import SecretNotFound, open_registry
from calltune.config import DeployConfig

log = logging.getLogger(__name__)


def model_sha(model_dir: Path) -> str:
    """SHA-256 over every file's relative path and contents, first 16 hex digits: same files, same store entry."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"model folder {model_dir} holds no files")
    total = hashlib.sha256()
    for p in files:
        with open(p, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        total.update(f"{p.relative_to(model_dir).as_posix()}\0{digest}\n".encode())
    return total.hexdigest()[:16]


def store_model(model_dir: Path, state_dir: Path) -> tuple[Path, str]:
    """Copy `model_dir` to `<state_dir>/models/<sha>` unless it is there already; returns (store path, sha)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    sha = model_sha(model_dir)
    store = Path(state_dir).expanduser().resolve() / "models" / sha
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        # Copy beside the target, then rename: the store never shows a half-copied model.
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha}.", dir=store.parent))
        try:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
            os.rename(tmp, store)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not store.is_dir():  # a concurrent deploy of the same model wins the rename: fine
                raise
    return store, sha


def deploy(model_dir: Path, cfg: DeployConfig, state_dir: Path, *, run_id: str, metrics: dict[str, float]) -> dict:
    """Store the model and add a secret version whose payload is its `file://` endpoint.

    request_id = run_id, so a retried deploy of the same run returns its first version instead of adding another.
    """
    store, sha = store_model(model_dir, state_dir)
    endpoint = store.as_uri()
    annotations = {"run_id": run_id, "model_sha": sha, **{f"metric.{k}": str(v) for k, v in metrics.items()}}
    with closing(open_registry(cfg, state_dir)) as registry:
        try:
            before = {v.version for v in registry.list_versions(cfg.secret_id)}
        except SecretNotFound:
            before = set()
        version = registry.add_version(cfg.secret_id, endpoint.encode(), annotations=annotations, request_id=run_id)
    created = version.version not in before
    log.info("deploy: model %s -> secret %s version %d (%s)", sha, cfg.secret_id, version.version,
             "added" if created else "already added by this run")
    return {"secret_id": cfg.secret_id, "version": version.version, "endpoint": endpoint, "model_sha": sha, "created": created}


def resolve_endpoint(cfg: DeployConfig, state_dir: Path, version: str = "latest") -> str:
    """The endpoint published in the secret's version (`latest` by default): what apps call to find the model."""
    with closing(open_registry(cfg, state_dir)) as registry:
        return registry.access(cfg.secret_id, version).decode("utf-8")


def model_path_from_endpoint(endpoint: str) -> Path:
    """The local model folder behind a `file://` endpoint."""
    url = urlparse(endpoint)
    if url.scheme != "file" or url.netloc not in ("", "localhost"):
        raise ValueError(f"endpoint {endpoint!r}: only local file:// endpoints can be served for now")
    path = Path(url2pathname(url.path))  # url2pathname also unquotes
    if not path.is_dir():
        raise FileNotFoundError(f"endpoint {endpoint!r}: model folder {path} is missing")
    return path
