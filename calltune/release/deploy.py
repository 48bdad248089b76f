"""Deploy step: copy the model into the content-addressed model store (calltune.release.store) and publish its endpoint
as a new secret version.

Apps read the secret's `latest` version (`store.resolve_endpoint`) to find the model to serve. The store copy means a
deleted run folder never breaks a published endpoint. `rollback` re-publishes an earlier version's endpoint as a
new version, since `latest` is always the most recently created one. Both decide and write inside the registry's
`exclusive` hold, so concurrent deploys and rollbacks never lose an update nor publish one model twice.
"""
from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path

from calltune.backends.registry import Registry, SecretNotFound, SecretVersion, VersionDisabled, open_registry
from calltune.config import DeployConfig
from calltune.release.store import store_model
from calltune.runtime.loading import model_sha

log = logging.getLogger(__name__)


def deploy(model_dir: Path, cfg: DeployConfig, state_dir: Path, *, run_id: str, metrics: dict[str, float]) -> dict:
    """Store the model and add a secret version whose payload is its `file://` endpoint (a remote model's folder:
    the Vertex endpoint its card names).

    request_id = run_id, so a retried deploy of the same run returns its first version instead of adding another.
    A model the latest version already serves (an evaluation-only run of the champion) adds no version either:
    nothing would change for apps, and keep_enabled_versions would disable a rollback target for it.
    """
    from calltune.runtime.loading import model_source

    source = model_source(model_dir)
    if isinstance(source, str):  # a remote model (a tuned Gemini): its Vertex endpoint is the payload, nothing to copy
        endpoint, sha = source, model_sha(Path(model_dir))
    else:
        store, sha = store_model(model_dir, state_dir)
        endpoint = store.as_uri()
    annotations = {"run_id": run_id, "model_sha": sha, **{f"metric.{k}": str(v) for k, v in metrics.items()}}
    with closing(open_registry(cfg, state_dir)) as registry, registry.exclusive(cfg.secret_id):
        try:
            versions = registry.list_versions(cfg.secret_id)  # newest first
        except SecretNotFound:
            versions = []
        before = {v.version for v in versions}
        latest = versions[0] if versions else None
        # Another run's version already serving this model; this run's own (maybe half-done) add is add_version's
        # to settle, through request_id.
        if latest and latest.annotations.get("run_id") not in (None, run_id) \
                and _serves(registry, cfg.secret_id, latest.version, endpoint):
            version = latest
        else:
            version = registry.add_version(cfg.secret_id, endpoint.encode(), annotations=annotations,
                                           request_id=run_id)
        disabled = disable_old_versions(registry, cfg.secret_id, cfg.keep_enabled_versions)
    created = version.version not in before
    log.info("deploy: model %s -> secret %s version %d (%s)", sha, cfg.secret_id, version.version,
             "added" if created else "already added by this run" if version.annotations.get("run_id") == run_id
             else "it already serves this model")
    return {"secret_id": cfg.secret_id, "version": version.version, "endpoint": endpoint, "model_sha": sha,
            "created": created, "disabled": disabled}


def _serves(registry: Registry, secret_id: str, number: int, endpoint: str) -> bool:
    """Whether version `number` holds `endpoint` (a disabled one serves nothing)."""
    try:
        return registry.access(secret_id, number) == endpoint.encode()
    except VersionDisabled:
        return False


def disable_old_versions(registry: Registry, secret_id: str, keep: int) -> list[int]:
    """Disable (never destroy) the enabled versions older than the newest `keep`; 0 disables nothing.

    A disabled version can be enabled again (`calltune secrets --enable N`), so nothing is ever lost.
    """
    if keep <= 0:
        return []
    old = [v.version for v in registry.list_versions(secret_id)[keep:] if v.state == "ENABLED"]
    for number in old:
        registry.disable(secret_id, number)
    if old:
        log.info("deploy: disabled %s version(s) %s (deploy.keep_enabled_versions=%d)", secret_id, old, keep)
    return old


def rollback(cfg: DeployConfig, state_dir: Path, to: int | None = None) -> dict:
    """Publish an earlier version's endpoint again, as a new version: apps following `latest` switch to it.

    What is served now is the endpoint of the newest enabled version (a disabled latest serves nothing). By
    default the target is the newest enabled version holding another endpoint, skipping the endpoints that a
    later rollback moved away from, so a second rollback goes one more model back instead of returning to the
    model the first one left, while a model promoted again after a rollback is a target again. The new version
    records `rollback_from` (the version served before) and `rollback_to`.
    """
    with closing(open_registry(cfg, state_dir)) as registry, registry.exclusive(cfg.secret_id):
        versions = registry.list_versions(cfg.secret_id)  # newest first
        if not versions:
            raise ValueError(f"secret {cfg.secret_id} has no versions: nothing to roll back")
        serving = next((v for v in versions if v.state == "ENABLED"), None)
        payloads: dict[int, bytes | None] = {}

        def payload(v: SecretVersion) -> bytes | None:
            if v.version not in payloads:
                try:
                    payloads[v.version] = registry.access(cfg.secret_id, v.version)
                except VersionDisabled:
                    payloads[v.version] = None
            return payloads[v.version]

        current = payload(serving) if serving else None
        if to is None:
            target = _rollback_target(versions, serving, current, payload)
            if target is None:
                raise ValueError(f"secret {cfg.secret_id}: no earlier enabled version holds another endpoint to roll back "
                                 f"to (name one with --to; `calltune secrets` lists them)")
            endpoint = payload(target)
        else:
            target, endpoint = registry.get_version(cfg.secret_id, to), registry.access(cfg.secret_id, to)
            if endpoint == current:
                raise ValueError(f"secret {cfg.secret_id}: version {to} holds the same endpoint as version "
                                 f"{serving.version}, served now; nothing to roll back")
        source = serving or versions[0]
        annotations = {**{k: v for k, v in target.annotations.items() if not k.startswith("rollback_")},
                       "rollback_from": str(source.version), "rollback_to": str(target.version)}
        added = registry.add_version(cfg.secret_id, endpoint, annotations=annotations)
        disabled = disable_old_versions(registry, cfg.secret_id, cfg.keep_enabled_versions)
    log.info("rollback: secret %s version %d now holds version %d's endpoint (was version %d)",
             cfg.secret_id, added.version, target.version, source.version)
    return {"secret_id": cfg.secret_id, "version": added.version, "rolled_back_to": target.version,
            "rolled_back_from": source.version, "disabled": disabled,
            "latest_was_disabled": versions[0].state != "ENABLED"}


def _rollback_target(versions: list[SecretVersion], serving: SecretVersion | None, current: bytes | None,
                     payload) -> SecretVersion | None:
    """Newest first: the first enabled version older than `serving` whose endpoint is neither `current` nor one
    that a newer rollback left (its `rollback_from`)."""
    if serving is None:
        return None
    avoid, left = {current, None}, set()
    for v in versions:
        if v.version in left:
            avoid.add(payload(v))
        elif v.version < serving.version and v.state == "ENABLED" and payload(v) not in avoid:
            return v
        if v.annotations.get("rollback_from", "").isdigit():
            left.add(int(v.annotations["rollback_from"]))
    return None
