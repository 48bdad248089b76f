from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def ingest(
    data_input: str,
    data_format: str,
    data_role_map: dict,
    data_qa_input_key: str,
    data_qa_output_key: str,
    data_persona_fields: list,
    data_system_prompt: str,
    data_max_bad_fraction: float,
    data_max_field_chars: int,
    calls: Output[Dataset],
    quarantine: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """Reads raw calls (seed CSV, calls JSONL, Q&A JSON, chat JSONL) into calls.jsonl; bad rows go to quarantine."""
    from calltune.config import DataConfig
    from calltune.data.ingest import ingest as run
    from calltune.data.ingest import resolve_input
    from calltune.pipeline.artifacts import first_turns, head, publish

    result = run(resolve_input(data_input), calls.path, quarantine.path, DataConfig.from_params(locals()))
    publish(result, "Ingest", artifacts=(calls, quarantine), metrics=metrics, report_md=report,
            examples={"A call as ingested (texts repaired)": first_turns(calls.path),
                      "Quarantined rows, with the reason": head(quarantine.path, 3, ("row", "reason", "raw"))})
