"""deploy.target=vertex-endpoint: the promoted open model served on a Vertex AI endpoint (the vLLM container), the
endpoint's resource name published as the secret's new version; the rollback that re-points both; and the check
that shows what each version names against what is deployed.

The endpoint is created once per secret and reused, so every version holds the same resource name; what changes is
the model behind it, which each version records in its annotations (`vertex_model`, `deployed_model_id`). Apps read
the secret as before and send OpenAI-style chat completions to the endpoint (backends.vertex_endpoint.EndpointChat).

A deploy and a rollback go in this order, so that the registry and the endpoint agree whatever fails: the new model
deployed beside the serving one with a canary share, checked to answer, given all the traffic in one update; then
the secret's new version; then the sweep, which undeploys every deployed model of the secret's endpoints but the one
its latest enabled version names. A failure before the traffic moves leaves the old model serving and the secret
unchanged (the new deployment is undeployed, or swept by the next run); a failure after it completes on a rerun of
the same run, which finds each piece done.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from calltune.backends.registry import SecretNotFound, open_registry
from calltune.backends.resources import resource_id
from calltune.backends.vertex_endpoint import (
    EndpointError,
    Served,
    VertexEndpoints,
    model_id,
    named_deployment,
    vllm_args,
)
from calltune.config import DeployConfig, GcpConfig
from calltune.release.deploy import deploy, disable_old_versions
from calltune.release.store import store_model
from calltune.runtime.loading import model_source, read_model_card

log = logging.getLogger(__name__)
MOUNT = Path("/gcs")  # Vertex AI's Cloud Storage FUSE mount: /gcs/BUCKET/path is gs://BUCKET/path


def storage_uri(path: Path, mount: Path = MOUNT) -> str:
    """gs:// URI of a folder seen through the Cloud Storage FUSE mount."""
    try:
        return "gs://" + Path(path).resolve().relative_to(Path(mount).resolve()).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not on Cloud Storage (under {mount}/): a Vertex endpoint cannot load it; "
                         f"run on Vertex AI with state_dir=/gcs/BUCKET/...") from None


def serving_args(model_dir: Path, sha: str, gcp: GcpConfig, mount: Path = MOUNT) -> tuple[str, list[str]]:
    """(artifact URI, vLLM arguments): the merged model when tune.merge wrote one, else base model + LoRA adapter;
    served under the model's own name (its Model Registry ID) besides `customer`."""
    card, name = read_model_card(model_dir) or {}, model_id(sha)
    if (model_dir / "merged").is_dir():
        uri = storage_uri(model_dir / "merged", mount)
        return uri, vllm_args(uri, name=name, accelerator_count=gcp.serving_accelerator_count)
    if not card.get("base_model_path"):
        raise ValueError(f"{model_dir}: no merged/ folder and no base model in its card: nothing vLLM can serve")
    adapter = storage_uri(model_dir, mount)
    adapter_config = model_dir / "adapter_config.json"
    rank = int(json.loads(adapter_config.read_text()).get("r", 16)) if adapter_config.is_file() else 16
    return adapter, vllm_args(storage_uri(Path(card["base_model_path"]), mount), name=name, adapter_uri=adapter,
                              lora_rank=rank, accelerator_count=gcp.serving_accelerator_count)


