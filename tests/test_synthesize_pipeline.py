"""The whole pipeline under kfp.local with synthesis on and the local SmolLM2 as the generator, on a tiny slice
of the bundled calls: tune and evaluate read the synthesize step's splits, and its report accounts for every
conversation and example."""
import json
from pathlib import Path

import pytest

from calltune.config import load_config
from calltune.core.io import read_jsonl
from calltune.data.synthesize.job import TRACE_FILE
from calltune.pipeline.local_run import run_local, task_outputs

# The tiny slice (as in test_pipeline_run.py), untranslated to save time: the conversations are asked in Portuguese.
TINY = ["translate.backend=none", "sample.train_size=24", "sample.validation_size=0", "sample.test_size=8",
        "tune.max_steps=2", "tune.batch_size=4", "tune.max_seq_len=128", "evaluate.max_examples=8",
        "evaluate.threshold=1.0"]
SYNTH = ["synthesize.enabled=true", "synthesize.backend=local", "synthesize.conversations=2", "synthesize.batch_size=2",
         "synthesize.few_shot=1", "synthesize.max_tokens=64", "synthesize.language=pt", "synthesize.max_share=0.5"]


@pytest.mark.slow
def test_pipeline_with_local_synthesis_runs_end_to_end_and_reports_what_it_kept_and_removed(tmp_path, base_model_state):
    cfg = load_config(None, [f"state_dir={base_model_state}", *TINY, *SYNTH])
    summary = run_local(cfg, tmp_path / "run")
    run_dir = Path(summary["run_dir"])
    report = task_outputs(run_dir, "synthesize")["metrics"]
    removed = sum(v for k, v in report.items() if k.startswith("removed."))
    rejected = sum(v for k, v in report.items() if k.startswith("rejected."))
    assert report["generated"] == report["prompts"] == 2 and rejected <= 2
    assert report["examples"] == report["kept"] + removed
    assert report["requests"] == 1  # two prompts, one batch

    sampled, synthesized = run_dir / "sample" / "splits", run_dir / "synthesize" / "splits"
    assert (synthesized / "test.examples.jsonl").read_bytes() == (sampled / "test.examples.jsonl").read_bytes()
    train = list(read_jsonl(synthesized / "train.examples.jsonl"))
    assert len(train) == report["train"] == report["train_real"] + report["kept"]
    assert sum(bool(e.get("synthetic")) for e in train) == report["kept"]
    trace = list(read_jsonl(synthesized / TRACE_FILE))
    assert len(trace) == 2 and all(row["generator"].startswith("local:smollm2-135m-instruct@") for row in trace)
    assert sum(row["rejected"] is not None for row in trace) == rejected

    tuned = task_outputs(run_dir, "tune")["metrics"]
    assert tuned["train_examples"] + tuned["train_skipped"] == report["train"]  # tune read the synthesized train split
    markdown = next((run_dir / "synthesize").glob("report*")).read_text()
    assert "generated" in markdown and "removed.near_duplicate_heldout" in markdown and "kept" in markdown
    print(json.dumps(report, indent=1))
