from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def tune(
    splits: Input[Dataset],
    coaching: Input[Artifact],
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
    tune_use_dora: bool,
    tune_padding_free: bool,
    tune_eval_steps: float,
    tune_early_stopping_patience: int,
    tune_resume: bool,
    tune_compile: str,
    tune_attention: str,
    tune_processes: int,
    tune_merge: bool,
    tune_preference_rounds: int,
    tune_preference_pairs: int,
    tune_preference_beta: float,
    tune_preference_learning_rate: float,
    tune_preference_epochs: float,
    tune_preference_max_accuracy_drop: float,
    tune_gemini_adapter_size: int,
    tune_gemini_learning_rate_multiplier: float,
    tune_gemini_staging_uri: str,
    tune_gemini_project: str,
    tune_gemini_location: str,
    tune_gemini_base_url: str,
    tune_gemini_poll_interval_s: float,
    tune_gemini_timeout_s: float,
    split_history_turns: int,
    split_opening_prompt: str,
    split_end_of_call: str,
    data_system_prompt: str,
    infer_max_new_tokens: int,
    infer_temperature: float,
    infer_top_p: float,
    infer_batch_size: int,
    infer_guardrails: bool,
    infer_max_concurrency: int,
    infer_vertex_base_url: str,
    evaluate_embedding_model: str,
    evaluate_bootstrap_samples: int,
    seed: int,
    state_dir: str,
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Tunes the base model on the train split, validated on the validation split if present: hf-lora, LoRA here
    (loss on customer replies only); gemini, a Vertex AI tuning job, whose endpoint the Model folder names. With
    tune_preference_rounds, realism preference rounds follow (the model plays the train calls with the infer_*
    settings), each kept only if the validation calls' realism improves beyond noise. The coach step's files go into
    the Model folder (coach/): the model carries the coach it was built with."""
    from pathlib import Path

    from calltune.config import InferConfig, SplitConfig, TuneConfig
    from calltune.pipeline.artifacts import publish
    from calltune.release.model_card import used_settings
    from calltune.training.tuners import tune as run

    params = locals()
    result = run(splits.path, model.path, TuneConfig.from_params(params), seed=seed, state_dir=state_dir,
                 split=SplitConfig.from_params(params), system_prompt=data_system_prompt,
                 infer=InferConfig.from_params(params), embedding_model=evaluate_embedding_model,
                 samples=evaluate_bootstrap_samples, coach=coaching.path)
    result["config"] = used_settings(result["config"])  # the report shows only what the backend used
    publish(result, "Tune", artifacts=(model,), metrics=metrics, html=report, plot=Path(model.path) / "loss_curve.png")
