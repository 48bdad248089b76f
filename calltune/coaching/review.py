"""After-call review of a seller's practice call by the configured judge (`judge.*`, calltune.evaluation.judge.make_judge).

The seed system's export carries, for every call, an `overview`, what was `positive`, what was `negative` and a
`grade` from 0 to 10; the review asks the judge for the same, with its rationale first so the grade follows from
the reasoning. An answer that cannot be read (no JSON, no rationale, a grade outside 0-10) raises ReviewError:
nothing is ever filled in for the judge.
"""
from __future__ import annotations

from calltune.config import JudgeConfig
from calltune.evaluation.judge import Judge, answer_object, whole_number

SYSTEM = ("You coach salespeople. A seller has just practised a sales call against a simulated customer; you review "
          "the SELLER's conduct (never the customer's), strictly, consistently and concretely.")

PROMPT = """The customer the seller was talking to:
{persona}

The call:
{conversation}

Review the seller. Grade on this scale:
0 = no real conversation (the seller never got to the point, or the call never happened)
2 = pitched at the customer without checking availability, qualifying or listening
5 = a reasonable call with clear gaps (no need identified, objections ignored, or no next step)
8 = checked availability, qualified, tied a solution to the customer's need, handled objections, agreed a next step
10 = all of that, and the customer is clearly committed to a concrete next step

Answer with one JSON object and nothing else, the rationale first:
{{"rationale": "<two or three sentences of reasoning>", "overview": "<one or two sentences on the call>",
"positive": "<what the seller did well>", "negative": "<what the seller should do better>", "grade": <0-10>}}"""

FIELDS = ("rationale", "overview", "positive", "negative")


class ReviewError(RuntimeError):
    pass


def build_request(system: str, turns: list[dict], cfg: JudgeConfig) -> dict:
    """The judge's chat request for one call: turns are {"role": "seller"|"customer", "text"}."""
    conversation = "\n".join(f"{t['role']}: {t['text']}" for t in turns)
    content = PROMPT.format(persona=system or "(none given)", conversation=conversation or "(no turn)")
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
            "temperature": 0.0, "max_tokens": cfg.max_tokens, "seed": 0}


def parse(answer: str) -> dict:
    """{"rationale", "overview", "positive", "negative", "grade"} from the judge's answer; ReviewError if unreadable."""
    obj = answer_object(answer)
    if obj is None:
        raise ReviewError("the judge did not answer with a JSON object")
    missing = [f for f in FIELDS if not isinstance(obj.get(f), str) or not obj[f].strip()]
    if missing:
        raise ReviewError(f"the judge's answer has no {', '.join(missing)}")
    grade = whole_number(obj.get("grade"), 0, 10)
    if grade is None:
        raise ReviewError(f"the judge's grade {obj.get('grade')!r} is not a whole number from 0 to 10")
    return {**{f: obj[f].strip() for f in FIELDS}, "grade": grade}


def review_call(system: str, turns: list[dict], judge: Judge) -> dict:
    """Ask the judge to review the seller in one call."""
    from calltune.backends.generators import GenerateError

    try:
        answer = judge.generator.generate([build_request(system, turns, judge.cfg)])[0]
    except GenerateError as exc:
        raise ReviewError(f"the judge did not answer ({exc})") from exc
    return parse(answer)
