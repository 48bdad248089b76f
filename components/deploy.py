from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Model

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def deploy(
    model: Input[Model],
    accuracy: float,
    deploy_registry: str,
    deploy_secret_id: str,
    deploy_keep_enabled_versions: int,
    deploy_project: str,
    deploy_endpoint: str,
    deploy_max_retries: int,
    deploy_retry_backoff_s: float,
    deploy_timeout_s: float,
    state_dir: str,
    run_id: str,
) -> NamedTuple("Deployed", [("endpoint", str), ("version", int)]):
    """Publishes the model's endpoint as a new version of the secret (idempotent per run)."""
    from collections import namedtuple
    from pathlib import Path

    from calltune.config import DeployConfig
    from calltune.release.deploy import deploy as run

    cfg = DeployConfig.from_params(locals(), left_out=("target", "sweep_endpoints"))  # the store: no endpoint
    result = run(Path(model.path), cfg, Path(state_dir).expanduser(), run_id=run_id, metrics={"accuracy": accuracy})
    return namedtuple("Deployed", ["endpoint", "version"])(result["endpoint"], result["version"])
