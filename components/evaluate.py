from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def evaluate(
    model: Input[Model],
    splits: Input[Dataset],
    predictions: Input[Dataset],
    evaluate_threshold: float,
    evaluate_min_gain_over_base: float,
    evaluate_champion_tolerance: float,
    evaluate_compare: list,
    evaluate_batch_size: int,
    evaluate_max_examples: int,
    evaluate_bootstrap_samples: int,
    evaluate_embedding_model: str,
    evaluate_samples: int,
    evaluate_error_examples: int,
    evaluate_cross_encoder: str,
    evaluate_decide_on: str,
    evaluate_max_discriminator_auc: float,
    evaluate_max_role_violation_rate: float,
    simulate_enabled: bool,
    simulate_max_calls: int,
    simulate_samples: int,
    simulate_worst: int,
    simulate_seller: str,
    simulate_seller_model: str,
    simulate_seller_base_url: str,
    simulate_seller_api_key_env: str,
    simulate_seller_project: str,
    simulate_seller_location: str,
    simulate_seller_max_tokens: int,
    simulate_seller_max_retries: int,
    simulate_adversarial: str,
    infer_max_new_tokens: int,
    infer_temperature: float,
    infer_top_p: float,
    infer_batch_size: int,
    infer_guardrails: bool,
    infer_max_concurrency: int,
    infer_vertex_base_url: str,
    judge_backend: str,
    judge_model: str,
    judge_base_url: str,
    judge_api_key_env: str,
    judge_project: str,
    judge_location: str,
    judge_max_examples: int,
    judge_max_tokens: int,
    judge_max_concurrency: int,
    judge_max_retries: int,
    judge_retry_backoff_s: float,
    judge_timeout_s: float,
    deploy_registry: str,
    deploy_secret_id: str,
    deploy_keep_enabled_versions: int,
    deploy_project: str,
    deploy_endpoint: str,
    deploy_max_retries: int,
    deploy_retry_backoff_s: float,
    deploy_timeout_s: float,
    seed: int,
    state_dir: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
) -> float:
    """Scores the tuned model, the base model and the champion on the test split (never seen in training); returns
    the tuned model's token accuracy, the first gate metric. `evaluation` holds comparison.json (read by the gate),
    errors.json (error analysis), every model's predictions, its closed-loop simulated test calls (simulated/) and
    the report.

    The output is the plain `Output` parameter: kfp.local resolves only that name inside a dsl.If condition. It is
    -1 for a model without a token accuracy (an endpoint whose tuning job reported none): never promoted.
    """
    import shutil
    from pathlib import Path

    from calltune.config import DeployConfig, EvaluateConfig, InferConfig, JudgeConfig, SimulateConfig
    from calltune.evaluation.evaluate import current_champion
    from calltune.evaluation.evaluate import evaluate as run

    params = locals()
    state = Path(state_dir).expanduser()
    champion, note = current_champion(DeployConfig.from_params(params, left_out=("target", "sweep_endpoints")), state)
    out = Path(evaluation.path)
    cfg = EvaluateConfig.from_params(params, left_out=("publish_uri", "model"))  # batch_infer and resolve_model's
    result = run(Path(model.path), Path(splits.path) / "test.examples.jsonl", out, cfg,
                 infer=InferConfig.from_params(params), judge=JudgeConfig.from_params(params), champion=champion,
                 champion_note=note, predictions=Path(predictions.path), seed=seed, state_dir=state,
                 simulation=SimulateConfig.from_params(params))
    shutil.copyfile(out / "report.html", report.path)
    for name, value in result.items():
        metrics.log_metric(name, value)
    return result.get("accuracy", -1.0)
