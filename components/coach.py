from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from calltune.components import IMAGE


@dsl.component(base_image=IMAGE)
def coach(
    calls: Input[Dataset],
    splits: Input[Dataset],
    coach_scorecard: str,
    coach_examples_per_criterion: int,
    coach_similar_calls: int,
    coach_bootstrap_samples: int,
    judge_backend: str,
    judge_model: str,
    judge_base_url: str,
    judge_api_key_env: str,
    judge_project: str,
    judge_location: str,
    judge_max_examples: int,
    judge_max_tokens: int,
    judge_max_concurrency: int,
    judge_max_retries: int,
    judge_retry_backoff_s: float,
    judge_timeout_s: float,
    seed: int,
    state_dir: str,
    coaching: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    """Learns the company's scorecard from its graded calls (or takes coach_scorecard) and fits the offline review a
    seller gets after a practice call: checklist verdicts and a grade estimate, measured on the test split beside
    their baselines; with a judge, the judge's calibration against the company's grades. `coaching` holds
    scorecard.json, coach.json (the tune step puts both in the model folder) and the report."""
    import shutil
    from pathlib import Path

    from calltune.coaching.step import build_coach
    from calltune.config import CoachConfig, JudgeConfig

    result = build_coach(calls.path, splits.path, coaching.path, CoachConfig.from_params(locals()),
                         judge=JudgeConfig.from_params(locals()), seed=seed, state_dir=Path(state_dir).expanduser())
    shutil.copyfile(Path(coaching.path) / "report.html", report.path)
    for name, value in result.items():
        metrics.log_metric(name, value)
    coaching.metadata.update(result)