def deploy_to_endpoint(model_dir: Path, cfg: DeployConfig, gcp: GcpConfig, state_dir: Path, *, run_id: str,
                       metrics: dict[str, float], mount: Path = MOUNT) -> dict:
    """Serve the model on the secret's endpoint and publish the endpoint as a new secret version; then sweep.

    Idempotent per run: the model, the endpoint and the deployment have IDs derived from the model sha, the secret
    and the run, and the version is added with request_id = run_id. A model the latest version names and that takes
    all the traffic adds nothing (an evaluation-only run of the champion) but the sweep.
    """
    model_dir = Path(model_dir)
    if isinstance(model_source(model_dir), str):  # a remote model (a tuned Gemini) already has its endpoint
        return deploy(model_dir, cfg, state_dir, run_id=run_id, metrics=metrics)
    # Served from the model store (state_dir/models/<sha>): vLLM reads the gs:// files each time a replica starts,
    # so they must outlive the run's folder; evaluate can score the champion from there too.
    store, sha = store_model(model_dir, state_dir)
    vertex = VertexEndpoints(gcp, cfg)
    with closing(open_registry(cfg, state_dir)) as registry:
        versions = _versions(registry, cfg.secret_id)  # newest first
        named = _named(registry, cfg.secret_id, versions)
    latest = versions[0] if versions else None
    if named and named[0].version == latest.version and latest.annotations.get("model_sha") == sha \
            and latest.annotations.get("run_id") != run_id and _serving(vertex, *named):
        log.info("deploy: model %s already serves from %s version %d", sha, cfg.secret_id, latest.version)
        return {"secret_id": cfg.secret_id, "version": latest.version, "model_sha": sha, "created": False,
                "endpoint": named[1], "disabled": [], "vertex_model": latest.annotations["vertex_model"],
                **_swept(vertex, cfg, state_dir)}
    artifact_uri, args = serving_args(store, sha, gcp, mount)
    served = _swept_on_failure(vertex, cfg, state_dir, lambda: vertex.serve(
        sha=sha, display_name=f"calltune-{sha}", artifact_uri=artifact_uri, args=args, purpose=run_id,
        named=named[1] if named else None))
    annotations = {"run_id": run_id, "model_sha": sha, "model_store": store.as_uri(), "vertex_model": served.model,
                   "deployed_model_id": served.deployed_model_id, **{f"metric.{k}": str(v) for k, v in metrics.items()}}
    # The endpoint work above takes minutes, longer than a registry hold should; the write itself is held (and
    # keyed by run_id), so concurrent deploys and rollbacks never interleave their version bookkeeping.
    with closing(open_registry(cfg, state_dir)) as registry, registry.exclusive(cfg.secret_id):
        before = {v.version for v in _versions(registry, cfg.secret_id)}
        version = registry.add_version(cfg.secret_id, served.endpoint.encode(), annotations=annotations,
                                       request_id=run_id)
        disabled = disable_old_versions(registry, cfg.secret_id, cfg.keep_enabled_versions)
    swept = _swept(vertex, cfg, state_dir)
    log.info("deploy: model %s on %s -> secret %s version %d (undeployed %s)", sha, served.endpoint, cfg.secret_id,
             version.version, swept["undeployed"] or "nothing")
    return {"secret_id": cfg.secret_id, "version": version.version, "endpoint": served.endpoint, "model_sha": sha,
            "created": version.version not in before, "disabled": disabled, "vertex_model": served.model, **swept}


def _named(registry, secret_id: str, versions: list) -> tuple | None:
    """(version, endpoint) of the newest enabled version that names a Vertex model: what must serve."""
    version = next((v for v in versions if v.state == "ENABLED" and v.annotations.get("vertex_model")), None)
    return (version, registry.access(secret_id, version.version).decode()) if version else None


def _serving(vertex: VertexEndpoints, version, endpoint: str) -> bool:
    """Whether the deployment `version` names takes all the traffic of its endpoint."""
    found = named_deployment(vertex.deployments(endpoint), endpoint, version.annotations.get("deployed_model_id", ""),
                             version.annotations["vertex_model"])
    return found is not None and found.traffic == 100


