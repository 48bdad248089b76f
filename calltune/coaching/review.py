"""The judge's review of a seller's call (`judge.*`, calltune.evaluation.judge.make_judge), in the company's scorecard.

The prompt is built from the scorecard the coach learned from the company's graded calls (calltune.coaching.scorecard):
its criteria and checklist items, its grade scale and how the graders used it, and two of the export's graded
training calls with the grading they got, as examples. The answer has the export's own shape, rationale first so
the grade follows from the reasoning: `overview`, `positive`, `negative`, `feedbacks` (one per criterion: a summary,
the seller line that shows it, quoted from the call, and a yes/no per checklist item) and `grade`. Without a
scorecard (data without grades) the judge reviews on a generic scale, with no criteria.

An answer that cannot be read (no JSON, no rationale, a criterion or item missing, a grade off the scale) raises
ReviewError: nothing is ever filled in for the judge. A quote that is not in the seller's lines is kept, marked as
not found, never pointed at a turn.

`calibrate` measures the judge against the export: it reviews the test split's graded calls and reports its grades'
MAE and Spearman against the export's, and its accuracy on each checklist item, each with a 95% interval.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from calltune.coaching.coach import figure, spearman
from calltune.coaching.scorecard import Scorecard, labels, normalise
from calltune.config import JudgeConfig
from calltune.evaluation import metrics as M
from calltune.evaluation.judge import Judge, answer_object, whole_number

log = logging.getLogger(__name__)

SYSTEM = ("You coach salespeople. A seller has just practised a sales call against a simulated customer; you review "
          "the SELLER's conduct (never the customer's), strictly, consistently and concretely.")

GENERIC_SCALE = """0 = no real conversation (the seller never got to the point, or the call never happened)
2 = pitched at the customer without checking availability, qualifying or listening
5 = a reasonable call with clear gaps (no need identified, objections ignored, or no next step)
8 = checked availability, qualified, tied a solution to the customer's need, handled objections, agreed a next step
10 = all of that, and the customer is clearly committed to a concrete next step"""

PROMPT = """The customer the seller was talking to:
{persona}

The call:
{conversation}

{task}
Answer with one JSON object and nothing else, the rationale first:
{shape}"""

FIELDS = ("rationale", "overview", "positive", "negative")


class ReviewError(RuntimeError):
    pass


def _conversation(turns: list[dict]) -> str:
    return "\n".join(f"{t['role']}: {t['text']}" for t in turns)


def _task(scorecard: Scorecard | None) -> tuple[str, str]:
    """(what the judge is asked, the JSON shape it answers in)."""
    shape = ('{"rationale": "<two or three sentences of reasoning>", "overview": "<one or two sentences on the call>", '
             '"positive": "<what the seller did well>", "negative": "<what the seller should do better>", ')
    if scorecard is None:
        return f"Review the seller. Grade on this scale:\n{GENERIC_SCALE}\n", shape + '"grade": <0-10>}'
    lines = ["Review the seller by the company's own scorecard. For each criterion: a summary of how the seller did, "
             "the seller line that shows it best (quoted exactly from the call), and yes or no for each checklist "
             "item, named as here:"]
    for n, criterion in enumerate(scorecard.criteria, 1):
        lines.append(f"{n}. {criterion.title}")
        lines += [f"   - {item.name}" for item in criterion.items]
    low, high = scorecard.grade_min, scorecard.grade_max
    lines.append(f"\nThen grade the call as a whole from {low:g} to {high:g} (whole numbers).")
    if scorecard.distribution:
        given = ", ".join(f"{g}: {n}" for g, n in scorecard.distribution.items())
        lines.append(f"The company's graders gave these grades to its {scorecard.graded_calls} graded calls "
                     f"(grade: calls): {given}.")
    for example in scorecard.few_shot:
        lines += [f"\nA call the company graded ({example['call_id']}):", _conversation(example["turns"]),
                  "Its grading:", json.dumps(example["answer"], ensure_ascii=False)]
    feedback = ('"feedbacks": [{"title": "<criterion>", "summary": "<how the seller did>", "evidence": "<a seller '
                'line quoted from the call>", "checklist": [{"type": "<item>", "status": <true or false>}]}], ')
    return "\n".join(lines) + "\n", shape + feedback + f'"grade": <{low:g}-{high:g}>}}'


def build_request(system: str, turns: list[dict], cfg: JudgeConfig, scorecard: Scorecard | None = None) -> dict:
    """The judge's chat request for one call: turns are {"role": "seller"|"customer", "text"}."""
    task, shape = _task(scorecard)
    content = PROMPT.format(persona=system or "(none given)", conversation=_conversation(turns) or "(no turn)",
                            task=task, shape=shape)
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
            "temperature": 0.0, "max_tokens": cfg.max_tokens, "seed": 0}


def _quoted(quote: str) -> str:
    return " ".join(quote.strip().strip("\"'“”‘’").split()).casefold()


def find_quote(quote: str, turns: list[dict]) -> int | None:
    """The index of the seller turn that holds the quote (case and spacing ignored), or None."""
    wanted = _quoted(quote)
    if not wanted:
        return None
    return next((i for i, t in enumerate(turns) if t["role"] == "seller" and wanted in " ".join(t["text"].split()).casefold()),
                None)


