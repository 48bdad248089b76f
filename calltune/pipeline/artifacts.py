"""Publishing a step's report dict to KFP output artifacts (duck-typed: no kfp import here)."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def flatten(report: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# What a data step's report counts, in words (the report's "Terms" section).
TERMS = {
    "Ingest": {
        "rows": "records read from the input file (CSV rows, JSON lines or Q&A entries)",
        "calls": "records that became a call with at least one usable turn",
        "quarantined": "records left out, each written to quarantine.jsonl with its row and the reason",
        "by_reason": "quarantined records per reason",
        "repair": "every text is repaired on the way in: mojibake (e.g. 'NÃ£o' -> 'Não') and HTML entities fixed",
    },
    "Translate": {
        "segments": "texts selected for translation (turns, and the system or persona fields when configured)",
        "unique_segments": "distinct non-blank texts among them: cache_hits + translated",
        "cache_hits": "texts found in the persistent translation cache (state_dir), not sent again",
        "translated": "texts sent to the translator",
        "characters": "code points of the texts sent",
        "characters_billed": "what the translation service counted (google backend)",
        "requests, retries, failures": "translator calls, retried calls (429, 5xx, timeouts), calls that failed",
        "text_original": "each turn keeps its original text beside the translation",
    },
    "Turn split": {
        "examples": "one per customer turn: the seller's line just before it is the prompt, the customer's reply "
                    "the target, up to history_turns earlier turns the history",
        "merged_turns": "consecutive turns of the same speaker joined into one",
        "openings": "customer turns with no seller turn before them (the call opening): prompt = opening_prompt",
        "openings_dropped": "openings left out because opening_prompt is empty",
        "empty_turns": "turns with no text, skipped",
        "calls_without_examples": "calls with no customer turn after a seller turn",
        "ended_calls": "calls whose closing customer turn carries the end-of-call marker (end_of_call), which the "
                       "model learns to say when the customer ends the call",
    },
    "Sample": {
        "train, validation, test": "examples per split; a call is in one split only",
        "calls_per_split": "whole calls in each split",
        "overlap_calls": "calls found in more than one split (always 0: a check)",
        "duplicates_dropped": "examples identical (ignoring case and spaces) to one already kept, dropped",
        "fallback": "true when the data holds fewer examples than the configured sizes: the splits are then "
                    "shares (test_fraction, validation_fraction) of what there is",
        "max_held_calls": "the most calls held in memory at once while sampling (memory stays bounded)",
        "seed": "the seed of the call order: the same seed gives the same splits",
    },
    "Synthesize": {
        "kept": "synthetic examples added to train after the quality, near-duplicate and share filters",
        "synthetic_share": "share of the final train split that is synthetic (at most synthesize.max_share)",
        "train_real": "real train examples (unchanged)",
    },
}


def head(path: str | Path, n: int = 3, fields: Iterable[str] = (), cut: int = 300) -> list[dict[str, Any]]:
    """The first n rows of a JSONL file (only `fields`, when given), long values cut to `cut` characters."""
    from calltune.core.io import read_jsonl

    rows = []
    if Path(path).is_file():
        for row in read_jsonl(path):
            if len(rows) == n:
                break
            picked = {f: row.get(f, "") for f in fields} if fields else row
            rows.append({k: (v if isinstance(v, (int, float)) else _short(v, cut)) for k, v in picked.items()})
    return rows


def first_turns(calls: str | Path, n: int = 4) -> list[dict[str, Any]]:
    """The first call's first n turns: role, text and, when translated, the original text beside it."""
    from calltune.core.io import read_jsonl

    call = next(read_jsonl(calls), None) if Path(calls).is_file() else None
    turns = (call or {}).get("turns") or []
    return [{"call": call["call_id"], "role": t.get("role", ""), "text": _short(t.get("text", ""), 300),
             **({"original": _short(t["text_original"], 300)} if "text_original" in t else {})}
            for t in (turns if isinstance(turns, list) else [])[:n]]


def _short(value: Any, cut: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= cut else text[:cut] + "..."


def publish(report: dict[str, Any], title: str, *, artifacts: Iterable = (), metrics=None, report_md=None,
            html=None, plot: Path | None = None, examples: dict[str, list[dict]] | None = None) -> None:
    """Numbers go to Metrics and every artifact's metadata; the whole report to Markdown and/or HTML: the
    top-level values, one section per nested group, a few example rows under their captions, and the terms
    of the step (TERMS)."""
    from calltune.core.report import Report

    flat = flatten(report)
    numbers = {k: v for k, v in flat.items() if _is_number(v)}
    for artifact in artifacts:
        artifact.metadata.update(numbers)
    if metrics is not None:
        for key, value in numbers.items():
            metrics.log_metric(key, value)
    page = Report(title).table({k: v for k, v in report.items() if not isinstance(v, dict)})
    for key, value in report.items():
        if isinstance(value, dict) and value:
            page.heading(key).table(flatten(value))
    for caption, rows in (examples or {}).items():
        if rows:
            page.heading(caption).table(rows)
    if title in TERMS:
        page.heading("Terms").terms(TERMS[title])
    page.image(plot if plot and Path(plot).exists() else None, "plot")
    if report_md is not None:
        Path(report_md.path).write_text(page.to_markdown(), encoding="utf-8")
    if html is not None:
        Path(html.path).write_text(page.to_html(), encoding="utf-8")
