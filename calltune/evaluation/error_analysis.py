"""Error analysis of one model's test replies: the worst examples for each per-example metric, and counts of
replies in simple failure categories, each decided by the rule in CATEGORIES (shown in the report as written).

Categories are independent (a reply can fall in several) and are counted over every test example; the share is
of all examples. A category whose evidence is missing (the judge was off; no target long enough to tell the
language) is reported as not checked, never as zero.
"""
from __future__ import annotations

import functools
import math
import re
from collections import Counter

from calltune.runtime.guardrails import LOOP_MIN_WORDS, LOOP_SHARE, is_loop, rouge_l_scores

SHORT_WORDS, SHORT_TARGET_WORDS = 3, 6
LANG_MIN_WORDS, LANG_MIN_PROB, LANG_MAX_EXPECTED_PROB = 4, 0.5, 0.1
SELLER_COPY_ROUGE = 0.9  # echoing part of the seller's question ("Yes, we can meet Friday") stays below
OFF_PERSONA_MAX = 2
EXAMPLE_IDS = 5  # example ids listed per category

CATEGORIES = {
    "empty_or_short": f"no letter or digit at all, or under {SHORT_WORDS} words where the real customer said "
                      f"{SHORT_TARGET_WORDS} or more (a short reply to a short real reply is fine)",
    "wrong_language": f"py3langid gives the reply (of {LANG_MIN_WORDS}+ words; shorter texts are not judged, language "
                      f"ID is unreliable on them) another language with probability >= {LANG_MIN_PROB} and the "
                      f"expected one <= {LANG_MAX_EXPECTED_PROB}; expected: the commonest language among the real "
                      f"replies that are clear by the same rule (one short real reply is no evidence)",
    "repetition": f"at least {LOOP_MIN_WORDS} words, and {LOOP_SHARE:.0%} or more of its word bigrams repeat an "
                  f"earlier bigram of the same reply (a generation loop; guarded decoding's loop rule)",
    "seller_line": f"the model spoke as the seller: the reply starts with a seller's role label (seller:, user:, "
                   f"vendedor:...), or copies a seller line of the conversation (ROUGE-L F1 >= {SELLER_COPY_ROUGE} "
                   f"against it, and higher than against the real customer reply)",
    "off_persona": f"the judge's persona_fidelity is {OFF_PERSONA_MAX} or less (anchored scale: 1 breaks character, "
                   f"2 mostly out of character)",
}

_WORD = re.compile(r"\w+")
_SELLER_LABEL = re.compile(r"^\W*(seller|salesperson|sales rep|agent|user|vendedora?|atendente)\s*:", re.IGNORECASE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@functools.cache
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _languages(text: str) -> dict[str, float]:
    return dict(_identifier().rank(text))


def clear_language(text: str) -> str | None:
    """The text's language when py3langid is sure enough of it, judged only on texts of LANG_MIN_WORDS+ words."""
    if len(_words(text)) < LANG_MIN_WORDS:
        return None
    lang, prob = max(_languages(text).items(), key=lambda kv: kv[1])
    return lang if prob >= LANG_MIN_PROB else None


def spoke_as_seller(reply: str, seller_lines: list[str], target: str) -> bool:
    """The seller_line category's rule: a seller's role label, or a copy of a seller line of the conversation."""
    copied = max(rouge_l_scores([reply] * len(seller_lines), seller_lines), default=0.0)
    own = rouge_l_scores([reply], [target])[0]
    return bool(_SELLER_LABEL.match(reply)) or (copied >= SELLER_COPY_ROUGE and copied > own)


def _seller_lines(instructions: str) -> list[str]:
    return [line[len("seller: "):] for line in instructions.split("\n") if line.startswith("seller: ")]


def _flags(rows: list[dict], scores: dict[str, list]) -> dict[str, list[bool] | None]:
    """category -> a flag per row (None: the category could not be checked)."""
    replies = [r["candidate_responses"] or "" for r in rows]
    targets = [r["target_responses"] or "" for r in rows]
    flags: dict[str, list[bool] | None] = {}

    flags["empty_or_short"] = [not _WORD.search(c) or (len(_words(c)) < SHORT_WORDS
                                                       and len(_words(t)) >= SHORT_TARGET_WORDS)
                               for c, t in zip(replies, targets)]

    common = Counter(filter(None, map(clear_language, targets))).most_common(1)
    if common:
        expected = common[0][0]
        flags["wrong_language"] = []
        for reply in replies:
            probs = _languages(reply) if len(_words(reply)) >= LANG_MIN_WORDS else {}
            top = max(probs.items(), key=lambda kv: kv[1]) if probs else (None, 0.0)
            flags["wrong_language"].append(top[0] not in (None, expected) and top[1] >= LANG_MIN_PROB
                                           and probs.get(expected, 0.0) <= LANG_MAX_EXPECTED_PROB)
    else:
        flags["wrong_language"] = None

    flags["repetition"] = [is_loop(reply) for reply in replies]
    flags["seller_line"] = [spoke_as_seller(reply, _seller_lines(row["instructions"]), target)
                            for row, reply, target in zip(rows, replies, targets)]

    persona = scores.get("persona_fidelity")
    flags["off_persona"] = None if persona is None else [p is not None and p <= OFF_PERSONA_MAX for p in persona]
    return flags


def analyze(rows: list[dict], scores: dict[str, list], *, worst: int = 5) -> dict:
    """`rows`: a predictions table (calltune.evaluation.batch_infer); `scores`: metric -> one value per row, higher is better (None
    or NaN where the metric has no value for that row, e.g. unjudged). Returns {"examples", "worst": metric ->
    the `worst` lowest-scoring examples, "categories": name -> rule, count, share, example ids (or "not checked")}."""
    n = len(rows)
    out: dict = {"examples": n, "worst": {}, "categories": {}}
    for metric, values in scores.items():
        scored = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
        out["worst"][metric] = [
            {"example_id": rows[i].get("example_id", ""), "score": round(float(v), 4),
             "seller": (_seller_lines(rows[i]["instructions"]) or [""])[-1],
             "target": rows[i]["target_responses"], "reply": rows[i]["candidate_responses"]}
            for v, i in sorted(scored)[:worst]]
    for name, flagged in _flags(rows, scores).items():
        if flagged is None:
            why = "the judge is off (judge.backend)" if name == "off_persona" else "no real reply's language is clear"
            out["categories"][name] = {"rule": CATEGORIES[name], "checked": False, "note": f"not checked: {why}"}
            continue
        ids = [rows[i].get("example_id", "") for i, f in enumerate(flagged) if f]
        out["categories"][name] = {"rule": CATEGORIES[name], "checked": True, "count": len(ids),
                                   "share": round(len(ids) / n, 4) if n else 0.0, "example_ids": ids[:EXAMPLE_IDS]}
    return out