def _feedbacks(obj: dict, scorecard: Scorecard, turns: list[dict]) -> list[dict]:
    given = obj.get("feedbacks")
    if not isinstance(given, list) or not all(isinstance(f, dict) for f in given):
        raise ReviewError("the judge's answer has no feedbacks list")
    by_title = {normalise(str(f.get("title", ""))): f for f in given}
    out = []
    for criterion in scorecard.criteria:
        found = next((by_title[k] for k in criterion.keys() if k in by_title), None)
        if found is None or not isinstance(found.get("summary"), str) or not found["summary"].strip():
            raise ReviewError(f"the judge's answer has no feedback on the criterion {criterion.title!r}")
        items = {normalise(str(c.get("type", ""))): c.get("status") for c in found.get("checklist") or []
                 if isinstance(c, dict)}
        checklist = []
        for item in criterion.items:
            status = next((items[k] for k in item.keys() if k in items), None)
            if not isinstance(status, bool):
                raise ReviewError(f"the judge's answer has no yes/no for the item {item.name!r}")
            checklist.append({"type": item.name, "status": status})
        evidence = found.get("evidence") if isinstance(found.get("evidence"), str) else ""
        out.append({"title": criterion.title, "summary": found["summary"].strip(), "evidence": evidence.strip(),
                    "evidence_turn": find_quote(evidence, turns), "checklist": checklist})
    return out


def parse(answer: str, scorecard: Scorecard | None = None, turns: list[dict] = ()) -> dict:
    """The judge's review from its answer (ReviewError if unreadable): rationale, overview, positive, negative, grade
    and, with a scorecard, `feedbacks` in its order, each quote's seller turn found in `turns` (None: not found)."""
    obj = answer_object(answer)
    if obj is None:
        raise ReviewError("the judge did not answer with a JSON object")
    missing = [f for f in FIELDS if not isinstance(obj.get(f), str) or not obj[f].strip()]
    if missing:
        raise ReviewError(f"the judge's answer has no {', '.join(missing)}")
    low, high = (scorecard.grade_min, scorecard.grade_max) if scorecard else (0, 10)
    grade = whole_number(obj.get("grade"), low, high)
    if grade is None:
        raise ReviewError(f"the judge's grade {obj.get('grade')!r} is not a whole number from {low:g} to {high:g}")
    review = {f: obj[f].strip() for f in FIELDS}
    if scorecard is not None:
        review["feedbacks"] = _feedbacks(obj, scorecard, list(turns))
    return {**review, "grade": grade}


def review_call(system: str, turns: list[dict], judge: Judge, scorecard: Scorecard | None = None) -> dict:
    """Ask the judge to review the seller in one call, in the company's scorecard when one is given."""
    from calltune.backends.generators import GenerateError

    try:
        answer = judge.generator.generate([build_request(system, turns, judge.cfg, scorecard)])[0]
    except GenerateError as exc:
        raise ReviewError(f"the judge did not answer ({exc})") from exc
    return parse(answer, scorecard, turns)


def calibrate(calls: list[dict], scorecard: Scorecard, judge: Judge, *, samples: int, seed: int) -> dict:
    """The judge against the export on graded calls (the test split's): grade MAE and Spearman, and accuracy per
    checklist item, with 95% intervals; failed or unreadable reviews are counted and left out."""
    calls = calls[:judge.cfg.max_examples]

    def one(call: dict) -> tuple[dict | None, str | None]:
        try:
            return review_call(call["system"], call["turns"], judge, scorecard), None
        except ReviewError as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max(1, min(judge.cfg.max_concurrency, judge.generator.concurrency))) as pool:
        reviews = list(pool.map(one, calls))
    problems = [why for _, why in reviews if why]
    done = [(call, r) for call, (r, _) in zip(calls, reviews) if r is not None]
    kw = {"samples": samples, "seed": seed}
    out: dict = {"requests": len(calls), "unreadable_or_failed": len(problems), "reviewed": len(done),
                 "problems": sorted(set(problems))[:5], "items": {}}
    if not done:
        return out
    truth = np.array([c["evaluation"]["grade"] for c, _ in done], dtype=float)
    judged = np.array([r["grade"] for _, r in done], dtype=float)
    out["grade"] = {"mae": figure(M.mean(np.abs(judged - truth), **kw)),
                    "spearman": figure(spearman(judged, truth, **kw))}
    for ci, criterion in enumerate(scorecard.criteria):
        for ii, item in enumerate(criterion.items):
            right = [r["feedbacks"][ci]["checklist"][ii]["status"] == labels(c, scorecard)[(ci, ii)]
                     for c, r in done if (ci, ii) in labels(c, scorecard)]
            out["items"][f"{ci}.{ii}"] = {"criterion": criterion.title, "item": item.name,
                                          "accuracy": figure(M.mean(np.array(right, float), **kw))}
    log.info("judge calibration: %d calls reviewed, %d unreadable or failed", len(done), len(problems))
    return out