def _swept_on_failure(vertex: VertexEndpoints, cfg: DeployConfig, state_dir: Path, put: Callable[[], Served]) -> Served:
    """put(): the new model deployed, checked and given the traffic. When it fails, the traffic has not moved (or
    moved back nowhere the secret does not name): the sweep undeploys what it deployed, the secret is unchanged."""
    try:
        return put()
    except EndpointError as exc:
        try:
            _swept(vertex, cfg, state_dir)
        except EndpointError as failed:
            raise EndpointError(f"{exc}; the sweep after it failed too ({failed}): the next deploy or rollback "
                                f"sweeps again") from exc
        raise EndpointError(f"{exc}; the secret is unchanged, and the sweep undeployed every model it does not "
                            f"name") from exc


def _swept(vertex: VertexEndpoints, cfg: DeployConfig, state_dir: Path) -> dict:
    """Sweep the secret's endpoints down to the model its latest enabled version names (the one thing that must
    never leak is a deployed model: each is a billed GPU replica); report other endpoints labelled for it in one
    line, deleted once empty with deploy.sweep_endpoints."""
    with closing(open_registry(cfg, state_dir, readonly=True)) as registry:
        named = _named(registry, cfg.secret_id, _versions(registry, cfg.secret_id))
    if named is None:  # no version names a deployment: none should be left
        swept = vertex.sweep(None, delete_empty=cfg.sweep_endpoints)
    else:
        version, endpoint = named
        swept = vertex.sweep(endpoint, version.annotations.get("deployed_model_id", ""),
                             version.annotations["vertex_model"], delete_empty=cfg.sweep_endpoints)
    if swept.duplicates:
        log.warning("deploy: %d more endpoint(s) labelled for secret %s, emptied%s: %s", len(swept.duplicates),
                    cfg.secret_id, ", deleted" if swept.deleted else " (deploy.sweep_endpoints=true deletes them)",
                    ", ".join(swept.duplicates))
    return {"undeployed": [f"{d.endpoint}: {d.deployed_model_id}" for d in swept.undeployed],
            "duplicates": swept.duplicates}


def _versions(registry, secret_id: str) -> list:
    try:
        return registry.list_versions(secret_id)
    except SecretNotFound:
        return []


def serves_on_endpoint(cfg: DeployConfig, state_dir: Path) -> bool:
    """Whether the secret is published by deploy_to_endpoint (its latest version names a Vertex model)."""
    if cfg.target != "auto":
        return cfg.target == "vertex-endpoint"
    with closing(open_registry(cfg, state_dir)) as registry:
        versions = _versions(registry, cfg.secret_id)
    return bool(versions and versions[0].annotations.get("vertex_model"))


def rollback(cfg: DeployConfig, gcp: GcpConfig, state_dir: Path, to: int | None = None) -> dict:
    """Put an earlier version's model back on the endpoint (deployed beside the serving one from its uploaded copy,
    checked to answer, all the traffic), publish it as a new version, then sweep.

    By default the target is the newest enabled version before the latest that holds another model and that no
    earlier rollback moved away from, as in deploy.rollback.
    """
    with closing(open_registry(cfg, state_dir)) as registry:
        versions = registry.list_versions(cfg.secret_id)  # newest first
        if not versions:
            raise ValueError(f"secret {cfg.secret_id} has no versions: nothing to roll back")
        latest, by_number = versions[0], {v.version: v for v in versions}
        current = latest.annotations.get("vertex_model")
        if to is None:
            left = {int(v.annotations["rollback_from"]) for v in versions if "rollback_from" in v.annotations}
            avoid = {current} | {by_number[n].annotations.get("vertex_model") for n in left if n in by_number}
            target = next((v for v in versions[1:] if v.state == "ENABLED" and v.version not in left
                           and v.annotations.get("vertex_model") not in avoid | {None}), None)
            if target is None:
                raise ValueError(f"secret {cfg.secret_id}: no earlier enabled version names another Vertex model to "
                                 f"roll back to (name one with --to; `calltune secrets` lists them)")
        else:
            target = registry.get_version(cfg.secret_id, to)
            if not target.annotations.get("vertex_model") or target.annotations["vertex_model"] == current:
                raise ValueError(f"secret {cfg.secret_id}: version {to} names "
                                 f"{'the model the latest version serves' if target.annotations.get('vertex_model') else 'no Vertex model'}; "
                                 f"nothing to roll back")
        named = _named(registry, cfg.secret_id, versions)
    request_id = f"rollback-{latest.version}-to-{target.version}"
    vertex = VertexEndpoints(gcp, cfg)
    served = _swept_on_failure(vertex, cfg, state_dir, lambda: vertex.redeploy(
        target.annotations["vertex_model"], purpose=request_id, named=named[1] if named else None))
    annotations = {**{k: v for k, v in target.annotations.items() if not k.startswith("rollback_")},
                   "deployed_model_id": served.deployed_model_id,
                   "rollback_from": str(latest.version), "rollback_to": str(target.version)}
    with closing(open_registry(cfg, state_dir)) as registry, registry.exclusive(cfg.secret_id):
        added = registry.add_version(cfg.secret_id, served.endpoint.encode(), annotations=annotations,
                                     request_id=request_id)
        disabled = disable_old_versions(registry, cfg.secret_id, cfg.keep_enabled_versions)
    swept = _swept(vertex, cfg, state_dir)
    log.info("rollback: %s serves %s again (version %d's model); secret %s version %d", served.endpoint, served.model,
             target.version, cfg.secret_id, added.version)
    return {"secret_id": cfg.secret_id, "version": added.version, "rolled_back_to": target.version,
            "rolled_back_from": latest.version, "disabled": disabled, "vertex_model": served.model, **swept}


