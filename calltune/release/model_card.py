"""The model folder's README.md: a Hugging Face model card (YAML metadata + Markdown) built from calltune_model.json.

Written in two stages, because the figures come from two steps:
- at tune (calltune.training.tuners): base model, data (hashes, sizes), settings of the backend used, training
  results, intended use and limits; the evaluation section says it is pending;
- at evaluate (calltune.evaluation.evaluate): the same card completed with every compared model's scores and intervals and
  the gate's decision, written to the evaluation folder as model_card.md. The tuned model artifact itself is an
  input of evaluate and is not rewritten there; `calltune run` copies the completed card over the run's
  tune/model/README.md once the pipeline has finished.
Both show the coach the model carries (COACH_DIR: the coach step's files, calltune.coaching.step): its scorecard and
figures, from the report section the coach wrote (COACH_SUMMARY); the card never imports the coach.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from calltune.core.io import atomic_open, file_sha256, write_json
from calltune.core.report import Report
from calltune.runtime.loading import MODEL_CARD

# Bundled base model name -> its id on the Hugging Face Hub (the card names the model, never a local cache path).
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
SPLITS = ("train", "validation", "test")
COACH_DIR = "coach"              # in a model folder: the coach it was built with (calltune.coaching.step)
COACH_SUMMARY = "summary.json"   # the coach's report section: {"title", "parts"} (calltune.core.report parts)


def coach_summary(model_dir: str | Path) -> Report | None:
    """The coach's section of a report about the model, as the coach step wrote it; None without a coach."""
    path = Path(model_dir) / COACH_DIR / COACH_SUMMARY
    if not path.is_file():
        return None
    section = json.loads(path.read_text(encoding="utf-8"))
    return Report(section["title"]).extend(section["parts"])


def coach_section(model_dir: str | Path) -> list[str]:
    """The coach's section of the model card (Markdown lines, headings from ##), or [] without a coach."""
    summary = coach_summary(model_dir)
    return summary.to_markdown(level=2).splitlines() + [""] if summary else []


def used_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The tune settings the backend that ran actually reads: gemini_* only for gemini, and for gemini only
    those and the base model and epochs."""
    if config.get("backend") == "gemini":
        return {k: v for k, v in config.items() if k.startswith(("gemini_", "preference_"))
                or k in ("backend", "base_model", "epochs")}
    return {k: v for k, v in config.items() if not k.startswith("gemini_")}


def hub_id(card: dict[str, Any]) -> str | None:
    """The base model's Hub id: the bundled model's, or the `_name_or_path` a local folder's config.json keeps
    when that is a Hub id; None for a model that is not on the Hub (a Gemini model, a local-only folder)."""
    base = card.get("base_model", "")
    if base in HUB_IDS:
        return HUB_IDS[base]
    config = Path(card.get("base_model_path") or base) / "config.json"
    if card.get("backend") != "gemini" and config.is_file():
        name = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path", "")
        if name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists():
            return name
    return None


def data_summary(splits: str | Path) -> dict[str, dict[str, Any]]:
    """Per split: examples and the SHA-256 of its examples file (what the model was tuned and tested on)."""
    out = {}
    for split in SPLITS:
        path = Path(splits) / f"{split}.examples.jsonl"
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                out[split] = {"examples": sum(1 for line in fh if line.strip()), "sha256": file_sha256(path)}
    return out


def add_model_card(model_dir: str | Path, card: dict[str, Any], splits: str | Path) -> dict[str, Any]:
    """At tune: record the data (sizes and hashes of the splits folder) in calltune_model.json and write the
    card, evaluation pending, as README.md; returns the updated calltune_model.json content."""
    card = {**card, "data": data_summary(splits)}
    write_json(Path(model_dir) / MODEL_CARD, card)
    write_model_card(model_dir)
    return card


def write_model_card(model_dir: str | Path, *, comparison: dict | None = None, to: str | Path | None = None) -> Path:
    """Write the card of the tuned model in model_dir (from its calltune_model.json) to `to` (default: its
    README.md); comparison: the evaluate step's comparison.json, for the evaluation section."""
    model_dir = Path(model_dir)
    card = json.loads((model_dir / MODEL_CARD).read_text(encoding="utf-8"))
    path = Path(to) if to else model_dir / "README.md"
    with atomic_open(path) as fh:
        fh.write(render(card, comparison, coach=coach_section(model_dir)))
    return path


def _metadata(card: dict, comparison: dict | None) -> dict[str, Any]:
    gemini = card.get("backend") == "gemini"
    meta: dict[str, Any] = {}
    if base := hub_id(card):
        meta["base_model"] = base
    if not gemini:
        meta["library_name"] = "peft"
    seq2seq = card.get("architecture") == "encoder-decoder"
    meta["pipeline_tag"] = "text2text-generation" if seq2seq else "text-generation"
    meta["tags"] = ["calltune", "customer-simulation", "sales-training", "gemini" if gemini else "lora"]
    tuned = ((comparison or {}).get("models") or {}).get("tuned", {}).get("metrics", {})
    results = [{"type": name, "name": name.replace("_", " "), "value": round(est["value"], 4)}
               for name, est in tuned.items() if isinstance(est, dict) and _finite(est.get("value"))]
    if results:
        meta["model-index"] = [{"name": f"calltune customer model ({card.get('base_model')})", "results": [{
            "task": {"type": meta["pipeline_tag"], "name": "customer reply in a sales call"},
            "dataset": {"type": "calltune-test-split", "name": "held-out test calls", "split": "test"},
            "metrics": results}]}]
    return meta


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)


