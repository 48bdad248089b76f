"""`calltune coach FILE`: the review a seller gets on the practice page, for the calls of a transcript file.

The file is read by ingest, in any format it reads (a downloaded practice transcript, a seed-CSV export...); bad
rows are reported, never a traceback. A call in the translator's source language (py3langid, as error analysis
decides a language) is translated first with the configured translator and its cache, as prepare does, since the
analytics' rules are English; originals are kept beside. The coach is the served model's (the secret's latest
version: its folder's coach/), or one given by path (a coach step's folder, a model folder or a coach.json). With a
judge configured (judge.*), its review in the coach's scorecard comes too. A call with evaluation columns (a graded
export row) shows the company's own grade beside the estimate.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from calltune.coaching.coach import Coach, CoachError
from calltune.config import Config
from calltune.core.io import read_jsonl
from calltune.data.ingest import Quarantine, iter_calls, resolve_input
from calltune.evaluation.error_analysis import clear_language
from calltune.release.model_card import COACH_DIR


def find_coach(cfg: Config, given: str | None) -> tuple[Coach, str]:
    """(the coach, where it came from): `given` (a coach.json, or a folder holding one directly or in coach/), else
    the model in the secret's latest version."""
    if given:
        path = Path(given).expanduser()
        candidates = [path] if path.is_file() else [path / "coach.json", path / COACH_DIR / "coach.json"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise CoachError(f"no coach.json at {path} (give a coach.json, the coach step's folder or a model folder)")
        return Coach.load(found), str(found)
    from calltune.release.store import model_path_from_endpoint, resolve_endpoint

    name = f"{cfg.deploy.secret_id} (latest version)"
    path = model_path_from_endpoint(resolve_endpoint(cfg.deploy, cfg.state_path())) / COACH_DIR / "coach.json"
    if not path.is_file():
        raise CoachError(f"the model {name} serves carries no coach (it was built before coaching, or is a remote "
                         f"model): give one with --coach")
    return Coach.load(path), name


def _needs_translation(call: dict, cfg: Config) -> bool:
    t = cfg.translate
    if t.backend == "none" or t.source_lang == t.target_lang:
        return False
    lang = clear_language(" ".join(turn["text"] for turn in call["turns"]))
    return lang is not None and lang != t.target_lang and t.source_lang in ("auto", lang)


def read_calls(path: str | Path, cfg: Config, call_id: str | None = None) -> tuple[list[dict], list[str], dict]:
    """(the file's calls, or the one call `call_id`, translated where needed; one line per rejected row; the
    translation's counts)."""
    path = resolve_input(path)
    with tempfile.TemporaryDirectory() as tmp:
        with Quarantine(Path(tmp) / "quarantine.jsonl") as quarantine:
            calls = [c for c in iter_calls(path, cfg.data, quarantine, workers=1) if call_id in (None, c["call_id"])]
        rejected = [f"{path}: row {q['row']}: {q['reason']}" for q in read_jsonl(quarantine.path)]
    if call_id is not None and not calls:
        raise CoachError(f"{path}: no usable call {call_id!r}")
    stats: dict = {}
    foreign = [i for i, c in enumerate(calls) if _needs_translation(c, cfg)]
    if foreign:
        from calltune.data.translate import translate_stream

        translated = translate_stream((calls[i] for i in foreign), cfg.translate, cfg.state_path(), stats)
        for i, call in zip(foreign, translated):
            calls[i] = call
    stats["translated_calls"] = len(foreign)
    return calls, rejected, stats


def review_calls(calls: list[dict], coach: Coach, cfg: Config) -> list[dict]:
    """Per call: {"call_id", "review"} or {"call_id", "error"}, the judge's review (or why not) when one is
    configured, and the company's own grading when the file carries it."""
    from calltune.coaching.review import ReviewError, review_call
    from calltune.evaluation.judge import make_judge

    judge = make_judge(cfg.judge, cfg.state_path())  # None when no judge is configured
    out = []
    try:
        for call in calls:
            result: dict = {"call_id": call["call_id"]}
            try:
                result["review"] = coach.review(call)
            except CoachError as exc:
                result["error"] = str(exc)
                out.append(result)
                continue
            if judge is not None:
                try:
                    result["judge"] = review_call(call.get("system", ""), call["turns"], judge, coach.scorecard)
                except ReviewError as exc:
                    result["judge_error"] = str(exc)
            if call.get("evaluation"):
                result["export"] = {"grade": call["evaluation"]["grade"]}
            out.append(result)
    finally:
        if judge is not None:
            judge.close()
    return out


def render(result: dict) -> list[str]:
    """A review as text for the terminal: what the page shows, the quotes as `[turn N] "..."`."""
    lines = [f"== call {result['call_id']}"]
    if "error" in result:
        return lines + [f"no review: {result['error']}", ""]
    r = result["review"]
    lines.append(r["notice"])
    g = r["grade"]
    own = f" (the company graded it {result['export']['grade']})" if "export" in result else ""
    if g["estimate"] is None:
        lines.append(f"grade: none: {g['why']}{own}")
    else:
        lines.append(f"grade estimate: {g['shown']} out of {g['scale'][1]:g}{own}; test MAE {_fig(g['mae'])} against "
                     f"{_fig(g['baseline_mae'])} for always the mean" + ("; within noise" if g["within_noise"] else ""))
    lines.append("how you talked:")
    for a in r["analytics"]:
        band = f" ({a['band']}" + (f"; percentile {a['percentile']})" if "percentile" in a else ")") if a["band"] else ""
        lines.append(f"  {a['label']}: {a['shown']}{band}")
        lines += [f"      [turn {e['turn']}] \"{e['quote']}\"" for e in a["evidence"][:2]]
    for c in r["criteria"]:
        lines.append(f"{c['title']}" + (f" ({c['original']})" if c["original"] and c["original"] != c["title"] else ""))
        for item in c["items"]:
            why = f": {item['why']}" if item["verdict"] == "not judged" else \
                f" (test accuracy {_fig(item['figures']['accuracy'])}" \
                f"{', within noise' if item.get('within_noise') else ''})"
            lines.append(f"  [{item['verdict']}] {item['name']}{why}")
            lines += [f"      [turn {e['turn']}] \"{e['quote']}\"" for e in item["evidence"]]
        for s in c["similar"]:
            lines.append(f"  feedback a similar call received (graded {s['grade']:g}): {s['summary']}")
    if judge := result.get("judge"):
        lines.append(f"the judge: grade {judge['grade']}; {judge['overview']}")
        lines += [f"  positive: {judge['positive']}", f"  negative: {judge['negative']}"]
        for f in judge.get("feedbacks", []):
            where = f"turn {f['evidence_turn']}" if f["evidence_turn"] is not None else "not found in the call"
            lines.append(f"  {f['title']}: {f['summary']} [{where}] \"{f['evidence']}\"")
    elif "judge_error" in result:
        lines.append(f"the judge: no review ({result['judge_error']})")
    return lines + [""]


def _fig(f: dict) -> str:
    if f.get("value") is None:
        return "n/a"
    return f"{f['value']:.2f}" + (f" [{f['low']:.2f}, {f['high']:.2f}]" if f.get("low") is not None else "")