def check(cfg: DeployConfig, gcp: GcpConfig, state_dir: Path) -> dict:
    """What each version names against what is deployed on the secret's endpoints and taking traffic, and the drift:
    `versions` (oldest first: version, state, vertex_model, deployed_model_id, the deployment it names or None),
    `deployed` (every deployment, with its traffic share) and `drift` (one line each; none when the latest enabled
    version's deployment takes all the traffic and nothing else is deployed)."""
    with closing(open_registry(cfg, state_dir, readonly=True)) as registry:
        versions = _versions(registry, cfg.secret_id)
        named = _named(registry, cfg.secret_id, versions)
    if not any(v.annotations.get("vertex_model") for v in versions):
        raise ValueError(f"secret {cfg.secret_id}: no version names a Vertex model (deploy.target=vertex-endpoint): "
                         f"nothing to check against an endpoint")
    deployed = VertexEndpoints(gcp, cfg).deployments(named[1] if named else None)
    endpoint = named[1] if named else ""

    def deployment(v):
        model, deployed_id = v.annotations.get("vertex_model"), v.annotations.get("deployed_model_id", "")
        return named_deployment(deployed, endpoint, deployed_id, model) if model else None
    rows = [{"version": v.version, "state": v.state, "vertex_model": v.annotations.get("vertex_model", ""),
             "deployed_model_id": v.annotations.get("deployed_model_id", ""), "deployment": deployment(v)}
            for v in reversed(versions)]
    drift, serving = [], next((r["deployment"] for r in rows if named and r["version"] == named[0].version), None)
    if named is None:
        drift += ["no enabled version names a Vertex model"] if deployed else []
    elif serving is None:
        drift.append(f"version {named[0].version}, the latest enabled, names "
                     f"{resource_id(named[0].annotations['vertex_model'])}, which is not deployed on its endpoint")
    elif serving.traffic != 100:
        drift.append(f"version {named[0].version}'s model, the latest enabled, takes {serving.traffic}% of the "
                     f"traffic, not 100%")
    drift += [f"{resource_id(d.endpoint)}: deployed model {d.deployed_model_id} ({resource_id(d.model)}) takes "
              f"{d.traffic}% of the traffic; the latest enabled version does not name it"
              for d in deployed if d != serving]
    return {"versions": rows, "deployed": deployed, "drift": drift,
            "latest_enabled": named[0].version if named else None}
