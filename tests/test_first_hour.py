"""What a newcomer meets first: the CLI's --version, `calltune config`, errors naming the bad override, the model
card, component input descriptions in the compiled YAML, and an evaluation report that fits the window."""
from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from calltune import __version__, cli
from calltune.config import Config, EvaluateConfig, GcpConfig, InferConfig, ServeConfig, describe_fields, load_config
from calltune.evaluation.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"calltune {__version__}"


def test_config_lists_every_field_with_type_default_and_description(capsys):
    assert cli.main(["config", "--config", str(ROOT / "configs" / "local.yaml")]) == 0
    out = capsys.readouterr().out
    fields = describe_fields()
    assert len(fields) == len(Config().pipeline_params()) + len(GcpConfig.model_fields) + len(ServeConfig.model_fields)
    assert all(f["description"] for f in fields)
    assert "tune.epochs  (float, default: 1.0)\n    Training epochs" in out
    assert "translate.backend  (none | local | google, default: \"local\")" in out


def test_config_show_prints_the_yaml_with_the_overrides(capsys):
    local = str(ROOT / "configs" / "local.yaml")
    assert cli.main(["config", "--show", "--config", local, "tune.epochs=3", "translate.backend=none"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["tune"]["epochs"] == 3 and shown["translate"]["backend"] == "none"
    assert shown["tune"]["learning_rate"] == load_config(local).tune.learning_rate  # the file's value, not the default
    assert Config.model_validate(shown) == load_config(local, ["tune.epochs=3", "translate.backend=none"])


@pytest.mark.parametrize("override, said", [
    ("tune.epoch=3", "override 'tune.epoch=3': tune.epoch: no such config field (did you mean tune.epochs?)"),
    ("tune.epochs=-1", "override 'tune.epochs=-1': tune.epochs: Input should be greater than 0"),
    ("evaluate.compare=[base, rival]", "override 'evaluate.compare=[base, rival]': evaluate.compare.1:"),
])
def test_a_bad_override_is_named_not_the_config_file(override, said, capsys):
    assert cli.main(["config", "--show", "--config", str(ROOT / "configs" / "local.yaml"), override]) == 2
    err = capsys.readouterr().err
    assert said in err and "local.yaml" not in err and "Traceback" not in err


def test_a_bad_value_in_the_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tune:\n  epochs: -2\n")
    assert cli.main(["config", "--show", "--config", str(bad), "tune.batch_size=4"]) == 2
    assert f"config {bad}: tune.epochs: Input should be greater than 0" in capsys.readouterr().err


def test_every_option_has_help():
    missing, todo = [], [("calltune", cli.build_parser())]
    while todo:  # every command, and every command's own actions (`calltune users add`)
        name, parser = todo.pop()
        for a in parser._actions:
            if not a.help and not isinstance(a, argparse._HelpAction):
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
            todo += [(f"{name} {n}", p) for n, p in (a.choices or {}).items() if isinstance(p, argparse.ArgumentParser)]
    assert missing == []


def test_compiled_components_describe_their_inputs(tmp_path):
    from kfp import compiler

    from calltune.pipelines import build_pipeline

    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline("local", Config()), str(out))
    spec = yaml.safe_load(out.read_text())
    docs = Config().pipeline_signature()[1]
    seen = 0
    for name, component in spec["components"].items():
        if "executorLabel" not in component:
            continue  # the condition groups
        for kind in ("parameters", "artifacts"):
            for arg, definition in component.get("inputDefinitions", {}).get(kind, {}).items():
                assert definition.get("description"), f"{name}.{arg}"
                if arg in docs:
                    assert definition["description"] == docs[arg]
                    seen += 1
    assert seen >= len(docs)  # every config parameter is described on at least one component


# ---- the evaluation report, the model card ----

@pytest.fixture(scope="module")
def evaluated(base_model_dir, tiny_examples_path, tmp_path_factory) -> tuple[Path, dict]:
    """(the evaluation folder, the results) of the bundled base model, the champion being the same weights (its
    scores are reused: a second column in every table at no cost). The tuned-model path runs end to end in
    tests/test_pipeline_run.py."""
    out = tmp_path_factory.mktemp("evaluation") / "evaluation"
    cfg = EvaluateConfig(threshold=0.0, bootstrap_samples=100, samples=4, embedding_model="", compare=["champion"])
    result = evaluate(base_model_dir, tiny_examples_path, out, cfg, infer=InferConfig(max_new_tokens=4),
                      champion=str(base_model_dir), seed=3)
    return out, result


def test_model_card_is_a_hugging_face_card_with_base_data_settings_and_evaluation(evaluated, tiny_examples_path,
                                                                                    tmp_path):
    from huggingface_hub import ModelCard

    from calltune.config import TuneConfig
    from calltune.core.io import file_sha256
    from calltune.release.model_card import add_model_card, write_model_card

    out, result = evaluated
    model = tmp_path / "model"
    model.mkdir()
    # calltune_model.json as the tune step writes it (calltune.training.lora.train_lora), the base in the local cache
    card = {"base_model": "smollm2-135m-instruct", "base_model_path": str(tmp_path / "cache" / "smollm2"),
            "base_sha256": "ab" * 32, "architecture": "causal", "seed": 7, "steps": 12, "epochs": 3.0,
            "train_examples": 4, "train_skipped": 0, "final_train_loss": 1.25, "validation_loss": None,
            "system_prompt": "You are Ana, a prospective customer.", "config": TuneConfig().model_dump()}
    (model / "calltune_model.json").write_text(json.dumps(card))
    recorded = add_model_card(model, card, tiny_examples_path.parent)  # the tune step: evaluation pending
    assert recorded["data"]["train"] == {"examples": 4, "sha256": file_sha256(tiny_examples_path)}
    tuned = ModelCard.load(model / "README.md")
    assert tuned.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and tuned.data.library_name == "peft"
    assert str(tmp_path) not in tuned.content  # never the local cache path
    assert not tuned.data.eval_results and "Pending" in tuned.text
    assert file_sha256(tiny_examples_path) in tuned.text and "More Information Needed" not in tuned.text
    assert "| lora_r | 16 |" in tuned.text and "gemini_" not in tuned.text  # only the settings hf-lora reads
    assert "## Intended use" in tuned.text and "## Limits" in tuned.text

    comparison = json.loads((out / "comparison.json").read_text())  # the evaluate step's, completing the card
    done = ModelCard.load(write_model_card(model, comparison=comparison, to=tmp_path / "model_card.md"))
    results = {r.metric_type: r.metric_value for r in done.data.eval_results}
    assert results["accuracy"] == round(result["accuracy"], 4)
    acc = comparison["models"]["champion"]["metrics"]["accuracy"]
    assert f"{acc['value']:.4f} [{acc['low']:.4f}, {acc['high']:.4f}]" in done.text  # with its interval
    assert f"decided by: {comparison['gate']['decided_by']}" in done.text


def test_evaluation_files_are_readable_by_others(evaluated):
    out, _ = evaluated
    for name in ("report.html", "comparison.json", "charts.png", "metrics.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~_umask(), name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_evaluation_report_fits_the_window(evaluated, chromium, tmp_path):
    out, _ = evaluated
    for width in (1280, 800):
        page = chromium.new_page(viewport={"width": width, "height": 900})
        page.goto((out / "report.html").as_uri())
        wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
            .map(e => e.tagName + ' ' + Math.round(e.getBoundingClientRect().right))""")
        page.screenshot(path=str(tmp_path / f"report-{width}.png"), full_page=True)
        assert wide == [], (width, wide[:5])
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        images = page.evaluate("[...document.images].map(i => i.naturalWidth > 0)")
        assert images and all(images)  # the charts render, scaled to the page
        page.close()


def test_data_step_reports_show_example_rows_and_explain_their_terms(tmp_path):
    """The ingest and turn-split components' Markdown reports, as a person reads them after a run."""
    from kfp.dsl import Dataset, Markdown, Metrics

    from calltune import components
    from calltune.core.io import read_jsonl

    params = Config().pipeline_params()
    art = {n: cls(uri=str(tmp_path / n)) for n, cls in (("calls", Dataset), ("quarantine", Dataset),
                                                        ("metrics", Metrics), ("report", Markdown))}
    data = {k: v for k, v in params.items() if k.startswith("data_")}
    components.ingest.python_func(**{**data, "data_input": str(ROOT / "tests" / "fixtures" / "data" / "seed_calls.csv"),
                                     "data_max_bad_fraction": 1.0}, **art)
    report = (tmp_path / "report").read_text()
    bad = next(read_jsonl(tmp_path / "quarantine"))
    assert "## Quarantined rows, with the reason" in report and f"| {bad['row']} | {bad['reason']} |" in report
    first = next(read_jsonl(tmp_path / "calls"))["turns"][0]
    assert "## A call as ingested (texts repaired)" in report and first["text"] in report
    assert "## Terms" in report and "- **quarantined**: records left out" in report

    split = {"examples": Dataset(uri=str(tmp_path / "examples")), "metrics": Metrics(uri=str(tmp_path / "m2")),
             "report": Markdown(uri=str(tmp_path / "split.md"))}
    components.turn_split.python_func(calls=art["calls"], split_history_turns=2, split_opening_prompt="[ring]",
                                      split_end_of_call=params["split_end_of_call"], **split)
    report = (tmp_path / "split.md").read_text()
    example = next(read_jsonl(tmp_path / "examples"))
    assert f"| {example['example_id']} |" in report and example["target"] in report
    assert "- **openings**: customer turns with no seller turn before them" in report
