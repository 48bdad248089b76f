"""Metrics of generated customer replies against the real ones, each with a seeded bootstrap 95% interval.

Every metric is written as per-example parts whose column sums give the corpus value (token accuracy = sum of
correct / sum of target tokens; BLEU and chrF from per-sentence statistics, as sacrebleu sums them; distinct-n from each
reply's shares of the unique n-grams; a mean = sum of values / count). A bootstrap resample of the test examples
is then a vector of counts, and one matrix product gives the sums of every resample at once. The interval is the
percentile interval of `samples` resamples, seeded, so a rerun gives the same numbers.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from calltune.runtime.guardrails import rouge_l_scores

if TYPE_CHECKING:
    from calltune.runtime.embeddings import CrossEncoderScorer, Embedder

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int  # examples behind it

    def as_dict(self) -> dict:
        return asdict(self)


NAN = Estimate(math.nan, math.nan, math.nan, 0)


def _weights(n: int, samples: int, seed: int) -> np.ndarray:
    """(samples, n) counts: how often each example is drawn in each resample of n draws with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(np.float64)


def _interval(point: float, resampled: np.ndarray, n: int, level: float = LEVEL) -> Estimate:
    resampled = resampled[np.isfinite(resampled)]
    if not resampled.size:
        return Estimate(point, math.nan, math.nan, n)
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(point), float(low), float(high), n)


def from_sums(parts: np.ndarray, score: Callable[[np.ndarray], np.ndarray], *, samples: int = 1000,
              seed: int = 0, level: float = LEVEL) -> Estimate:
    """`parts`: (n examples, k) statistics; `score` maps (m, k) column sums to m values."""
    parts = np.asarray(parts, dtype=np.float64)
    n = len(parts)
    if n == 0:
        return NAN
    point = float(score(parts.sum(0, keepdims=True))[0])
    return _interval(point, score(_weights(n, samples, seed) @ parts), n, level)


def resampled(n: int, stat: Callable[[np.ndarray], float], *, samples: int = 1000, seed: int = 0,
              level: float = LEVEL) -> Estimate:
    """A statistic of n units (e.g. whole calls) that takes one weight per unit: its value with every weight 1, and
    the percentile interval over bootstrap resamples, each a vector of how often every unit is drawn. For statistics
    that are no ratio of sums (ROC AUC, Wasserstein distance); a paired difference when `stat` computes both sides
    from the same weights."""
    if n == 0:
        return NAN
    return _interval(stat(np.ones(n)), np.array([stat(w) for w in _weights(n, samples, seed)]), n, level)


