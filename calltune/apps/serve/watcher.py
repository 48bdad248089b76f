"""Which model `calltune serve` answers with: the secret's latest version, followed while the server runs.

A `Watcher` thread re-reads the secret's `latest` every `serve.refresh_s` seconds: a new version's model is loaded
beside the current one and swapped in with one assignment, so a request is answered by the model it started with; a
disabled latest version stops being served. `load_responder` turns a secret's payload into what answers: a local
model folder (`file://`) or a Vertex AI endpoint.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from calltune.backends.registry import open_registry
from calltune.backends.resources import ResourceName, is_vertex_model
from calltune.config import DeployConfig, ServeConfig, SplitConfig
from calltune.release.store import model_path_from_endpoint
from calltune.runtime.responders import EndpointResponder, GeminiResponder, Responder

log = logging.getLogger(__name__)


def load_responder(endpoint: str, cfg: ServeConfig | None = None, split: SplitConfig | None = None) -> Responder:
    """The model behind a secret's payload: a file:// model folder, or a Vertex AI resource name. `split`: the
    windowing of a model whose card does not record it (and of a Vertex endpoint)."""
    cfg = cfg or ServeConfig()
    if is_vertex_model(endpoint):
        from calltune.backends.vertex_endpoint import EndpointChat

        chat = EndpointChat(endpoint, api_endpoint=cfg.vertex_base_url) \
            if ResourceName.parse(endpoint, "endpoints") else None  # a tuned Gemini model: no chat route
        if chat and chat.is_vllm():  # deploy.target=vertex-endpoint: the vLLM container's chat completions
            return EndpointResponder(endpoint, split=split, max_concurrency=cfg.max_batch, chat=chat)
        return GeminiResponder(endpoint, cfg.vertex_base_url, split, max_concurrency=cfg.max_batch)
    from calltune.runtime.local_responder import LocalResponder  # the one path that imports torch

    return LocalResponder(model_path_from_endpoint(endpoint), split, max_batch=cfg.max_batch,
                          max_prompt_tokens=cfg.max_prompt_tokens, batch_wait_s=cfg.batch_wait_ms / 1000,
                          guardrails=cfg.guardrails)


def redact(text: str, endpoint: str, name: str) -> str:
    """`text` with the secret's payload (and the folder it names) replaced by `name`: logs and errors name versions."""
    for s in sorted({endpoint, unquote(urlsplit(endpoint).path)} - {""}, key=len, reverse=True):
        text = text.replace(s, name)
    return text


@dataclass(frozen=True)
class Served:
    version: int
    endpoint: str
    responder: Responder


class Watcher:
    """Keeps `current` on the model of the secret's latest version, checking every `refresh_s` seconds. `current` is
    None while the latest version is disabled; `problem` says why."""

    def __init__(self, cfg: DeployConfig, state_dir: Path, refresh_s: float = 30.0,
                 load: Callable[[str], Responder] = load_responder):
        self.cfg, self.state_dir, self.refresh_s, self._load = cfg, state_dir, refresh_s, load
        self.current: Served | None = None
        self.problem = ""
        self._last: Served | None = None  # the model loaded last, kept while its version is disabled
        self._failed: int | None = None  # a version whose model did not load: not tried again
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="calltune-serve-watcher", daemon=True)

    def start(self) -> Served | None:
        """Load the latest version's model (errors raise here), then keep watching in the background."""
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error
        return self.current

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._last:
            self._last.responder.close()

    def _run(self) -> None:
        # The registry lives in this thread (a SQLite connection stays in the thread that opened it).
        try:
            registry = open_registry(self.cfg, self.state_dir)
            with closing(registry):
                self._check(registry)
                self._ready.set()
                while not self._stop.wait(self.refresh_s):
                    try:
                        self._check(registry)
                    except Exception as exc:  # never let the watcher die: the current model keeps serving
                        log.error("serve: checking %s failed (%s)", self.cfg.secret_id, type(exc).__name__)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def _warn(self, problem: str) -> None:
        if problem != self.problem:  # once per problem, not once per check
            log.warning("serve: %s", problem)
        self.problem = problem

    def _check(self, registry) -> None:
        secret = self.cfg.secret_id
        try:
            latest = registry.get_version(secret, "latest")
            if latest.state != "ENABLED":
                self.current = None  # in-flight requests finish on the responder they hold
                return self._warn(f"{secret} version {latest.version} (the latest) is disabled: nothing is served")
            version = latest.version
            known = self._last is not None and version in (self._last.version, self._failed)
            endpoint = None if known else registry.access(secret, version).decode("utf-8")
        except Exception as exc:  # registry unreachable...
            if self._last is None:
                raise
            return self._warn(f"cannot read {secret}'s latest version ({type(exc).__name__}); still serving "
                              f"version {self._last.version}")
        if endpoint is None:
            if version == self._last.version:
                self.current, self.problem = self._last, ""
            return
        name = f"<{secret} version {version}>"
        if self._last and endpoint == self._last.endpoint:  # a rollback or redeploy of the same model
            self.current = self._last = Served(version, endpoint, self._last.responder)
            self.problem = ""
            return
        log.info("serve: loading %s version %d", secret, version)
        start = time.monotonic()
        try:
            responder = self._load(endpoint)
        except Exception as exc:
            why = redact(f"{type(exc).__name__}: {exc}", endpoint, name)
            if self._last is None:
                raise ValueError(f"{secret} version {version} cannot be served ({why})") from None
            self._failed = version
            log.error("serve: %s version %d failed to load (%s); still serving version %d",
                      secret, version, why, self._last.version)
            return
        old, self.current = self._last, Served(version, endpoint, responder)  # one assignment: old or new
        self._last, self.problem = self.current, ""
        if old:
            old.responder.close()  # after the requests it already holds
        log.info("serve: now serving %s version %d (loaded in %.1f s)", secret, version, time.monotonic() - start)
