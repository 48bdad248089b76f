from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def evaluate(
    model: Input[Model],
    splits: Input[Dataset],
    evaluate_batch_size: int,
    evaluate_max_examples: int,
    metrics: Output[Metrics],
    report: Output[HTML],
) -> float:
    """Scores the model on the test split (never seen in training); returns token accuracy, the gate metric.

    The output is the plain `Output` parameter: kfp.local resolves only that name inside a dsl.If condition.
    """
    from pathlib import Path
    import shutil
    import tempfile

    from calltune.config import EvaluateConfig
    from calltune.evaluate import evaluate as run

    cfg = EvaluateConfig.from_params(locals())
    with tempfile.TemporaryDirectory() as out:
        result = run(Path(model.path), Path(splits.path) / "test.examples.jsonl", Path(out), cfg)
        shutil.copyfile(Path(out) / "report.html", report.path)
    for name, value in result.items():
        metrics.log_metric(name, value)
    return result["accuracy"]