def _table(rows: list[tuple], header: tuple) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out + [""]


def _estimate(est: dict | None) -> str:
    if not est or not _finite(est.get("value")):
        return "n/a"
    interval = f" [{est['low']:.4f}, {est['high']:.4f}]" if _finite(est.get("low")) and _finite(est.get("high")) else ""
    return f"{est['value']:.4f}{interval}"


def render(card: dict[str, Any], comparison: dict | None = None, coach: list[str] = ()) -> str:
    """The card's text: YAML front matter, then the sections a reader of the Hub expects; `coach`: the coaching
    section (coach_section)."""
    data = card.get("data") or {}
    gemini = card.get("backend") == "gemini"
    base = hub_id(card)
    base_text = f"[{base}](https://huggingface.co/{base})" if base else f"`{card.get('base_model')}`"
    lines = ["---", yaml.safe_dump(_metadata(card, comparison), sort_keys=False, allow_unicode=True).rstrip(), "---",
             "", f"# calltune customer model ({card.get('base_model')})", "",
             f"A {'Gemini supervised-tuned' if gemini else 'LoRA adapter on'} {base_text} that plays the **customer** "
             "of a sales call, so that sellers can practise. Tuned by calltune on sales-call "
             "transcripts: each example is the conversation so far and the seller's last line; the target is the "
             "real customer's reply.", "",
             "## Intended use", "",
             "- Practice conversations for sales staff: the seller talks, the model answers as the customer "
             "(`calltune chat`, or the OpenAI-compatible API of `calltune serve`).",
             "- Not for talking to real customers, not for decisions about people, not as a source of facts.", "",
             "## Limits", "",
             "- It imitates the customers of the training calls: their products, language and habits. Calls unlike "
             "those (another industry, another language) get less realistic replies.",
             "- Token accuracy measures agreement with the real customer's next words, not whether a reply is "
             "sensible; read the sample conversations of the evaluation report before relying on it.",
             "- Replies can be invented, repetitive or out of character; a small base model makes this likelier.",
             "- The training transcripts may hold personal data; the model may reproduce fragments of it.", ""]
    lines += ["## Base model", ""]
    lines += _table([("model", card.get("base_model")), ("Hub id", base or "not on the Hugging Face Hub"),
                     *([("weights sha256", card["base_sha256"])] if card.get("base_sha256") else []),
                     *([("architecture", card["architecture"])] if card.get("architecture") else [])], ("", ""))
    lines += ["## Training data", ""]
    if data:
        lines += _table([(s, data[s]["examples"], data[s]["sha256"]) for s in SPLITS if s in data],
                        ("split", "examples", "sha256 of <split>.examples.jsonl"))
        lines += ["Splits are made by call: no call is in two splits. The test split was never seen in tuning.", ""]
    facts = [(k, card[k]) for k in ("train_examples", "train_skipped", "train_tokens", "train_target_tokens",
                                    "validation_examples", "train_uri", "validation_uri") if card.get(k) is not None]
    lines += _table(facts, ("", "")) if facts else []
    if card.get("system_prompt"):
        lines += ["System prompt (the persona instruction):", "", f"> {card['system_prompt']}", ""]
    lines += ["## Training settings", ""]
    lines += _table(sorted(used_settings(card.get("config", {})).items()) + [("seed", card.get("seed", "n/a"))],
                    ("setting", "value"))
    results = [(k, card[k]) for k in ("steps", "epochs", "final_train_loss", "mean_train_loss", "validation_loss",
                                      "validation_token_accuracy", "best_checkpoint_step", "stopped_early",
                                      "train_runtime_s", "tuning_seconds", "device", "processes", "tuning_job",
                                      "endpoint") if card.get(k) is not None]
    if results:
        lines += ["## Training results", ""] + _table(results, ("", ""))
    lines += _serving(card) + _preference(card.get("preference"))
    lines += ["## Evaluation", ""]
    lines += _evaluation(comparison) if comparison else [
        "Pending: this card was written when tuning finished. The evaluate step writes the completed card, with "
        "every compared model's scores and the gate's decision, as model_card.md in its evaluation folder "
        "(`calltune run` also copies it here).", ""]
    lines += list(coach)
    lines += ["## How to use", "", "```", "calltune chat     # talk to the model in the secret's latest version",
              "calltune serve    # OpenAI-compatible /v1/chat/completions", "```", ""]
    if not gemini:
        lines += ["```python", "from peft import AutoPeftModelForCausalLM" if card.get("architecture") != "encoder-decoder"
                  else "from peft import AutoPeftModelForSeq2SeqLM as AutoPeftModelForCausalLM",
                  "from transformers import AutoTokenizer", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")', "```", ""]
    return "\n".join(lines)


def _serving(card: dict) -> list[str]:
    """How the model ends a call and which decoding rules guard its replies (calltune.runtime)."""
    marker = (card.get("split") or {}).get("end_of_call")
    rails = card.get("guardrails") or {}
    if not marker and not rails:
        return []
    lines = ["## Ending calls, guarded decoding", ""]
    if marker:
        lines += [f"- End-of-call marker: `{marker}`. The customer's closing turn of every training call ends with "
                  "it, made of existing tokens (no new special token). A reply that says it ends the call: the "
                  "runtime cuts it off and answers `finish_reason: end_of_call` (`stop_reason` in the API)."]
    if rails:
        band = rails.get("band")
        lines += [f"- Guarded decoding: a reply that breaks a rule is generated again (at most twice), greedy with "
                  f"the offending n-grams banned, sampled with a seed derived from the request's. Length band: "
                  f"{band[0]} to {band[1]} words ({rails.get('band_from', '')})." if band else
                  "- Guarded decoding: no length band recorded."]
        lines += [f"  - {name}: {rule}" for name, rule in (rails.get("rules") or {}).items()]
    return lines + [""]


def _preference(report: dict | None) -> list[str]:
    """The realism preference rounds (calltune.training.preference): pairs, how they were chosen, each round's
    validation realism before and after, and whether it was kept."""
    if not report:
        return []
    settings = report.get("settings", {})
    lines = ["## Realism preference rounds", "",
             f"{len(report['rounds'])} round(s), {report['kept_rounds']} kept. Settings: "
             + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".", ""]
    rows = []
    for r in report["rounds"]:
        val = r.get("validation", {})
        acc = r.get("validation_token_accuracy") or {}
        rows.append((r["round"], r["pairs"], r["rule_breaking_pairs"], r["candidates"],
                     *(f"{_estimate(val.get(m, {}).get('before'))} -> {_estimate(val.get(m, {}).get('after'))} "
                       f"(gain {_estimate(val.get(m, {}).get('gain'))})" if m in val else "n/a"
                       for m in ("discriminator_auc", "degeneration_rate")),
                     f"{_fmt(acc.get('before'))} -> {_fmt(acc.get('after'))}" if acc else "n/a",
                     "kept" if r["kept"] else "rolled back"))
    lines += _table(rows, ("round", "pairs", "rule-breaking", "candidates", "validation AUC (90% interval)",
                           "validation degeneration (90% interval)", "validation token accuracy", "outcome"))
    lines += [f"- Round {r['round']}: {r['decision']}" for r in report["rounds"]]
    if report["rounds"]:
        lines += [f"- Pairs: {report['rounds'][0]['selection']}."]
    return lines + [""]


REALISM_ROWS = ("discriminator_auc", "degeneration_rate", "first_turn_distinct_1", "question_rate", "friction_rate",
                "role_violation_rate", "ended_early_rate", "ended_at_end_rate", "never_ended_rate")


def _realism(realism: dict | None) -> list[str]:
    """Whole-call realism against the real test calls, and the adversarial seller lines."""
    if not realism:
        return []
    metrics = realism.get("metrics", {})
    names = list(metrics)
    lines = ["", "Whole-call realism: each model played the held-out test calls closed-loop (95% interval over "
             "calls; `tuned_unguarded`: the tuned model without guarded decoding):", ""]
    lines += _table([(k, *(_estimate(metrics[n].get(k)) for n in names)) for k in REALISM_ROWS
                     if any(k in metrics[n] for n in names)], ("metric", *names))
    for name, adv in (realism.get("adversarial") or {}).items():
        lines += [f"- In character under pressure ({name}): {_estimate(adv['break_rate'])} of {adv['replies']} "
                  f"replies to seller lines that try to break the role broke character."]
    return lines


def _evaluation(comparison: dict) -> list[str]:
    models = comparison.get("models", {})
    metrics = list(dict.fromkeys(k for m in models.values() for k in m.get("metrics", {})))
    names = [n for n in models if "metrics" in models[n]]
    level = comparison.get("confidence", 0.95)
    lines = [f"On the held-out test split, every model on the same examples: value [{level:.0%} bootstrap interval, "
             f"{comparison.get('bootstrap_samples', '?')} resamples]. token accuracy (`accuracy`) is teacher-forced "
             "next-token accuracy on the customer replies, the gate metric.", ""]
    lines += _table([(k, *(_estimate(models[n]["metrics"].get(k)) for n in names)) for k in metrics],
                    ("metric", *names))
    lines += [f"- {n}: skipped ({m['skipped']})" for n, m in models.items() if "skipped" in m]
    lines += _realism(comparison.get("realism"))
    gate = comparison.get("gate", {})
    if gate:
        decision = "promoted (deployed)" if gate.get("decision") == "promote" else "kept out (not deployed)"
        lines += ["", f"**Gate decision: {decision}**, decided by: {gate.get('decided_by')}.", ""]
        lines += _table([(c["check"], {True: "pass", False: "FAIL", None: "skipped"}[c["passed"]], c["detail"])
                         for c in gate.get("checks", [])], ("check", "result", "detail"))
    return lines
