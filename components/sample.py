from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def sample(
    examples: Input[Dataset],
    sample_train_size: int,
    sample_validation_size: int,
    sample_test_size: int,
    sample_test_fraction: float,
    sample_validation_fraction: float,
    seed: int,
    splits: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """Splits examples by call into train / validation / test (no call in two splits, duplicates dropped).

    `splits` is a folder with `<split>.examples.jsonl`, `<split>.jsonl` (Vertex) and `<split>.messages.jsonl`.
    """
    from pathlib import Path

    from calltune.config import SampleConfig
    from calltune.data.sample import sample as run
    from calltune.pipeline.artifacts import head, publish

    result = run(examples.path, splits.path, SampleConfig.from_params(locals()), seed)
    publish(result, "Sample", artifacts=(splits,), metrics=metrics, report_md=report,
            examples={f"First {name} examples": head(Path(splits.path) / f"{name}.examples.jsonl", 2,
                                                    ("example_id", "call_id", "prompt", "target"))
                      for name in ("train", "validation", "test")})
