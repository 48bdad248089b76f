"""Conversation analytics of the seller in one call, each placed among the training calls' sellers.

Rules (in English: a Portuguese call is translated first), on the call's turns with consecutive lines of one speaker
joined (their indexes kept, so every figure can point at the turns behind it):
- talk_ratio: the seller's share of the call's words;
- longest_monologue: the most words in one uninterrupted seller turn;
- questions: question marks in the seller's lines (a run of them counts once);
- objections: customer turns that push back, hesitate or decline (the friction rule of
  calltune.evaluation.realism, the one evaluation uses for the simulated customers);
- objections_answered: the share of those the seller answered: the seller's next turn has ANSWER_MIN_WORDS words
  or more (no objection: none is shown);
- next_step: a seller turn proposes a next step (NEXT_STEP_RULE) and the customer's next turn accepts it, agreeing
  or naming a time (AGREE_RULE), without declining or pushing back (DECLINE_RULE);
- call_words and call_turns: the length of the call.
"""
from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right

from calltune.evaluation.realism import FRICTION_RULE, is_friction

ANSWER_MIN_WORDS = 4
_NEXT_STEP = re.compile(
    r"\b(schedul\w*|meeting|appointment|demo|visit|call you (back|again|tomorrow)|get back to you|follow[- ]?up|"
    r"send (you|it|over)|tomorrow|next (week|month|step)|monday|tuesday|wednesday|thursday|friday|saturday|"
    r"calendar|book (a|it|the)|sign (up|it)|(at|by) \d+|\d+ ?(am|pm|o'?clock))\b", re.IGNORECASE)
_AGREE = re.compile(r"\b(yes|yeah|yep|sure|ok|okay|fine|perfect|great|deal|agreed|of course|sounds good|works|"
                    r"let'?s do|can do|alright|all right|see you|confirm\w*|combined|closed|done|i can|you can|"
                    r"can be|may be|it may|is better)\b", re.IGNORECASE)
_TIME = re.compile(r"\b(today|tonight|tomorrow|monday|tuesday|wednesday|thursday|friday|saturday|sunday|morning|"
                   r"afternoon|evening|next week|\d+|o'?clock|(at|by) (one|two|three|four|five|six|seven|eight|nine|"
                   r"ten|eleven|twelve|noon))\b", re.IGNORECASE)
_DECLINE = re.compile(r"\b(no|not|can'?t|cannot|won'?t|don'?t|never)\b", re.IGNORECASE)
_QUESTION = re.compile(r"\?+")
NEXT_STEP_RULE = "a seller turn proposes a next step: it matches " + _NEXT_STEP.pattern
AGREE_RULE = ("the customer's next turn accepts it: it matches " + _AGREE.pattern + " or names a time, "
              + _TIME.pattern)
DECLINE_RULE = "and neither declines (" + _DECLINE.pattern + ") nor pushes back (the friction rule)"

# name -> (what a seller reads, kind: share | count | yes/no, the rule)
METRICS = {
    "talk_ratio": ("Your share of the words", "share", "the seller's words / all the words of the call"),
    "longest_monologue": ("Your longest monologue", "count", "the most words in one uninterrupted seller turn"),
    "questions": ("Questions you asked", "count", "question marks in the seller's lines (a run counts once)"),
    "objections": ("Customer objections and hesitations", "count", FRICTION_RULE),
    "objections_answered": ("Objections you answered", "share",
                            f"an objection is answered when the seller's next turn has {ANSWER_MIN_WORDS}+ words"),
    "next_step": ("Next step agreed", "yes/no", f"{NEXT_STEP_RULE}; {AGREE_RULE}; {DECLINE_RULE}"),
    "call_words": ("Length of the call (words)", "count", "words of both speakers"),
    "call_turns": ("Length of the call (turns)", "count", "turns, consecutive lines of one speaker joined"),
}
UNITS = {"longest_monologue": " words", "call_words": " words", "call_turns": " turns"}


def _words(text: str) -> int:
    return len(text.split())


def segments(turns: list[dict]) -> list[dict]:
    """The turns with consecutive lines of one speaker joined: {"role", "text", "turns": [their indexes]}."""
    out: list[dict] = []
    for i, turn in enumerate(turns):
        if not turn["text"].strip():
            continue
        if out and out[-1]["role"] == turn["role"]:
            out[-1]["text"] += " " + turn["text"]
            out[-1]["turns"].append(i)
        else:
            out.append({"role": turn["role"], "text": turn["text"], "turns": [i]})
    return out


