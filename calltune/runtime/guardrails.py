"""Guarded decoding: the rules a customer reply keeps, one definition for every caller (serve, the practice page,
simulate, batch inference) and for whole-call realism's degeneration metric.

A reply breaks a rule when it
- repeats one of the customer's own earlier turns of the call (ROUGE-L F1 >= REPEAT_ROUGE, both REPEAT_MIN_WORDS+
  words): "repeat";
- loops inside itself (LOOP_MIN_WORDS+ words, LOOP_SHARE or more of its word bigrams repeat an earlier bigram of the
  reply), or has no letter or digit at all: "loop" and "empty";
- is outside the band of real customer reply lengths, in words (learned from the train split at tune time and
  recorded in the model card, `band`): "length".

A reply that breaks a rule is generated again, at most `max_retries` times (`retry`). Greedy decoding stays
deterministic: the next try bans the token n-grams that broke the rule (the span copied from the earlier turn may not
appear, a looping n-gram may appear once, an empty reply may not end at once). A sampled reply is drawn again with
a seed derived from the request's. When every try breaks a rule, the one breaking the fewest is kept.
"""
from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

REPEAT_ROUGE, REPEAT_MIN_WORDS = 0.8, 3
LOOP_MIN_WORDS, LOOP_SHARE = 4, 0.5
BAN_N = 2  # token n-grams banned on a greedy retry: bigrams, or a near-copy slips through ROUGE-L
BAND_PERCENTILES = (1, 99)  # the length band: these percentiles of the train split's customer replies, in words

_WORD = re.compile(r"\w+")
_LETTER = re.compile(r"\w")

RULES = {
    "repeat": f"ROUGE-L F1 >= {REPEAT_ROUGE} against one of the customer's own earlier turns of the call (both "
              f"{REPEAT_MIN_WORDS}+ words)",
    "loop": f"{LOOP_MIN_WORDS}+ words, {LOOP_SHARE:.0%} or more of the word bigrams repeat an earlier bigram of the "
            "same reply",
    "empty": "no letter or digit at all",
    "length": "fewer or more words than the band of real customer replies (model card: guardrails.band)",
}


