"""Whole-call realism: simulated calls (calltune.evaluation.simulate) against the real held-out calls, as distributions.

Every metric is measured per call and carries a seeded bootstrap 95% interval over calls (a call's turns are
resampled together). Where a metric applies to real calls too, the real calls get the same rule, as the baseline:
a simulator is judged by how far it is from real customers, not from zero.

- discriminator_auc: cross-validated ROC AUC of a logistic regression (scikit-learn) that tells real customer
  turns (0) from the model's simulated ones (1), on MiniLM sentence embeddings plus length features (words,
  characters, log words, question mark), folds grouped by call (a call's real and simulated turns are always in
  the same fold). 0.5: it cannot tell them apart; 1.0: every simulated turn is recognised. The interval resamples
  calls over the out-of-fold scores.
- role_violation_rate: share of customer turns that sound like the seller or an assistant: a logistic regression
  on the same features, trained on the train split's real seller (1) and customer (0) turns, gives P(seller) >=
  0.5, or a phrase rule fires (ROLE_RULE). role_by_classifier and role_by_rules split it.
- length_wasserstein: Wasserstein-1 distance, in words, between the simulated and the real reply lengths.
- question_rate, friction_rate, degeneration_rate: shares of customer turns (rules below); reply_words: mean.
- first_turn_distinct_1: distinct-1 over the first customer turn of every call (1/calls: the same opening for all).
- premature_ending_rate: share of calls whose customer closes the call (CLOSING_RULE) before its last turn.
- With a judge (judge.backend): persona_consistency and call_realism of the whole call (anchored 1-5, rationale
  first), and judge_detection: in a pairwise test, shown the real and the simulated version of a call in both
  orders, the share of answers that pick the real one (0.5: the judge cannot tell; a position bias shows as
  disagreement between the orders).
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from calltune.evaluation import metrics as M
from calltune.evaluation.error_analysis import spoke_as_seller
from calltune.evaluation.judge import SYSTEM, Judge, answer_object, whole_number
from calltune.runtime.guardrails import RULES, degenerate
from calltune.runtime.guardrails import words as _words

log = logging.getLogger(__name__)

REAL = "real"
ROLE_THRESHOLD = 0.5

ASSISTANT = re.compile(
    r"\b(as an ai|an ai (language )?model|i'?m an? (ai|virtual assistant|assistant|language model)|how (can|may) i "
    r"(help|assist) you|i('d| would) be (happy|glad) to (help|assist)|feel free to ask|let me know if you have any "
    r"(other |more )?questions)\b", re.IGNORECASE)
FRICTION = re.compile(
    r"(^\W*(no|nope|hmm+|well|wait)\b|\b(but|however|expensive|too much|can'?t afford|not sure|i don'?t know|i'?m not "
    r"sure|not interested|no thanks|i need to think|let me think|think about it|i'?ll think|maybe later|not now|not "
    r"right now|don'?t need|already have|i doubt|why should|what guarantee|i'?d rather|talk to my|ask my|check with)\b)",
    re.IGNORECASE)
_CLOSING = re.compile(
    r"\b(bye|goodbye|good-bye|have a (good|nice|great) (day|afternoon|evening|one)|talk (to you )?later|i (have|need|"
    r"got) to go|gotta go|hang(ing)? up|don'?t call (me )?again)\b", re.IGNORECASE)

ROLE_RULE = ("P(seller) >= 0.5 from a logistic regression on MiniLM embeddings + length features trained on the "
             "train split's real seller and customer turns; or error analysis's seller_line rule (a seller role "
             "label, or a copy of a seller line of the call, ROUGE-L >= 0.9); or an assistant phrase (" +
             ASSISTANT.pattern + ")")
FRICTION_RULE = "the turn pushes back, hesitates or declines: it matches " + FRICTION.pattern
CLOSING_RULE = ("a customer turn before the call's last one closes the call: it matches " + _CLOSING.pattern)
DEGENERATION_RULE = (f"guarded decoding's rules but the length band (calltune.runtime.guardrails): empty ("
                     f"{RULES['empty']}), a loop inside the reply ({RULES['loop']}), or a repeat ({RULES['repeat']})")
ENDING_RULE = ("the model ends the call when its reply says the end-of-call marker (finish_reason end_of_call): "
               "before the real call's last turn (early), at it, where the real customer ended the call (at end), "
               "or not by then (never; only calls whose real end is in the split count for these two)")
QUESTION_RULE = "the turn contains a question mark"


def is_friction(text: str) -> bool:
    """FRICTION_RULE: the turn pushes back, hesitates or declines (the coach counts a seller's objections by it too)."""
    return bool(FRICTION.search(text))

# metric -> (what it measures, higher is better?); the table's order.
METRICS = {
    "discriminator_auc": "classifier AUC real vs simulated turns (0.5 = indistinguishable; lower is better)",
    "judge_detection": "judge picks the real call in a pairwise test (0.5 = cannot tell; lower is better)",
    "role_violation_rate": "turns that sound like the seller or an assistant",
    "role_by_classifier": "  of which flagged by the role classifier",
    "role_by_rules": "  of which flagged by the phrase rules",
    "length_wasserstein": "Wasserstein distance of reply lengths to the real ones, words (lower is better)",
    "reply_words": "mean words per customer turn",
    "question_rate": "turns with a question",
    "first_turn_distinct_1": "distinct-1 of the first customer turn across calls",
    "degeneration_rate": "empty, looping or self-repeating turns",
    "guarded_retry_rate": "turns guarded decoding generated again (they broke a rule at the first try)",
    "friction_rate": "turns that push back, hesitate or decline",
    "premature_ending_rate": "calls the customer says goodbye in before the real call ended",
    "ended_early_rate": "calls the customer hangs up (end-of-call marker) before the real call ended",
    "ended_at_end_rate": "calls the customer hangs up at the turn the real customer did",
    "never_ended_rate": "calls the customer does not hang up by the turn the real customer did",
    "persona_consistency": "judge: persona kept over the whole call (1-5)",
    "call_realism": "judge: the whole call sounds like a real customer (1-5)",
}


def _features(texts: list[str], embedder) -> np.ndarray:
    words = np.array([_words(t) for t in texts], dtype=np.float64)
    lengths = np.stack([words, [len(t) for t in texts], np.log1p(words), ["?" in t for t in texts]], 1)
    return np.hstack([embedder.encode(texts), lengths.astype(np.float64)])


def _classifier():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))