def has_seller_turn(turns: list[dict]) -> bool:
    return any(t["role"] == "seller" and t["text"].strip() for t in turns)


def analyze(turns: list[dict]) -> dict:
    """{"values": metric -> value (None where it does not apply), "evidence": metric -> indexes of the turns
    behind it} for a call's turns ({"role": "seller" | "customer", "text"})."""
    segs = segments(turns)
    seller = [s for s in segs if s["role"] == "seller"]
    words = sum(_words(s["text"]) for s in segs)
    longest = max(seller, key=lambda s: _words(s["text"]), default=None)
    asking = [s for s in seller if _QUESTION.search(s["text"])]
    objections, answered, next_step = [], [], []
    for k, seg in enumerate(segs):
        reply = segs[k + 1] if k + 1 < len(segs) else None
        if seg["role"] == "customer" and is_friction(seg["text"]):
            objections.append(seg)
            if reply is not None and _words(reply["text"]) >= ANSWER_MIN_WORDS:
                answered.append(reply)
        if seg["role"] == "seller" and _NEXT_STEP.search(seg["text"]) and reply is not None and _accepts(reply["text"]):
            next_step = [seg, reply]
    values = {
        "talk_ratio": sum(_words(s["text"]) for s in seller) / words if words else None,
        "longest_monologue": _words(longest["text"]) if longest else 0,
        "questions": sum(len(_QUESTION.findall(s["text"])) for s in seller),
        "objections": len(objections),
        "objections_answered": len(answered) / len(objections) if objections else None,
        "next_step": float(bool(next_step)),
        "call_words": words,
        "call_turns": len(segs),
    }
    evidence = {"longest_monologue": longest["turns"][:1] if longest else [],
                "questions": [s["turns"][0] for s in asking], "objections": [s["turns"][0] for s in objections],
                "objections_answered": [s["turns"][0] for s in answered],
                "next_step": [s["turns"][0] for s in next_step]}
    return {"values": values, "evidence": evidence}


def _accepts(reply: str) -> bool:
    return bool(_AGREE.search(reply) or _TIME.search(reply)) and not _DECLINE.search(reply) and not is_friction(reply)


def feature_row(values: dict) -> list[float]:
    """The analytics as model features (no objection counts as all answered: nothing was left unanswered)."""
    return [1.0 if values[m] is None and m == "objections_answered" else float(values[m] or 0.0) for m in METRICS]


def distribution(rows: list[dict]) -> dict[str, list[float]]:
    """metric -> the sorted values of the training calls' sellers (the reference a call is placed in)."""
    return {m: sorted(float(r[m]) for r in rows if r.get(m) is not None) for m in METRICS}


def _quantile(values: list[float], q: float) -> float:
    pos = q * (len(values) - 1)
    low = math.floor(pos)
    return values[low] + (values[min(low + 1, len(values) - 1)] - values[low]) * (pos - low)


def show(metric: str, value: float) -> str:
    kind = METRICS[metric][1]
    if kind == "share":
        return f"{value:.0%}"
    if kind == "yes/no":
        return "yes" if value else "no"
    return f"{value:.0f}{UNITS.get(metric, '')}"


def place(metric: str, value: float | None, reference: list[float]) -> dict:
    """One analytic for the page: its value, and where it falls among the training sellers (percentile, and the
    band of the middle half: "most sellers: 40-60%"), when there are any."""
    label, kind, rule = METRICS[metric]
    out = {"metric": metric, "label": label, "kind": kind, "rule": rule, "value": value,
           "shown": "does not apply" if value is None else show(metric, value)}
    if value is None or not reference:
        out["band"] = "no training calls to compare with" if value is not None else ""
        return out
    reference, n = sorted(reference), len(reference)
    below, ties = bisect_left(reference, value), bisect_right(reference, value) - bisect_left(reference, value)
    out["percentile"] = round(100 * (below + ties / 2) / n)
    if kind == "yes/no":
        out["band"] = f"{sum(reference) / n:.0%} of the training calls' sellers agreed one"
    else:
        low, high = _quantile(reference, 0.25), _quantile(reference, 0.75)
        out["low"], out["high"] = low, high
        unit = "%" if kind == "share" else UNITS.get(metric, "")
        band = show(metric, low) if show(metric, low) == show(metric, high) else \
            f"{show(metric, low).removesuffix(unit)}-{show(metric, high)}"
        out["band"] = f"most sellers: {band}"
    return out
