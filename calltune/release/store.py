"""The model store and the secret's endpoints: where a published model lives, and which model a secret's version names.

A promoted model is copied to `<state_dir>/models/<sha>` (content-addressed: the same files, the same folder), so a
deleted run folder never breaks a published endpoint. A secret version's payload is the model's endpoint: a
`file://` URL of its store folder, or a Vertex AI resource name (calltune.backends.resources).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from calltune.backends.registry import open_registry
from calltune.config import DeployConfig
from calltune.runtime.loading import model_sha

log = logging.getLogger(__name__)


def store_model(model_dir: Path, state_dir: Path) -> tuple[Path, str]:
    """Copy `model_dir` to `<state_dir>/models/<sha>` unless it is there already; returns (store path, sha)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    sha = model_sha(model_dir)
    store = Path(state_dir).expanduser().resolve() / "models" / sha
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        sweep_orphans(store.parent)
        # Copy beside the target, then rename: the store never shows a half-copied model. The copier's pid is in
        # the name, so a copy left by a killed deploy is told from one in progress.
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha}.{os.getpid()}.", dir=store.parent))
        try:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
            os.rename(tmp, store)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not store.is_dir():  # a concurrent deploy of the same model wins the rename: fine
                raise
    return store, sha


def sweep_orphans(models: Path) -> list[Path]:
    """Remove the temporary copies (`.<sha>.<pid>.*`) whose deploy process is gone (killed mid-copy)."""
    swept = []
    for tmp in models.glob(".*.*.*"):
        pid = tmp.name.split(".")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            swept.append(tmp)
    if swept:
        log.info("deploy: removed %d half-copied model folder(s) left by killed deploys in %s", len(swept), models)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True


def resolve_endpoint(cfg: DeployConfig, state_dir: Path, version: str = "latest") -> str:
    """The endpoint published in the secret's version (`latest` by default): what apps call to find the model."""
    with closing(open_registry(cfg, state_dir, readonly=True)) as registry:
        return registry.access(cfg.secret_id, version).decode("utf-8")


def model_path_from_endpoint(endpoint: str) -> Path:
    """The local model folder behind a `file://` endpoint. The endpoint is a secret's payload: errors never show it."""
    url = urlparse(endpoint)
    if url.scheme != "file" or url.netloc not in ("", "localhost"):
        raise ValueError(f"the secret's endpoint (a {url.scheme or 'schemeless'} URL) is not a local file:// model "
                         f"folder: only those can be served here; `calltune secrets` lists the versions")
    path = Path(url2pathname(url.path))  # url2pathname also unquotes
    if not path.is_dir():
        raise FileNotFoundError("the model folder the secret's endpoint names is missing (its store copy was "
                                "removed?); roll back or deploy the model again")
    return path
