"""The coach step: the company's scorecard and the offline review's models, from the graded calls; the judge's
calibration when a judge is configured.

Reads the translated calls (calls.jsonl: each graded call's `evaluation` beside it, calltune.data.formats.seed_csv)
and the sample step's splits (which calls are train and which test: the coach learns from the calls the customer
model learns from, and is measured on the calls it is tested on). Writes into out_dir (COACH_FILES):
- scorecard.json: the scorecard (calltune.coaching.scorecard), derived from the graded calls or coach.scorecard;
- coach.json: the fitted coach (calltune.coaching.coach), which the tune step puts in the model folder (coach/), so
  the served model carries the coach it was built with;
- summary.json: the report section the evaluation report and the model card show (calltune.core.report parts: they
  read this file and never import the coach);
- report.md and report.html: the step's own report.
A graded row whose evaluation columns could not be used (ingest's `evaluation_problem`) trained the customer model as
any call, and is left out here, counted by reason. Data without grades gives a coach of the analytics alone.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from calltune.coaching.coach import Coach, within_noise
from calltune.coaching.scorecard import Scorecard, derive, load_scorecard
from calltune.config import CoachConfig, JudgeConfig
from calltune.core.io import read_jsonl, write_json
from calltune.core.report import Report
from calltune.release.model_card import COACH_SUMMARY

COACH_FILES = ("scorecard.json", "coach.json", COACH_SUMMARY)
SPLITS = ("test", "validation", "train")


def _cell(fig: dict | None, digits: int = 2) -> str:
    if not fig or fig.get("value") is None:
        return "n/a"
    interval = f" [{fig['low']:.{digits}f}, {fig['high']:.{digits}f}]" if fig.get("low") is not None else ""
    return f"{fig['value']:.{digits}f}{interval}"


def _reason(problem: str) -> str:
    """A problem without its particulars (`grade: 11 out of range 0-10` -> `grade: out of range 0-10`)."""
    return re.sub(r"\s*\(.*\)$", "", re.sub(r"^(grade: )\S+ (out of range)", r"\1\2", problem))


def build_coach(calls_path: str | Path, splits_dir: str | Path, out_dir: str | Path, cfg: CoachConfig, *,
                judge: JudgeConfig | None = None, seed: int = 42, state_dir: str | Path = ".") -> dict:
    """Write the coach's files into out_dir (see the module docstring); returns the step's report."""
    out_dir, splits_dir = Path(out_dir), Path(splits_dir)
    calls: dict[str, dict] = {}
    for call in read_jsonl(calls_path):
        calls.setdefault(call["call_id"], call)  # a call id met twice is one call, as the sampler groups it
    split_of: dict[str, str] = {}
    for split in SPLITS:
        path = splits_dir / f"{split}.examples.jsonl"
        for example in read_jsonl(path) if path.is_file() else ():
            split_of.setdefault(example["call_id"], split)
    left_out = Counter(_reason(c["evaluation_problem"]) for c in calls.values() if c.get("evaluation_problem"))
    graded = [c for c in calls.values() if c.get("evaluation")]
    if outside := sum(c["call_id"] not in split_of for c in graded):
        left_out["in no split (no customer reply to learn from)"] += outside
    graded = [c for c in graded if c["call_id"] in split_of]
    by_split = {s: [c for c in calls.values() if split_of.get(c["call_id"]) == s] for s in SPLITS}
    train_ids = {c["call_id"] for c in by_split["train"]}
    given = load_scorecard(_local(cfg.scorecard)) if cfg.scorecard else None
    scorecard = derive(graded, train_ids, given=given, examples_per_criterion=cfg.examples_per_criterion) \
        if graded else given
    coach = Coach.train(by_split["train"], by_split["test"], scorecard, samples=cfg.bootstrap_samples, seed=seed,
                        settings={"similar_calls": cfg.similar_calls})
    calibration = None
    if judge is not None and judge.backend != "none" and scorecard is not None and scorecard.criteria:
        calibration = _calibrate([c for c in by_split["test"] if c.get("evaluation")], scorecard, judge,
                                 samples=cfg.bootstrap_samples, seed=seed, state_dir=state_dir)
    counts = {"calls": len(calls), "graded": len(graded),
              "ungraded": sum(not c.get("evaluation") and not c.get("evaluation_problem") for c in calls.values()),
              **{f"graded_{s}": sum(split_of[c["call_id"]] == s for c in graded) for s in SPLITS},
              "left_out": sum(left_out.values()), "left_out_by_reason": dict(left_out)}
    out_dir.mkdir(parents=True, exist_ok=True)
    if scorecard is not None:
        scorecard.save(out_dir / "scorecard.json")
    else:
        (out_dir / "scorecard.json").unlink(missing_ok=True)
    coach.save(out_dir / "coach.json")
    section = summary(coach, counts, calibration)
    write_json(out_dir / COACH_SUMMARY, {"title": "Coaching", "parts": section.dump(), "calibration": calibration,
                                         "counts": counts})
    page = Report("Coach: the scorecard and the offline review").extend(section.dump())
    _details(page, scorecard)
    page.write(out_dir)
    return _metrics(coach, counts, calibration)


def _local(uri: str) -> Path:
    """gs://bucket/x is read through the Vertex FUSE mount, as every input file is."""
    return Path("/gcs") / uri[len("gs://"):] if uri.startswith("gs://") else Path(uri).expanduser()