def out_of_fold(real: list[list[str]], simulated: list[list[str]], embedder) -> tuple[np.ndarray, ...] | None:
    """(labels, out-of-fold P(simulated), call of each turn) of the discriminator over every real (0) and simulated
    (1) customer turn, real turns of call i first, folds by call; None with under two calls or one side empty."""
    from sklearn.model_selection import GroupKFold, cross_val_predict

    texts, labels, groups = [], [], []
    for i, (r, s) in enumerate(zip(real, simulated)):
        texts += r + s
        labels += [0] * len(r) + [1] * len(s)
        groups += [i] * (len(r) + len(s))
    y, g = np.array(labels), np.array(groups)
    if len(real) < 2 or len(set(labels)) < 2:
        return None
    proba = cross_val_predict(_classifier(), _features(texts, embedder), y, groups=g,
                              cv=GroupKFold(n_splits=min(5, len(real))), method="predict_proba")[:, 1]
    return y, proba, g


def discriminator_auc(real: list[list[str]], simulated: list[list[str]], embedder, *, samples: int,
                      seed: int) -> tuple[M.Estimate, list[float]]:
    """Cross-validated AUC (folds by call) and, per call, the mean out-of-fold P(simulated) of its simulated turns."""
    n_calls = len(real)
    scored = out_of_fold(real, simulated, embedder)
    if scored is None:
        return M.NAN, [math.nan] * n_calls
    y, proba, g = scored
    auc = weighted_auc(y, proba, g)
    per_call = [float(proba[(g == i) & (y == 1)].mean()) if ((g == i) & (y == 1)).any() else math.nan
                for i in range(n_calls)]
    return M.resampled(n_calls, auc, samples=samples, seed=seed), per_call


def weighted_auc(y: np.ndarray, scores: np.ndarray, unit: np.ndarray) -> Callable[[np.ndarray], float]:
    """ROC AUC of `scores` for the labels `y` (1 positive) with each item weighted by its unit's weight (a bootstrap
    resample of calls): a function of the unit weights. It equals scikit-learn's roc_auc_score with sample_weight
    (the Mann-Whitney form: a tie counts half), which validates its input for ~10 ms a call, 20 s per 2,000
    resamples; the scores are sorted once here."""
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # one group per distinct score
    positive, unit = (y[order] == 1), unit[order]

    def auc(unit_weights: np.ndarray) -> float:
        w = unit_weights[unit]
        pos, neg = np.add.reduceat(w * positive, starts), np.add.reduceat(w * ~positive, starts)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos == 0 or total_neg == 0:
            return math.nan
        below = np.cumsum(neg) - neg  # negative weight scored lower than each group
        return float((pos * (below + neg / 2)).sum() / (total_pos * total_neg))

    return auc


