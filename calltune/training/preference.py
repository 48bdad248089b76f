"""Realism preference rounds after supervised tuning (tune.preference_rounds), after DIAL (arXiv 2512.20773): the
model is taught to prefer the real customer's reply over its own where its own gives it away.

One round:
1. **Data.** The tuned model plays the *train* split's calls closed-loop (calltune.evaluation.simulate, without
   guarded decoding: its own replies, faults and all). At every turn it produced, the pair's prompt is the context
   it replied to, *chosen* the real customer's reply there and *rejected* its own, both without the end-of-call
   marker: a round teaches how the customer words a reply, not when it hangs up (supervised tuning taught that).
   On the bundled data, pairs with the marker on the side that ended the call gave a worse validation AUC (0.674
   against 0.650 without) and hung up early just as often.
2. **Which pairs.** A discriminator (realism's: MiniLM features, logistic regression) is trained on the train calls'
   real and simulated customer turns and scores every simulated turn out of fold (folds by call). The
   `tune.preference_pairs` pairs whose reply it finds the most recognisable are kept, and every pair whose reply
   breaks a rule (guarded decoding's: a repeat, a loop, empty, out of the length band; realism's role rules: an
   assistant phrase, the seller's voice). Pairs whose two replies are the same text are dropped. Only train calls
   are simulated: validation and test calls never enter.
3. **Training** (the backend's): DPO on the LoRA adapter (TRL's DPOTrainer), against the supervised adapter,
   frozen, as the reference; or a Vertex AI preference tuning job continuing from the supervised Gemini model.
4. **Keep or roll back.** The validation calls are simulated before and after (again without guarded decoding), and
   realism compared, paired over the calls (one bootstrap resample draws the same calls for both): the round is
   kept when the discriminator AUC's or the degeneration rate's improvement has a 90% interval above 0, and
   validation token accuracy dropped by no more than `tune.preference_max_accuracy_drop`. Otherwise the model
   before the round is kept, and the report says why.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from calltune.config import InferConfig, TuneConfig

log = logging.getLogger(__name__)

CONFIDENCE = 0.9  # the keep-or-roll-back interval
CHARACTER_LINES = 2  # seller lines that try to break the role, inserted into each train call for in-character pairs
SELECTION = ("the {top} replies a discriminator trained on the train calls' real and simulated customer turns "
             "(MiniLM embeddings + length features, logistic regression) scored most likely simulated, out of fold "
             "(folds by call), and every reply that breaks a rule (guarded decoding: repeat, loop, empty, length "
             "band; realism: assistant phrase, seller's voice); pairs with identical replies dropped; and in-character "
             "pairs: two seller lines that try to break the role (training lines, not the evaluation suite) in each "
             "train call, where the reply broke character against a real customer's deflection")


@dataclass(frozen=True)
class Pair:
    """One preference pair: `prompt` is the closed-loop example the model replied to (system, history, seller line),
    `chosen` the real customer's reply and `rejected` the model's, each as the model learns text (marker included)."""
    call_id: str
    turn: int
    prompt: dict
    chosen: str
    rejected: str
    recognisable: float  # the discriminator's out-of-fold P(simulated) of the rejected reply
    broken: tuple[str, ...]  # the rules the rejected reply breaks

    def as_dict(self) -> dict:
        return {"call_id": self.call_id, "turn": self.turn, "chosen": self.chosen, "rejected": self.rejected,
                "recognisable": round(self.recognisable, 4), "broken": list(self.broken)}


def candidate_pairs(calls, sims, embedder, rails) -> list[Pair]:
    """Every turn a simulated call produced, as a pair against the real reply there, with its out-of-fold
    discriminator score and the rules its reply breaks (`rails`: guarded decoding's rules, the length band of the
    model card)."""
    from calltune.evaluation.realism import out_of_fold, role_rules
    from calltune.evaluation.simulate import context

    real = [c.customers for c in calls]
    if embedder is None:  # no discriminator: every reply as recognisable as the next, taken in call order
        groups = np.concatenate([[i] * (len(c) + len(s.customers)) for i, (c, s) in enumerate(zip(real, sims))])
        y = np.concatenate([[0] * len(c) + [1] * len(s.customers) for c, s in zip(real, sims)])
        proba = np.zeros(len(y))
    elif (scored := out_of_fold(real, [s.customers for s in sims], embedder)) is None:
        raise ValueError("a preference round needs at least two train calls with simulated turns")
    else:
        y, proba, groups = scored
    pairs = []
    for i, (call, sim) in enumerate(zip(calls, sims)):
        recognisable = proba[(groups == i) & (y == 1)]
        role = role_rules(sim.customers, sim.sellers, call.customers)
        for k, rejected in enumerate(sim.customers):
            chosen = call.customers[k]  # no end-of-call marker on either side (module docstring)
            if " ".join(chosen.split()).casefold() == " ".join(rejected.split()).casefold():
                continue
            broken = [*(rails.broken(rejected, sim.customers[:k]) if rails else []),
                      *(["role"] if role[k] else [])]
            pairs.append(Pair(call.call_id, k, context(call, k, sim.sellers, sim.customers), chosen, rejected,
                              float(recognisable[k]), tuple(broken)))
    return pairs


def character_pairs(calls, reply, split, *, per_call: int, seed: int) -> list[Pair]:
    """Pairs that teach the customer to stay in role: `per_call` seller lines that try to break it (the adversarial
    suite's training lines, never the ones evaluation measures with) inserted into each train call; where the
    model's reply breaks character, it is rejected, and a real customer's deflection from the train calls (a turn
    that pushes back or hesitates, chosen by a hash) is chosen."""
    import hashlib

    from calltune.evaluation import adversarial
    from calltune.evaluation.realism import FRICTION, out_of_role

    deflections = sorted({t for c in calls for t in c.customers if FRICTION.search(t) and "?" not in t})
    ctxs = adversarial.contexts(calls, split, seed, adversarial.TRAINING, per_call=per_call)
    if not deflections or not ctxs:
        return []
    replies = reply([c["example"] for c in ctxs], [c["earlier"] for c in ctxs])
    pairs = []
    for ctx, r in zip(ctxs, replies):
        if not adversarial.breaks(r.text, ctx, out_of_role(r.text, ctx["sellers"])):
            continue
        pick = int.from_bytes(hashlib.blake2b(f"{seed}:{ctx['line']}:{calls[ctx['call']].call_id}".encode(),
                                              digest_size=8).digest(), "big") % len(deflections)
        pairs.append(Pair(calls[ctx["call"]].call_id, -1, ctx["example"], deflections[pick], r.text, 1.0,
                          ("character",)))
    return pairs


def select_pairs(candidates: list[Pair], top: int) -> list[Pair]:
    """Every rule-breaking pair, and the `top` most recognisable of the others (ties: in order)."""
    broken = [p for p in candidates if p.broken]
    rest = sorted((p for p in candidates if not p.broken), key=lambda p: -p.recognisable)
    return broken + rest[:top]


def paired_gains(real: list[list[str]], before: list[list[str]], after: list[list[str]], embedder, *, samples: int,
                 seed: int) -> dict:
    """Realism gains of `after` over `before` on the same calls (positive: better), paired bootstrap over the calls at
    CONFIDENCE: the discriminator AUC's drop (each side's own cross-validated discriminator, as evaluation's) and the
    degeneration rate's drop; and each side's values."""
    from calltune.evaluation import metrics as M
    from calltune.evaluation.realism import degenerate_turns, out_of_fold, weighted_auc

    kw = {"samples": samples, "seed": seed, "level": CONFIDENCE}
    n = len(real)
    out: dict = {}
    sides = {"before": before, "after": after}
    aucs = {}
    for name, turns in sides.items():
        scored = out_of_fold(real, turns, embedder) if embedder is not None else None
        aucs[name] = weighted_auc(*scored) if scored is not None else None
    if all(aucs.values()):
        out["discriminator_auc"] = {name: M.resampled(n, aucs[name], **kw).as_dict() for name in sides}
        out["discriminator_auc"]["gain"] = M.resampled(n, lambda w: aucs["before"](w) - aucs["after"](w),
                                                       **kw).as_dict()
    flags = {name: [degenerate_turns(c) for c in turns] for name, turns in sides.items()}
    parts = np.array([[sum(b), len(b), sum(a), len(a)] for b, a in zip(flags["before"], flags["after"])], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = {name: M.from_sums(parts[:, 2 * j:2 * j + 2], lambda s: s[:, 0] / s[:, 1], **kw).as_dict()
                for j, name in enumerate(sides)}
        gain = M.from_sums(parts, lambda s: s[:, 0] / s[:, 1] - s[:, 2] / s[:, 3], **kw).as_dict()
    out["degeneration_rate"] = {**rate, "gain": gain}
    return out


def decide(gains: dict, accuracy: dict, max_drop: float) -> tuple[bool, str]:
    """Keep the round when the AUC or the degeneration gain has its CONFIDENCE interval above 0 and validation token
    accuracy dropped by no more than `max_drop`; (kept, why)."""
    improved = [name for name in ("discriminator_auc", "degeneration_rate")
                if name in gains and (gains[name]["gain"]["low"] or 0) > 0 and math.isfinite(gains[name]["gain"]["low"])]
    drop = accuracy["before"] - accuracy["after"]
    if drop > max_drop:
        return False, (f"rolled back: validation token accuracy dropped by {drop:.4f} "
                       f"({accuracy['before']:.4f} -> {accuracy['after']:.4f}), more than "
                       f"tune.preference_max_accuracy_drop={max_drop}")
    if not improved:
        return False, (f"rolled back: neither the discriminator AUC's nor the degeneration rate's improvement on the "
                       f"validation calls has a {CONFIDENCE:.0%} interval above 0 (within noise)")
    return True, (f"kept: {' and '.join(improved)} improved beyond noise ({CONFIDENCE:.0%} paired bootstrap over the "
                  f"validation calls), validation token accuracy {accuracy['before']:.4f} -> {accuracy['after']:.4f}")


@dataclass
class Backend:
    """What a round needs from a tuning backend: `replier(model)`: a simulate reply function of that model (no
    guarded decoding); `train(model, pairs, round)`: the model after preference tuning on the pairs; `accuracy(model)`:
    validation token accuracy; `rails`: guarded decoding's rules for the rule-breaking pairs; `split`: the model's
    windowing."""
    replier: Callable
    train: Callable
    accuracy: Callable
    rails: object | None
    split: object  # the model's windowing (SplitConfig), for the in-character pairs' contexts


def run_round(model, backend: Backend, train_calls, validation_calls, embedder, cfg: TuneConfig, *, number: int,
              samples: int, seed: int) -> tuple[object, dict]:
    """One round from `model`: (the model kept, the round's report)."""
    from calltune.evaluation.simulate import simulate

    log.info("preference round %d: simulating %d train calls", number, len(train_calls))
    reply = backend.replier(model)
    sims = simulate(train_calls, reply, seed=seed)
    candidates = candidate_pairs(train_calls, sims, embedder, backend.rails)
    character = character_pairs(train_calls, reply, backend.split, per_call=CHARACTER_LINES, seed=seed + number)
    pairs = select_pairs(candidates, cfg.preference_pairs) + character
    report: dict = {"round": number, "train_calls": len(train_calls), "candidates": len(candidates),
                    "pairs": len(pairs), "rule_breaking_pairs": sum(bool(p.broken) for p in pairs),
                    "character_pairs": len(character),
                    "selection": SELECTION.format(top=cfg.preference_pairs),
                    "examples": [p.as_dict() for p in pairs[:5]]}
    if not pairs:
        report.update(kept=False, decision="rolled back: no pair to learn from")
        return model, report
    log.info("preference round %d: %d pairs (%d rule-breaking) of %d candidates", number, len(pairs),
             report["rule_breaking_pairs"], len(candidates))
    tuned = backend.train(model, pairs, number)
    real = [c.customers for c in validation_calls]
    before = simulate(validation_calls, backend.replier(model), seed=seed)
    after = simulate(validation_calls, backend.replier(tuned), seed=seed)
    gains = paired_gains(real, [s.customers for s in before], [s.customers for s in after], embedder,
                         samples=samples, seed=seed)
    accuracy = {"before": backend.accuracy(model), "after": backend.accuracy(tuned)}
    kept, why = decide(gains, accuracy, cfg.preference_max_accuracy_drop)
    report.update(validation_calls=len(validation_calls), validation=gains, validation_token_accuracy=accuracy,
                  kept=kept, decision=why,
                  validation_samples={"before": [s.as_dict() for s in before[:2]],
                                      "after": [s.as_dict() for s in after[:2]]})
    log.info("preference round %d: %s", number, why)
    return (tuned if kept else model), report


def run_rounds(model, backend: Backend, train_examples: list[dict], validation_examples: list[dict], embedder,
               cfg: TuneConfig, *, samples: int, seed: int) -> tuple[object, dict]:
    """`cfg.preference_rounds` rounds, each from the model the last one kept: (final model, report for the card)."""
    from calltune.evaluation.simulate import calls_from_examples

    train_calls, _ = calls_from_examples(train_examples)
    validation_calls, _ = calls_from_examples(validation_examples)
    if not validation_calls:
        raise ValueError("a preference round needs the validation split (sample.validation_size > 0): the round is "
                         "kept or rolled back on the validation calls")
    held_out = {c.call_id for c in validation_calls}
    if leaked := held_out & {c.call_id for c in train_calls}:
        raise ValueError(f"validation calls in the train split: {sorted(leaked)[:5]}")
    rounds = []
    for number in range(1, cfg.preference_rounds + 1):
        model, report = run_round(model, backend, train_calls, validation_calls, embedder, cfg, number=number,
                                  samples=samples, seed=seed)
        rounds.append(report)
    return model, {"rounds": rounds, "kept_rounds": sum(r["kept"] for r in rounds),
                   "settings": {"pairs": cfg.preference_pairs, "beta": cfg.preference_beta,
                                "learning_rate": cfg.preference_learning_rate, "epochs": cfg.preference_epochs,
                                "max_accuracy_drop": cfg.preference_max_accuracy_drop, "confidence": CONFIDENCE}}


def infer_for_rounds(infer: InferConfig) -> InferConfig:
    """Greedy, unguarded replies (the model's own) for a round's simulations."""
    return infer.model_copy(update={"temperature": 0.0, "guardrails": False})
