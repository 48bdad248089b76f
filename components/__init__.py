"""KFP components: typed signatures that call one `calltune` function each.

Parameter names are the flat config names (`<section>_<field>`, see calltune.config), so the
pipeline factory wires them from the pipeline parameters by name.
"""
import os

# The default image of every component; compile.py stamps the configured images on copies of them.
IMAGE = os.environ.get("CALLTUNE_IMAGE", "calltune:latest")

from calltune.components.batch_infer import batch_infer  # noqa: E402
from calltune.components.coach import coach  # noqa: E402
from calltune.components.deploy import deploy  # noqa: E402
from calltune.components.deploy_endpoint import deploy_endpoint  # noqa: E402
from calltune.components.evaluate import evaluate  # noqa: E402
from calltune.components.gate import gate  # noqa: E402
from calltune.components.ingest import ingest  # noqa: E402
from calltune.components.resolve_model import resolve_model  # noqa: E402
from calltune.components.sample import sample  # noqa: E402
from calltune.components.synthesize import synthesize  # noqa: E402
from calltune.components.translate import translate  # noqa: E402
from calltune.components.tune import tune  # noqa: E402
from calltune.components.turn_split import turn_split  # noqa: E402

# Inputs that are not config fields (those take their config field's description: one source for both).
_WIRED = {
    "calls_in": "Calls (calls.jsonl) from the ingest step.",
    "calls": "Translated calls (calls.jsonl, originals kept) from the translate step.",
    "examples": "Prompt/target examples (examples.jsonl) from the turn-split step.",
    "splits_in": "The sample step's splits folder (train / validation / test).",
    "coaching": "The coach step's folder: scorecard.json, coach.json (the offline review's models) and its report.",
    "splits": "Splits folder: <split>.examples.jsonl, <split>.jsonl (Vertex), <split>.messages.jsonl.",
    "model": "Model folder: the tuned adapter (or the evaluated model) and its calltune_model.json.",
    "predictions": "The tuned model's predictions on the test split, from batch-infer.",
    "evaluation": "The evaluate step's folder: comparison.json (read by the gate), errors.json and the report.",
    "accuracy": "The tuned model's token accuracy on the test split (the gate metric).",
    "run_id": "Pipeline run name: makes deploy idempotent per run and labels published predictions.",
}


def _describe_inputs() -> None:
    """Put each input's description into the component spec, so the compiled YAML carries it on every component."""
    from calltune.config import Config

    docs = {**Config().pipeline_signature()[1], **_WIRED}
    for name in __all__[1:]:
        for arg, spec in (globals()[name].component_spec.inputs or {}).items():
            spec.description = spec.description or docs.get(arg)


__all__ = ["IMAGE", "ingest", "translate", "turn_split", "sample", "coach", "synthesize", "tune", "resolve_model", "batch_infer",
           "evaluate", "gate", "deploy", "deploy_endpoint"]

_describe_inputs()
