from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Model

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def deploy_endpoint(
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
    deploy_target: str,
    deploy_sweep_endpoints: bool,
    gcp_project: str,
    gcp_region: str,
    gcp_service_account: str,
    gcp_labels: dict,
    gcp_api_endpoint: str,
    gcp_serving_image: str,
    gcp_serving_machine_type: str,
    gcp_serving_accelerator_type: str,
    gcp_serving_accelerator_count: int,
    gcp_serving_min_replicas: int,
    gcp_serving_max_replicas: int,
    gcp_endpoint_display_name: str,
    state_dir: str,
    run_id: str,
) -> NamedTuple("Deployed", [("endpoint", str), ("version", int)]):
    """Serves the model on the secret's Vertex AI endpoint (vLLM; uploaded and the endpoint created only once): deployed
    beside the serving model with a canary share, checked to answer, given all the traffic; then publishes the endpoint
    as a new secret version and undeploys every other model of the secret's endpoints."""
    from collections import namedtuple
    from pathlib import Path

    from calltune.config import DeployConfig, GcpConfig
    from calltune.release.endpoint_deploy import deploy_to_endpoint

    gcp = GcpConfig.from_params(locals(), left_out=(  # how the pipeline runs, not how the model is served
        "pipeline_root", "image", "trainer_image", "machine_type", "accelerator_type", "accelerator_count",
        "enable_caching", "template_registry", "eval_machine_type", "eval_accelerator_type", "eval_accelerator_count",
        "replica_count", "tensorboard", "base_output_directory"))
    result = deploy_to_endpoint(Path(model.path), DeployConfig.from_params(locals()), gcp, Path(state_dir).expanduser(),
                                run_id=run_id, metrics={"accuracy": accuracy})
    return namedtuple("Deployed", ["endpoint", "version"])(result["endpoint"], result["version"])