@functools.cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l_scores(candidates: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 (longest common subsequence of words) of each reply against its reference."""
    scorer = _rouge()
    return [scorer.score(r, c)["rougeL"].fmeasure for c, r in zip(candidates, references)]


def words(text: str) -> int:
    """Words as reply lengths count them (whitespace-separated)."""
    return len(text.split())


def _word_tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_loop(reply: str) -> bool:
    """A generation loop inside one reply."""
    tokens = _word_tokens(reply)
    grams = list(zip(tokens, tokens[1:]))
    return len(tokens) >= LOOP_MIN_WORDS and bool(grams) and 1 - len(set(grams)) / len(grams) >= LOOP_SHARE


def repeated_turn(reply: str, earlier: Sequence[str]) -> str | None:
    """The customer's own earlier turn that `reply` repeats, if any."""
    own = [t for t in earlier if words(t) >= REPEAT_MIN_WORDS]
    if words(reply) < REPEAT_MIN_WORDS or not own:
        return None
    scores = rouge_l_scores([reply] * len(own), own)
    best = max(range(len(own)), key=scores.__getitem__)
    return own[best] if scores[best] >= REPEAT_ROUGE else None


def degenerate(reply: str, earlier: Sequence[str]) -> bool:
    """Realism's degeneration: empty, a loop, or a repeat of an earlier turn (the length band aside)."""
    return not _LETTER.search(reply) or is_loop(reply) or repeated_turn(reply, earlier) is not None


def length_band(replies: Sequence[str]) -> list[int]:
    """[low, high] words: BAND_PERCENTILES of the replies' lengths, rounded outwards."""
    import math

    import numpy as np

    counts = np.array([words(r) for r in replies] or [0])
    low, high = np.percentile(counts, BAND_PERCENTILES)
    return [max(1, math.floor(low)), max(1, math.ceil(high))]


@dataclass(frozen=True)
class Guardrails:
    band: tuple[int, int] | None = None  # words; None: no length rule
    max_retries: int = 2

    @classmethod
    def from_card(cls, card: dict | None, enabled: bool = True) -> Guardrails | None:
        """The rules a model card records (its length band); None when `enabled` is False."""
        if not enabled:
            return None
        band = ((card or {}).get("guardrails") or {}).get("band")
        return cls(band=tuple(band) if band else None)

    def broken(self, reply: str, earlier: Sequence[str]) -> list[str]:
        """The rules `reply` breaks, given the customer's earlier turns of the call."""
        out = []
        if repeated_turn(reply, earlier) is not None:
            out.append("repeat")
        if is_loop(reply):
            out.append("loop")
        if not _LETTER.search(reply):
            out.append("empty")
        elif self.band and not self.band[0] <= words(reply) <= self.band[1]:
            out.append("length")
        return out


@dataclass
class Attempt:
    """What a guarded reply went through: the rules each try broke (the last try's may be empty), and the try kept."""
    broken: list[list[str]]
    kept: int

    @property
    def retries(self) -> int:
        return len(self.broken) - 1

    @property
    def passed(self) -> bool:
        return not self.broken[self.kept]


def retry(request, reply_tokens: list[int], reply: str, broken: list[str], earlier: Sequence[str], tokenizer,
          attempt: int):
    """The request for the next try after `reply` broke `broken`: greedy, with the offending n-grams banned (added to
    those of the earlier tries); sampled, with a seed derived from the request's and the try's number."""
    if request.temperature > 0:
        seed = None if request.seed is None else int.from_bytes(
            hashlib.blake2b(f"{request.seed}:{attempt}".encode(), digest_size=7).digest(), "big")
        return replace(request, seed=seed)
    banned = dict(request.banned)
    if "repeat" in broken:
        source = repeated_turn(reply, earlier) or ""
        copied = _copied_ngrams(reply_tokens, source, tokenizer)
        banned.update(dict.fromkeys(copied or [tuple(reply_tokens[:BAN_N])], 0))
    if "loop" in broken:
        banned.update(dict.fromkeys(_repeating_ngrams(reply_tokens), 1))
    if "length" in broken and reply_tokens:  # a different start, since nothing in the reply itself is at fault
        banned[tuple(reply_tokens[:BAN_N])] = 0
    min_tokens = request.min_tokens + 2 if "empty" in broken else request.min_tokens
    return replace(request, banned=banned, min_tokens=min_tokens)


def _ngrams(tokens: Sequence[int], n: int = BAN_N) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _copied_ngrams(reply_tokens: list[int], source: str, tokenizer) -> list[tuple[int, ...]]:
    """The reply's token n-grams that also occur in the earlier turn (tokenized alone, with and without a leading
    space, as it may have been met in context)."""
    seen = set()
    for text in (source, " " + source):
        seen.update(_ngrams(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return [g for g in dict.fromkeys(_ngrams(reply_tokens)) if g in seen]


def _repeating_ngrams(tokens: list[int]) -> list[tuple[int, ...]]:
    grams = _ngrams(tokens)
    return [g for g in dict.fromkeys(grams) if grams.count(g) > 1]


class Tries:
    """The tries of guarded replies in flight, by the caller's key."""

    def __init__(self, rails: Guardrails, tokenizer):
        self.rails, self.tokenizer = rails, tokenizer
        self._tries: dict = {}

    def settle(self, key, request, generation, earlier: Sequence[str]):
        """After a try ended: the request for the next try (the reply broke a rule and tries are left), or the
        generation to answer with, its `guard` saying what happened."""
        broken = self.rails.broken(generation.text, earlier) if generation.finish_reason != "cancelled" else []
        tries = self._tries.setdefault(key, [])
        tries.append((generation, broken))
        if broken and len(tries) <= self.rails.max_retries:
            return retry(request, generation.token_ids, generation.text, broken, earlier, self.tokenizer, len(tries))
        del self._tries[key]
        kept = min(range(len(tries)), key=lambda k: len(tries[k][1]))  # the first of the fewest broken rules
        return replace(tries[kept][0], guard=Attempt([b for _, b in tries], kept))
