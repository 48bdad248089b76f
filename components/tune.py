from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def tune(
    splits: Input[Dataset],
    tune_backend: str,
    tune_base_model: str,
    tune_epochs: float,
    tune_max_steps: int,
    tune_learning_rate: float,
    tune_batch_size: int,
    tune_max_seq_len: int,
    tune_lora_r: int,
    tune_lora_alpha: int,
    tune_lora_dropout: float,
    tune_target_modules: list,
    seed: int,
    state_dir: str,
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """LoRA-tunes the base model on the train split (loss on customer replies only); validation if present."""
    from pathlib import Path

    from calltune.artifacts import publish
    from calltune.config import TuneConfig
    from calltune.tune import train_lora

    validation = Path(splits.path) / "validation.examples.jsonl"
    result = train_lora(Path(splits.path) / "train.examples.jsonl", validation if validation.exists() else None,
                        Path(model.path), TuneConfig.from_params(locals()), seed=seed,
                        state_dir=Path(state_dir).expanduser())
    publish(result, "Tune", artifacts=(model,), metrics=metrics, html=report, plot=Path(model.path) / "loss_curve.png")
