from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def translate(
    calls_in: Input[Dataset],
    translate_backend: str,
    translate_source_lang: str,
    translate_target_lang: str,
    translate_batch_size: int,
    translate_fields: list,
    translate_project: str,
    translate_location: str,
    translate_model: str,
    translate_glossary: str,
    translate_endpoint: str,
    translate_max_concurrency: int,
    translate_max_retries: int,
    translate_retry_backoff_s: float,
    translate_timeout_s: float,
    state_dir: str,
    calls: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """Translates every turn (originals kept in `text_original`), through the persistent translation cache."""
    from pathlib import Path

    from calltune.config import TranslateConfig
    from calltune.data.translate import translate_calls
    from calltune.pipeline.artifacts import first_turns, publish

    result = translate_calls(calls_in.path, calls.path, TranslateConfig.from_params(locals()), Path(state_dir).expanduser())
    publish(result, "Translate", artifacts=(calls,), metrics=metrics, report_md=report,
            examples={"Before and after: the first call's turns, translated beside the original": first_turns(calls.path)})