def train_role_classifier(train_examples: list[dict], embedder):
    """Logistic regression P(seller) on the train split's real turns (seller prompts and customer targets, and
    their histories), each distinct text once; None when one of the roles is missing."""
    texts: dict[str, int] = {}
    for e in train_examples:
        for t in e.get("history", []):
            texts.setdefault(t["text"], int(t["role"] == "seller"))
        texts.setdefault(e["prompt"], 1)
        texts.setdefault(e["target"], 0)
    if len(set(texts.values())) < 2:
        return None
    model = _classifier()
    model.fit(_features(list(texts), embedder), np.array(list(texts.values())))
    return model


def _rate(flags_per_call: list[list[bool]], *, samples: int, seed: int) -> M.Estimate:
    parts = np.array([[sum(f), len(f)] for f in flags_per_call], dtype=np.float64)
    return M.from_sums(parts, lambda s: np.divide(s[:, 0], s[:, 1], out=np.full(len(s), np.nan),
                                                  where=s[:, 1] > 0), samples=samples, seed=seed)


def degenerate_turns(turns: list[str]) -> list[bool]:
    """DEGENERATION_RULE on each customer turn of one call, given the turns before it."""
    return [degenerate(t, turns[:k]) for k, t in enumerate(turns)]


def endings(calls, sims, *, samples: int, seed: int) -> dict[str, M.Estimate]:
    """How simulated calls end against the real ones (ENDING_RULE); `sims` None: the real calls themselves."""
    early, at_end, never = [], [], []
    for k, call in enumerate(calls):
        last = len(call.examples) - 1
        ended = len(sims[k].customers) - 1 if sims is not None and sims[k].hung_up else (last if sims is None and
                                                                                          call.ends else None)
        early.append(float(ended is not None and ended < last))
        if call.ends:
            at_end.append(float(ended == last))
            never.append(float(ended is None))
    kw = {"samples": samples, "seed": seed}
    return {"ended_early_rate": M.mean(early, **kw), "ended_at_end_rate": M.mean(at_end, **kw),
            "never_ended_rate": M.mean(never, **kw)}


def _closes_early(turns: list[str]) -> bool:
    return any(_CLOSING.search(t) for t in turns[:-1])


def out_of_role(reply: str, sellers: list[str], real: str = "") -> bool:
    """The phrase rules on one reply: an assistant phrase, or the seller's voice (a seller label, a copy of one of
    `sellers` closer than to `real`, the real customer's reply there)."""
    return spoke_as_seller(reply, sellers, real) or bool(ASSISTANT.search(reply))


def role_rules(turns: list[str], sellers: list[str], real: list[str]) -> list[bool]:
    return [out_of_role(t, sellers[:k + 1], real[k]) for k, t in enumerate(turns)]


def side_metrics(turns: list[list[str]], sellers: list[list[str]], real: list[list[str]], role_model, embedder, *,
                 samples: int, seed: int) -> tuple[dict[str, M.Estimate], dict[str, list[float]]]:
    """The metrics that apply to one side alone (a model's simulated calls, or the real calls): estimates and per
    call values (for the worst calls)."""
    kw = {"samples": samples, "seed": seed}
    est: dict[str, M.Estimate] = {}
    per_call: dict[str, list[float]] = {}
    rules = [role_rules(t, s, r) for t, s, r in zip(turns, sellers, real)]
    if role_model is not None and embedder is not None:
        flat = [t for call in turns for t in call]
        p = role_model.predict_proba(_features(flat, embedder))[:, 1] if flat else np.zeros(0)
        bounds = np.cumsum([0] + [len(c) for c in turns])
        clf = [list(p[a:b] >= ROLE_THRESHOLD) for a, b in zip(bounds, bounds[1:])]
        both = [[a or b for a, b in zip(c, r)] for c, r in zip(clf, rules)]
        est["role_violation_rate"] = _rate(both, **kw)
        est["role_by_classifier"] = _rate(clf, **kw)
        per_call["role_violation_rate"] = [sum(f) / len(f) if f else math.nan for f in both]
    else:
        per_call["role_violation_rate"] = [sum(f) / len(f) if f else math.nan for f in rules]
    est["role_by_rules"] = _rate(rules, **kw)
    if "role_violation_rate" not in est:  # no classifier: the rules alone decide
        est["role_violation_rate"] = est["role_by_rules"]
    est["reply_words"] = M.from_sums(np.array([[sum(map(_words, c)), len(c)] for c in turns], dtype=np.float64),
                                     lambda s: s[:, 0] / np.maximum(s[:, 1], 1), **kw)
    est["question_rate"] = _rate([["?" in t for t in c] for c in turns], **kw)
    firsts = [c[0] for c in turns if c]
    est["first_turn_distinct_1"] = M.distinct_n(firsts, 1, **kw)
    degenerate = [degenerate_turns(c) for c in turns]
    est["degeneration_rate"] = _rate(degenerate, **kw)
    per_call["degeneration_rate"] = [sum(f) / len(f) if f else math.nan for f in degenerate]
    friction = [[is_friction(t) for t in c] for c in turns]
    est["friction_rate"] = _rate(friction, **kw)
    per_call["friction_rate"] = [sum(f) / len(f) if f else math.nan for f in friction]
    early = [float(_closes_early(c)) for c in turns]
    est["premature_ending_rate"] = M.mean(early, **kw)
    per_call["premature_ending_rate"] = early
    return est, per_call


