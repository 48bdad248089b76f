from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def batch_infer(
    model: Input[Model],
    splits: Input[Dataset],
    infer_max_new_tokens: int,
    infer_temperature: float,
    infer_top_p: float,
    infer_batch_size: int,
    infer_guardrails: bool,
    infer_max_concurrency: int,
    infer_vertex_base_url: str,
    evaluate_max_examples: int,
    evaluate_batch_size: int,
    evaluate_publish_uri: str,
    seed: int,
    run_id: str,
    predictions: Output[Dataset],
    metrics: Output[Metrics],
):
    """The model's customer reply to every test prompt: predictions.parquet and predictions.jsonl (instructions,
    target_responses, candidate_responses, model_id, model_sha, call_id, turn_index, example_id); a local model's
    teacher-forced scores too (teacher_forced.json, which evaluate takes instead of scoring again). With
    evaluate_publish_uri, also written (with run_id) under <evaluate_publish_uri>/<run_id>/; the predictions
    artifact's `published` metadata lists the files."""
    from pathlib import Path

    from calltune.config import InferConfig
    from calltune.evaluation.batch_infer import predict, publish_predictions
    from calltune.pipeline.artifacts import publish

    rows, report = predict(Path(model.path), Path(splits.path) / "test.examples.jsonl", Path(predictions.path),
                        InferConfig.from_params(locals()), seed=seed, limit=evaluate_max_examples,
                        score_batch_size=evaluate_batch_size)
    if evaluate_publish_uri:
        predictions.metadata["published"] = publish_predictions(rows, evaluate_publish_uri, run_id)
    publish(report, "Batch inference", artifacts=(predictions,), metrics=metrics)
