from kfp import dsl
from kfp.dsl import Artifact, Input

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def gate(
    evaluation: Input[Artifact],
    evaluate_threshold: float,
    evaluate_min_gain_over_base: float,
    evaluate_champion_tolerance: float,
    evaluate_compare: list,
    evaluate_decide_on: str = "point",
    evaluate_max_discriminator_auc: float = 1.0,
    evaluate_max_role_violation_rate: float = 1.0,
) -> str:
    """The promotion decision from the evaluate step's comparison: "promote", or the name of the check that failed.

    A plain `Output` string: kfp.local resolves only that name inside a dsl.If condition.
    """
    from pathlib import Path

    from calltune.config import EvaluateConfig
    from calltune.evaluation.gate import PROMOTE
    from calltune.evaluation.gate import gate as decide

    cfg = EvaluateConfig.from_params(locals(), left_out=(  # how models are scored: the evaluate step's settings
        "batch_size", "max_examples", "bootstrap_samples", "embedding_model", "samples", "error_examples",
        "cross_encoder", "publish_uri", "model"))
    decision = decide(Path(evaluation.path) / "comparison.json", cfg)
    for c in decision["checks"]:
        print(f"gate check {c['check']}: {c['passed']} ({c['detail']})")
    return PROMOTE if decision["decision"] == PROMOTE else decision["decided_by"]