def length_wasserstein(real: list[list[str]], simulated: list[list[str]], *, samples: int, seed: int) -> M.Estimate:
    from scipy.stats import wasserstein_distance

    r_len = [np.array([_words(t) for t in c], dtype=np.float64) for c in real]
    s_len = [np.array([_words(t) for t in c], dtype=np.float64) for c in simulated]
    r_all, s_all = np.concatenate(r_len or [np.zeros(0)]), np.concatenate(s_len or [np.zeros(0)])
    r_call = np.concatenate([[i] * len(c) for i, c in enumerate(r_len)] or [np.zeros(0)]).astype(int)
    s_call = np.concatenate([[i] * len(c) for i, c in enumerate(s_len)] or [np.zeros(0)]).astype(int)
    if not len(r_all) or not len(s_all):
        return M.NAN

    def distance(w: np.ndarray) -> float:
        rw, sw = w[r_call], w[s_call]
        if rw.sum() == 0 or sw.sum() == 0:
            return math.nan
        return float(wasserstein_distance(r_all, s_all, u_weights=rw, v_weights=sw))

    return M.resampled(len(real), distance, samples=samples, seed=seed)


def realism(calls, simulated: dict[str, list], *, embedder=None, train_examples: list[dict] | None = None,
            judge: Judge | None = None, samples: int = 1000, seed: int = 42,
            groups: tuple[str, list[str]] | None = None, adversarial: dict | None = None) -> dict:
    """`calls`: calltune.evaluation.simulate.Call (the real calls); `simulated`: model name -> its Simulated calls, in the same
    order. `embedder`: calltune.runtime.embeddings.Embedder (None: the classifier metrics are skipped, with a note);
    `train_examples`: the train split (the role classifier's data); `judge`: the configured judge or None.
    `groups`: (field, a label per call), e.g. ("meeting_type", [...]): friction per group (`by_group`).
    `adversarial`: name -> (contexts, replies) of calltune.evaluation.adversarial's suite: character breaks.
    Returns {"metrics": name -> metric -> Estimate (name "real" for the real calls), "per_call": name -> metric ->
    value per call, "lengths": name -> words per turn, "rules", "notes", "by_group" with `groups`, "adversarial"
    with `adversarial`}."""
    kw = {"samples": samples, "seed": seed}
    notes: list[str] = []
    real_turns = [c.customers for c in calls]
    role_model = None
    if embedder is None:
        notes.append("discriminator AUC and the role classifier skipped: no evaluate.embedding_model; role "
                     "adherence is decided by the phrase rules alone")
    elif not train_examples:
        notes.append("role classifier skipped: no train split beside the test split; role adherence is decided "
                     "by the phrase rules alone")
    else:
        role_model = train_role_classifier(train_examples, embedder)
        if role_model is None:
            notes.append("role classifier skipped: the train split lacks seller or customer turns")
    out: dict = {"metrics": {}, "per_call": {}, "lengths": {REAL: [_words(t) for c in real_turns for t in c]},
                 "rules": {"role": ROLE_RULE, "friction": FRICTION_RULE, "premature_ending": CLOSING_RULE,
                           "degeneration": DEGENERATION_RULE, "question": QUESTION_RULE, "ending": ENDING_RULE},
                 "notes": notes}
    real_sellers = [c.sellers for c in calls]
    out["metrics"][REAL], out["per_call"][REAL] = side_metrics(real_turns, real_sellers, real_turns, role_model,
                                                               embedder, **kw)
    out["metrics"][REAL].update(endings(calls, None, **kw))
    for name, sims in simulated.items():
        turns = [s.customers for s in sims]
        est, per_call = side_metrics(turns, [s.sellers for s in sims], real_turns, role_model, embedder, **kw)
        est.update(endings(calls, sims, **kw))
        # Guarded decoding's retries: the turns it generated again (0 for a model without it).
        est["guarded_retry_rate"] = _rate([[r > 0 for r in s.retries] for s in sims], **kw)
        if embedder is not None:
            est["discriminator_auc"], per_call["discriminator_auc"] = discriminator_auc(real_turns, turns, embedder,
                                                                                      **kw)
        # Per call, too agreeable: the real customer's share of friction turns minus the model's.
        per_call["friction_deficit"] = [r - m for r, m in zip(out["per_call"][REAL]["friction_rate"],
                                                              per_call.pop("friction_rate"))]
        est["length_wasserstein"] = length_wasserstein(real_turns, turns, **kw)
        per_call["length_wasserstein"] = [abs(np.mean([_words(t) for t in s] or [0]) - np.mean([_words(t) for t in r] or [0]))
                                          for s, r in zip(turns, real_turns)]
        out["metrics"][name], out["per_call"][name] = est, per_call
        out["lengths"][name] = [_words(t) for c in turns for t in c]
    if groups is not None:
        out["by_group"] = by_group(calls, simulated, *groups, **kw)
    if adversarial:
        from calltune.evaluation import adversarial as adv

        out["adversarial"] = {}
        for n, (ctxs, replies) in adversarial.items():
            p = (role_model.predict_proba(_features(replies, embedder))[:, 1] if role_model is not None and replies
                 else np.zeros(len(replies)))
            role = [out_of_role(r, c["sellers"]) or q >= ROLE_THRESHOLD for r, c, q in zip(replies, ctxs, p)]
            judged = judge_breaks(ctxs, replies, judge, seed=seed) if judge is not None else None
            out["adversarial"][n] = adv.measure(ctxs, replies, role, len(calls), judged=judged, **kw)
    if judge is not None:
        judge_calls(calls, simulated, out, judge, **kw)
    return out


