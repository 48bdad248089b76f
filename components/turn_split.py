from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def turn_split(
    calls: Input[Dataset],
    split_history_turns: int,
    split_opening_prompt: str,
    split_end_of_call: str,
    examples: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """Pairs each customer turn with the seller turn just before it (causal), plus earlier turns as history."""
    from calltune.config import SplitConfig
    from calltune.data.turn_split import turn_split as run
    from calltune.pipeline.artifacts import head, publish

    result = run(calls.path, examples.path, SplitConfig.from_params(locals()))
    publish(result, "Turn split", artifacts=(examples,), metrics=metrics, report_md=report,
            examples={"Example pairs: the seller's prompt and the customer's reply (the target)":
                      head(examples.path, 3, ("example_id", "history", "prompt", "target"))})