def _calibrate(test: list[dict], scorecard: Scorecard, judge: JudgeConfig, *, samples: int, seed: int,
               state_dir) -> dict:
    from calltune.coaching.review import calibrate
    from calltune.evaluation.judge import make_judge

    configured = make_judge(judge, state_dir)
    try:
        return calibrate(test, scorecard, configured, samples=samples, seed=seed)
    finally:
        configured.close()


def summary(coach: Coach, counts: dict, calibration: dict | None) -> Report:
    """The coach's section of the evaluation report and the model card: the scorecard, each figure with its
    interval and baseline, what is shown and what is not, the counts."""
    r = Report("Coaching")
    f, card = coach.figures, coach.scorecard
    reasons = "; ".join(f"{why}: {n}" for why, n in counts["left_out_by_reason"].items())
    r.text(f"{counts['calls']} calls, {counts['graded']} graded by the company ({counts['graded_train']} in train, "
           f"{counts['graded_validation']} in validation, {counts['graded_test']} in test). Left out of the coach "
           f"(their calls still train the customer model): {counts['left_out']}{f' ({reasons})' if reasons else ''}.")
    r.text(coach.notice())
    if card is None:
        return r
    r.heading("The scorecard and the checklist verdicts")
    r.text(f"The scorecard ({'derived from the graded calls' if card.source == 'derived' else 'from coach.scorecard'}"
           f"): {len(card.criteria)} criteria, {sum(len(c.items) for c in card.criteria)} checklist items, grades "
           f"{card.grade_min:g} to {card.grade_max:g}. Per item, a classifier learned from the training calls' labels,"
           f" measured on the graded test calls: accuracy and F1 of the item's rarer answer, value [95% bootstrap "
           f"interval], beside always giving the training majority. An item that does not beat it is not judged.")
    rows = []
    for item in f.get("items", {}).values():
        base = f"always {item['majority']}" if "majority" in item else "-"
        judged = ("yes (within noise)" if within_noise(item["gain"]) else "yes") if item.get("judged") else "not judged"
        rows.append({"criterion": item["criterion"], "item": item["item"], "judged": judged,
                     "test calls": item["n_test"], "accuracy": _cell(item.get("accuracy")),
                     "baseline accuracy": f"{_cell(item.get('baseline_accuracy'))} ({base})",
                     "F1": f"{_cell(item.get('f1'))}" + (f" (of {item['f1_of']})" if "f1_of" in item else ""),
                     "baseline F1": _cell(item.get("baseline_f1")), "why not": item.get("why", "")})
    r.table(rows)
    grade = f.get("grade", {})
    r.heading("Grade estimate")
    if "mae" in grade:
        r.text(f"A ridge regression learned from the {f['graded_train']} graded training calls, measured on the "
               f"{grade['n_test']} graded test calls against always guessing the training mean "
               f"({grade['train_mean']:.2f}); value [95% bootstrap interval].")
        r.table([{"figure": "MAE (grade points)", "coach": _cell(grade["mae"]), "baseline": _cell(grade["baseline_mae"])},
                 {"figure": "Spearman (rank agreement)", "coach": _cell(grade["spearman"]), "baseline": "n/a (constant)"},
                 {"figure": "MAE gain over the baseline", "coach": _cell(grade["gain"]), "baseline": ""}])
    if grade.get("shown"):
        r.text("The page shows a grade estimate with its MAE as the uncertainty" +
               (", and says that its edge over the mean is within noise." if within_noise(grade["gain"]) else "."))
    else:
        r.text(f"No grade estimate is shown: {grade.get('why', 'not measured')}.")
    if calibration:
        r.heading("The judge's calibration")
        r.text(f"The judge reviewed {calibration['requests']} graded test calls in the scorecard ("
               f"{calibration['unreadable_or_failed']} answers unreadable or failed, left out). Against the company's "
               f"own grading, value [95% bootstrap interval]:")
        if "grade" in calibration:
            r.table([{"figure": "grade MAE", "judge": _cell(calibration["grade"]["mae"])},
                     {"figure": "grade Spearman", "judge": _cell(calibration["grade"]["spearman"])}]
                    + [{"figure": f"accuracy: {i['item']}", "judge": _cell(i["accuracy"])}
                       for i in calibration["items"].values()])
    return r


def _details(r: Report, card: Scorecard | None) -> None:
    """The step's own report goes further: the grade distribution and the export's summaries per criterion."""
    if card is None:
        return
    if card.distribution:
        r.heading("Grades the company gave")
        r.table([{"grade": g, "calls": n} for g, n in card.distribution.items()])
    for criterion in card.criteria:
        r.heading(f"Criterion: {criterion.title}")
        r.text(f"As the export names it: {criterion.original or criterion.title}. Items: "
               + "; ".join(i.name + (f" ({i.original})" if i.original not in ("", i.name) else "")
                           for i in criterion.items))
        r.table([{"call": e.call_id, "grade": e.grade, "the export's summary": e.summary,
                  "original": e.summary_original} for e in criterion.examples])


def _metrics(coach: Coach, counts: dict, calibration: dict | None) -> dict:
    f = coach.figures
    items = f.get("items", {})
    out = {k: v for k, v in counts.items() if isinstance(v, int)}
    out.update(criteria=len(coach.scorecard.criteria) if coach.scorecard else 0, items=len(items),
               items_judged=sum(bool(i.get("judged")) for i in items.values()))
    grade = f.get("grade", {})
    for name in ("mae", "baseline_mae", "spearman"):
        if (grade.get(name) or {}).get("value") is not None:
            out[f"grade_{name}"] = grade[name]["value"]
    if calibration and "grade" in calibration:
        out["judge_grade_mae"] = calibration["grade"]["mae"]["value"]
    return out