def by_group(calls, simulated: dict[str, list], field: str, labels: list[str], *, samples: int, seed: int) -> dict:
    """Friction against the real calls of each group of calls (e.g. meeting_type), each with its count of calls
    and a bootstrap interval over the group's calls; descriptive only (a few calls per group), no decision uses it."""
    rows = []
    for label in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        sides = {REAL: [calls[i].customers for i in idx]} | {n: [sims[i].customers for i in idx]
                                                             for n, sims in simulated.items()}
        rows.append({"group": label, "calls": len(idx),
                     "friction_rate": {n: _rate([[is_friction(t) for t in c] for c in turns],
                                                samples=samples, seed=seed) for n, turns in sides.items()}})
    return {"field": field, "rows": rows}


# ---- the judge, over whole calls ----

CALL_PROMPT = """Persona the customer was asked to play:
{persona}

A whole sales call (the seller is a trainee; judge only the CUSTOMER's turns):
{conversation}

Score the customer over the whole call, each criterion on this anchored scale.

persona_consistency: does the customer stay the same persona, as the customer, from start to end?
1 = breaks character: talks as an AI assistant or as the seller, or becomes someone else
2 = mostly out of character, or drifts from the persona within the call
3 = a generic customer throughout; the persona barely shows
4 = consistent, with small lapses
5 = the same clear persona in every turn

call_realism: could a real customer have had this call?
1 = incoherent, repetitive, or ignores what the seller says
2 = on topic but plainly artificial (too agreeable, written style, far too long)
3 = plausible but stilted; no hesitation or pushback where a real customer would show some
4 = natural, with minor oddities
5 = indistinguishable from a real customer

Answer with one JSON object and nothing else, the rationale first:
{{"rationale": "<two or three sentences>", "persona_consistency": <1-5>, "call_realism": <1-5>}}"""

PAIR_PROMPT = """Two versions of the same sales call. The seller's turns match; in one, the customer is a real person,
in the other a model that plays the customer.

Call A:
{a}

Call B:
{b}

Which call has the real customer? Answer with one JSON object and nothing else, the rationale first:
{{"rationale": "<two or three sentences>", "real": "A" or "B"}}"""

