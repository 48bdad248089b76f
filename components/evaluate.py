from typing import NamedTuple

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
) -> NamedTuple("Evaluation", [("accuracy", float)]):
    """Scores the model on the test split (never seen in training); returns token accuracy, the gate metric."""
    from collections import namedtuple
    from pathlib import Path
    import shutil
    import tempfile

    from calltune.config import EvaluateConfig
    from calltune.evaluate import evaluate as run

    out = Path(tempfile.mkdtemp())
    result = run(Path(model.path), Path(splits.path) / "test.examples.jsonl", out, EvaluateConfig.from_params(locals()))
    for name, value in result.items():
        metrics.log_metric(name, value)
    shutil.copyfile(out / "report.html", report.path)
    return namedtuple("Evaluation", ["accuracy"])(result["accuracy"])
