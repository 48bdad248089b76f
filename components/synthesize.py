from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def synthesize(
    splits_in: Input[Dataset],
    synthesize_enabled: bool,
    synthesize_mode: str,
    synthesize_backend: str,
    synthesize_model: str,
    synthesize_base_url: str,
    synthesize_api_key_env: str,
    synthesize_project: str,
    synthesize_location: str,
    synthesize_facts_file: str,
    synthesize_conversations: int,
    synthesize_few_shot: int,
    synthesize_language: str,
    synthesize_temperature: float,
    synthesize_max_tokens: int,
    synthesize_min_chars: int,
    synthesize_max_chars: int,
    synthesize_heldout_similarity: float,
    synthesize_duplicate_similarity: float,
    synthesize_max_share: float,
    synthesize_batch_size: int,
    synthesize_max_concurrency: int,
    synthesize_max_retries: int,
    synthesize_retry_backoff_s: float,
    synthesize_timeout_s: float,
    split_history_turns: int,
    split_opening_prompt: str,
    split_end_of_call: str,
    seed: int,
    state_dir: str,
    splits: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """Extends the train split with synthetic examples (marked, deduplicated against every split, capped in share);
    validation and test pass unchanged. Disabled, the splits pass through as they are.

    `splits` has the sample step's layout, plus `synthetic_trace.jsonl` (each prompt, its answer, its examples' fate).
    """
    from calltune.config import SplitConfig, SynthesizeConfig
    from calltune.data.synthesize.job import synthesize as run
    from calltune.pipeline.artifacts import publish

    result = run(splits_in.path, splits.path, SynthesizeConfig.from_params(locals()), seed=seed, state_dir=state_dir,
                 split=SplitConfig.from_params(locals()))
    publish(result, "Synthesize", artifacts=(splits,), metrics=metrics, report_md=report)