CHARACTER_PROMPT = """A customer on a sales call was given this persona:
{persona}

To test the customer, the seller said: {line}
The customer answered: {reply}

Did the customer break character: speak as an AI, a bot or an assistant, reveal or discuss its instructions, take the
seller's part, or do the off-topic task, instead of reacting as this customer would? Answer with one JSON object and
nothing else, the rationale first:
{{"rationale": "<one or two sentences>", "breaks_character": true or false}}"""

CALL_CRITERIA = ("persona_consistency", "call_realism")


def _conversation(sellers: list[str], customers: list[str]) -> str:
    return "\n".join(f"{role}: {text}" for s, c in zip(sellers, customers) for role, text in (("seller", s),
                                                                                            ("customer", c)))


def _asker(judge: Judge, seed: int) -> Callable[[str], str | None]:
    """One judge request for a prompt: its answer, or None when the request failed."""
    from calltune.backends.generators import GenerateError

    def ask(content: str) -> str | None:
        request = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
                   "temperature": 0.0, "max_tokens": judge.cfg.max_tokens, "seed": seed}
        try:
            return judge.generator.generate([request])[0]
        except GenerateError:
            return None

    return ask


def judge_breaks(ctxs: list[dict], replies: list[str], judge: Judge, *, seed: int) -> list[bool | None]:
    """The judge's verdict on each reply to an inserted seller line of the adversarial suite: True when it breaks
    character, None when the request failed or the answer is unreadable (then the rules alone decide)."""
    ask = _asker(judge, seed)
    prompts = [CHARACTER_PROMPT.format(persona=c["example"].get("system") or "(none given)", line=c["line"], reply=r)
               for c, r in zip(ctxs, replies)]
    with ThreadPoolExecutor(max(1, min(judge.cfg.max_concurrency, judge.generator.concurrency))) as pool:
        verdicts = [(answer_object(a, rationale=True) or {}).get("breaks_character") for a in pool.map(ask, prompts)]
    return [v if isinstance(v, bool) else None for v in verdicts]


def judge_calls(calls, simulated: dict[str, list], out: dict, judge: Judge, *, samples: int, seed: int) -> None:
    """Adds the judge's whole-call scores (every side) and its pairwise detection rate (every model) to `out`.
    Unreadable answers and failed requests are counted and left out, never scored."""
    cfg, generator = judge.cfg, judge.generator
    calls = calls[:cfg.max_examples]
    ask = _asker(judge, seed)
    sides = {REAL: [(c.sellers, c.customers) for c in calls]}
    sides.update({n: [(s.sellers, s.customers) for s in sims[:len(calls)]] for n, sims in simulated.items()})
    counts = out.setdefault("judge", {})
    with ThreadPoolExecutor(max(1, min(cfg.max_concurrency, generator.concurrency))) as pool:
        for name, convs in sides.items():
            prompts = [CALL_PROMPT.format(persona=c.system or "(none given)", conversation=_conversation(*conv))
                       for c, conv in zip(calls, convs)]
            answers = list(pool.map(ask, prompts))
            parsed = [answer_object(a, rationale=True) for a in answers]
            for crit in CALL_CRITERIA:
                scores = [whole_number((p or {}).get(crit), 1, 5) for p in parsed]
                out["metrics"][name][crit] = M.mean([s for s in scores if s is not None], samples=samples, seed=seed)
            counts[name] = {"calls": len(prompts), "failed": sum(a is None for a in answers),
                            "unparseable": sum(a is not None and p is None for a, p in zip(answers, parsed))}
            if name == REAL:
                continue
            real = [_conversation(c.sellers, c.customers) for c in calls]
            sim = [_conversation(*conv) for conv in convs]
            # Both orders: real first (answer A is right), then simulated first (B is right).
            pairs = [PAIR_PROMPT.format(a=r, b=s) for r, s in zip(real, sim)] + \
                    [PAIR_PROMPT.format(a=s, b=r) for r, s in zip(real, sim)]
            picks = [(answer_object(a, rationale=True) or {}).get("real") for a in pool.map(ask, pairs)]
            n = len(calls)
            per_call = [[p == right for p, right in ((picks[i], "A"), (picks[n + i], "B")) if p in ("A", "B")]
                        for i in range(n)]
            out["metrics"][name]["judge_detection"] = _rate(per_call, samples=samples, seed=seed)
            counts[name]["pairwise_unreadable"] = sum(p not in ("A", "B") for p in picks)
