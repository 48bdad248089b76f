from kfp import dsl
from kfp.dsl import Model, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def resolve_model(
    evaluate_model: str,
    deploy_registry: str,
    deploy_secret_id: str,
    deploy_project: str,
    deploy_endpoint: str,
    deploy_max_retries: int,
    deploy_retry_backoff_s: float,
    deploy_timeout_s: float,
    state_dir: str,
    model: Output[Model],
):
    """Evaluation-only runs, in place of tune: the model `evaluate_model` names (a model folder, secret:latest or
    secret:VERSION of deploy_secret_id, or a Vertex endpoint) as the Model artifact batch_infer, evaluate and deploy
    consume; its metadata says which model it is (reference, kind, source, model_sha, secret_version)."""
    from pathlib import Path

    from calltune.config import DeployConfig
    from calltune.release.model_ref import resolve_model as run

    deploy = DeployConfig.from_params(locals(), left_out=(  # it only reads the secret
        "keep_enabled_versions", "target", "sweep_endpoints"))
    report = run(evaluate_model, Path(model.path), deploy, Path(state_dir).expanduser())
    model.metadata.update(report)
    print(f"evaluation-only run: {report}")