def _ratio(sums: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[:, 0] / sums[:, 1]


def mean(values, *, samples: int = 1000, seed: int = 0) -> Estimate:
    values = np.asarray(values, dtype=np.float64)
    return from_sums(np.stack([values, np.ones_like(values)], 1), _ratio, samples=samples, seed=seed)


def token_accuracy(correct, tokens, *, samples: int = 1000, seed: int = 0) -> Estimate:
    """Share of target tokens predicted right; per-example counts, so the bootstrap resamples examples."""
    return from_sums(np.stack([np.asarray(correct, float), np.asarray(tokens, float)], 1), _ratio,
                     samples=samples, seed=seed)


def accuracy_gain(correct, tokens, other_correct, other_tokens, *, samples: int = 1000, seed: int = 0) -> Estimate:
    """Token accuracy minus another model's on the same examples, paired: a resample draws the same examples for
    both, so the interval is of the difference itself (narrower than two separate intervals suggest)."""
    parts = np.stack([np.asarray(a, float) for a in (correct, tokens, other_correct, other_tokens)], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return from_sums(parts, lambda s: s[:, 0] / s[:, 1] - s[:, 2] / s[:, 3], samples=samples, seed=seed)


def loss(nll, tokens, *, samples: int = 1000, seed: int = 0) -> Estimate:
    """Mean negative log-likelihood per target token."""
    return from_sums(np.stack([np.asarray(nll, float), np.asarray(tokens, float)], 1), _ratio,
                     samples=samples, seed=seed)


def perplexity(loss_estimate: Estimate) -> Estimate:
    """exp(loss); exp is monotone, so the loss interval maps onto the perplexity interval."""
    def f(x: float) -> float:
        return math.exp(min(x, 700.0)) if math.isfinite(x) else math.nan  # exp overflows past ~709

    e = loss_estimate
    return Estimate(f(e.value), f(e.low), f(e.high), e.n)


CHRF_ORDER, CHRF_BETA = 6, 2  # sacrebleu's chrF defaults: character 6-grams, recall twice as important


def _char_ngrams(text: str) -> list[Counter]:
    line = "".join(text.split())  # chrF ignores whitespace
    return [Counter(line[i:i + n] for i in range(len(line) - n + 1)) for n in range(1, CHRF_ORDER + 1)]


def chrf_statistics(candidates: list[str], references: list[str]) -> np.ndarray:
    """Per reply, for each character n-gram order: (candidate n-grams, reference n-grams, matches), the statistics
    whose sums give sacrebleu's corpus chrF (its public API does not expose them)."""
    rows = []
    for cand, ref in zip(candidates, references):
        row = []
        for hyp, gold in zip(_char_ngrams(cand), _char_ngrams(ref)):
            # as sacrebleu: a candidate's n-grams count only where the reference has n-grams of that order
            row += [sum(hyp.values()) if gold else 0, sum(gold.values()), sum((hyp & gold).values())]
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 3 * CHRF_ORDER)


def chrf_from_statistics(sums: np.ndarray) -> np.ndarray:
    """Corpus chrF (0-100) of each row of summed chrf_statistics: the F-beta of the precision and recall averaged
    over the orders both sides have (sacrebleu's effective order)."""
    hyp, ref, match = (sums.reshape(len(sums), CHRF_ORDER, 3)[..., i] for i in range(3))
    both = (hyp > 0) & (ref > 0)
    orders = both.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(both, match / np.where(hyp > 0, hyp, 1), 0).sum(axis=1) / np.maximum(orders, 1)
        rec = np.where(both, match / np.where(ref > 0, ref, 1), 0).sum(axis=1) / np.maximum(orders, 1)
        factor = CHRF_BETA ** 2
        score = (1 + factor) * prec * rec / (factor * prec + rec)
    return np.where(prec + rec > 0, 100 * score, 0.0)


def chrf(candidates: list[str], references: list[str], *, samples: int = 1000, seed: int = 0) -> Estimate:
    """Corpus chrF (character n-gram F-score, 0-100), as sacrebleu.corpus_chrf."""
    return from_sums(chrf_statistics(candidates, references), chrf_from_statistics, samples=samples, seed=seed)


def bleu(candidates: list[str], references: list[str], *, samples: int = 1000, seed: int = 0) -> Estimate:
    """Corpus BLEU (0-100); replies are short, so n-gram orders a reply lacks do not zero it (effective order).
    The corpus score is a function of summed per-reply statistics (sacrebleu's own significance tests resample them
    the same way); both come from sacrebleu's public API (sentence_score's counts, BLEU.compute_bleu)."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(effective_order=True)
    order = metric.max_ngram_order
    rows = []
    for cand, ref in zip(candidates, references):
        s = metric.sentence_score(cand, [ref])
        rows.append([s.sys_len, s.ref_len, *s.counts, *s.totals])
    stats = np.asarray(rows, dtype=np.float64)

    def score(sums: np.ndarray) -> np.ndarray:
        return np.array([BLEU.compute_bleu(correct=[int(round(v)) for v in row[2:2 + order]],
                                           total=[int(round(v)) for v in row[2 + order:]],
                                           sys_len=int(round(row[0])), ref_len=int(round(row[1])),
                                           smooth_method=metric.smooth_method, smooth_value=metric.smooth_value,
                                           effective_order=True, max_ngram_order=order).score for row in sums])

    return from_sums(stats, score, samples=samples, seed=seed)


def reply_length(replies: list[str], *, samples: int = 1000, seed: int = 0) -> Estimate:
    """Mean words per reply."""
    return mean([len(r.split()) for r in replies], samples=samples, seed=seed)


def distinct_n(replies: list[str], n: int, *, samples: int = 1000, seed: int = 0) -> Estimate:
    """Unique word n-grams over all word n-grams, across every reply (1.0: no n-gram repeats anywhere).

    Each unique n-gram's one unit is shared among its occurrences, so a reply holds a sum (its n-grams' shares)
    and the corpus value is a ratio of sums like the others: resampling replies then measures how much the
    diversity varies between replies, without the drop a plain resample shows (a reply drawn twice repeats
    all its n-grams)."""
    grams = [list(zip(*(r.lower().split()[i:] for i in range(n)))) for r in replies]
    counts = Counter(g for gs in grams for g in gs)
    if not counts:
        return Estimate(math.nan, math.nan, math.nan, len(replies))
    parts = [[sum(1.0 / counts[g] for g in gs), len(gs)] for gs in grams]
    return from_sums(parts, _ratio, samples=samples, seed=seed)


def example_scores(candidates: list[str], references: list[str], *, embedder: Embedder | None = None,
                   cross_encoder: CrossEncoderScorer | None = None) -> dict[str, np.ndarray]:
    """Each reply's similarity to its reference (higher is closer): rouge_l, and embedding_cosine / cross_encoder
    when those models are given."""
    out = {"rouge_l": np.asarray(rouge_l_scores(candidates, references), dtype=np.float64)}
    if embedder is not None:
        out["embedding_cosine"] = embedder.cosine(candidates, references)
    if cross_encoder is not None:
        out["cross_encoder"] = cross_encoder.score(candidates, references)
    return out


def text_metrics(candidates: list[str], references: list[str], *, scores: dict[str, np.ndarray],
                 samples: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Every reference-based and reply-only metric of generated replies; `scores` are their `example_scores`."""
    kw = {"samples": samples, "seed": seed}
    out = {
        "rouge_l": mean(scores["rouge_l"], **kw),
        "chrf": chrf(candidates, references, **kw),
        "bleu": bleu(candidates, references, **kw),
    }
    for name in ("embedding_cosine", "cross_encoder"):
        if name in scores:
            out[name] = mean(scores[name], **kw)
    out["reply_words"] = reply_length(candidates, **kw)
    out["distinct_1"] = distinct_n(candidates, 1, **kw)
    out["distinct_2"] = distinct_n(candidates, 2, **kw)
    return out
