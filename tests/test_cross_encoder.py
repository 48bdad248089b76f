"""Cross-encoder similarity (evaluate.cross_encoder): a tiny random-weight CrossEncoder folder built here (no
download) scores (target, reply) pairs; the metric gets a bootstrap interval, shows in the comparison and the
report, feeds the error analysis, and is skipped with a note when not configured. Folders that are not a
CrossEncoder are refused before any scoring."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from calltune.config import EvaluateConfig, InferConfig
from calltune.evaluation import metrics as M
from calltune.evaluation.evaluate import evaluate
from calltune.runtime.embeddings import CrossEncoderScorer

from conftest import TINY_DIALOGUES, make_example, write_examples

VOCAB = "[PAD] [UNK] [CLS] [SEP] [MASK] yes no who is calling friday price too expensive for me at ten".split()
PAIRS = (["Yes, who is calling?", "Friday at ten.", "no"], ["Who is calling?", "Too expensive for me.", "no"])


def _bert_folder(out: Path, *, labels: int | None) -> Path:
    """A 1-layer BERT with a WordPiece tokenizer over VOCAB: with a classification head of `labels` outputs, or
    (None) a bare encoder, like a bi-encoder's."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    out.mkdir(parents=True)
    (out / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=labels or 1)
    (BertModel(config) if labels is None else BertForSequenceClassification(config)).save_pretrained(out)
    BertTokenizerFast(vocab_file=str(out / "vocab.txt")).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory) -> Path:
    return _bert_folder(tmp_path_factory.mktemp("ce") / "tiny-cross-encoder", labels=1)


def test_scores_are_the_models_sigmoid_on_target_then_reply(cross_encoder_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scores = CrossEncoderScorer(str(cross_encoder_dir)).score(*PAIRS)
    tokenizer = AutoTokenizer.from_pretrained(cross_encoder_dir)
    model = AutoModelForSequenceClassification.from_pretrained(cross_encoder_dir).eval()
    candidates, references = PAIRS
    with torch.no_grad():
        by_hand = [torch.sigmoid(model(**tokenizer(r, c, return_tensors="pt")).logits)[0, 0].item()
                   for c, r in zip(candidates, references)]
        swapped = torch.sigmoid(model(**tokenizer(candidates[0], references[0], return_tensors="pt")).logits).item()
    assert scores == pytest.approx(by_hand, abs=1e-5)
    assert abs(swapped - by_hand[0]) > 1e-7  # the pair order matters, and it is (target, reply)
    assert CrossEncoderScorer(str(cross_encoder_dir)).score([], []).shape == (0,)


def test_metric_is_the_mean_with_a_bootstrap_interval(cross_encoder_dir):
    scorer = CrossEncoderScorer(str(cross_encoder_dir))
    out = M.text_metrics(*PAIRS, scores=M.example_scores(*PAIRS, cross_encoder=scorer), samples=200, seed=1)
    estimate = out["cross_encoder"]
    assert estimate.value == pytest.approx(float(np.mean(scorer.score(*PAIRS))))
    assert estimate.low <= estimate.value <= estimate.high and estimate.n == 3
    unscored = M.text_metrics(*PAIRS, scores=M.example_scores(*PAIRS), samples=10)
    assert "cross_encoder" not in unscored  # not configured: no number at all


def test_folders_that_are_not_a_cross_encoder_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"evaluate.cross_encoder: {tmp_path / 'nowhere'} is not a model"):
        CrossEncoderScorer(str(tmp_path / "nowhere"))
    encoder = _bert_folder(tmp_path / "bi-encoder", labels=None)  # would load with a random head: refused
    with pytest.raises(ValueError, match=r"is not a CrossEncoder \(architectures \['BertModel'\]"):
        CrossEncoderScorer(str(encoder))
    classifier = _bert_folder(tmp_path / "nli", labels=3)
    with pytest.raises(ValueError, match="has 3 labels; a similarity CrossEncoder has one"):
        CrossEncoderScorer(str(classifier))


@pytest.fixture
def test_split(tmp_path) -> Path:
    return write_examples(tmp_path / "test.examples.jsonl", [make_example(i, *d) for i, d in enumerate(TINY_DIALOGUES)])


def test_evaluation_reports_the_cross_encoder_and_the_error_analysis(tiny_chat_model, cross_encoder_dir,
                                                                      test_split, tmp_path):
    cfg = EvaluateConfig(embedding_model="", cross_encoder=str(cross_encoder_dir), bootstrap_samples=50,
                         error_examples=2, threshold=0.0)
    result = evaluate(tiny_chat_model, test_split, tmp_path / "out", cfg, infer=InferConfig(max_new_tokens=4))
    tuned = json.loads((tmp_path / "out" / "comparison.json").read_text())["models"]["tuned"]
    ce = tuned["metrics"]["cross_encoder"]
    assert ce["n"] == 4 and ce["low"] <= ce["value"] <= ce["high"] and result["cross_encoder"] == ce["value"]
    assert "scores" not in tuned and "rows" not in tuned

    errors = json.loads((tmp_path / "out" / "errors.json").read_text())["tuned"]
    assert set(errors["worst"]) == {"accuracy", "rouge_l", "cross_encoder"}
    assert all(len(w) == 2 for w in errors["worst"].values())
    worst_ce = [w["score"] for w in errors["worst"]["cross_encoder"]]
    assert worst_ce == sorted(worst_ce) and np.mean(worst_ce) <= ce["value"] + 1e-4
    assert set(errors["categories"]) == {"empty_or_short", "wrong_language", "repetition", "seller_line", "off_persona"}

    md = (tmp_path / "out" / "report.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    for page in (md, html):
        assert "Error analysis" in page and "Worst 2 tuned-model replies by cross_encoder" in page
        assert "cross_encoder" in page and "not checked: the judge is off" in page
        assert "cross-encoder similarity skipped" not in page


def test_without_a_cross_encoder_the_report_says_it_was_skipped(tiny_chat_model, test_split, tmp_path):
    cfg = EvaluateConfig(embedding_model="", bootstrap_samples=20, threshold=0.0)
    result = evaluate(tiny_chat_model, test_split, tmp_path / "out", cfg, infer=InferConfig(max_new_tokens=2))
    assert "cross_encoder" not in result
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert "cross_encoder" not in comparison["models"]["tuned"]["metrics"]
    for name in ("report.md", "report.html"):
        assert "cross-encoder similarity skipped: no evaluate.cross_encoder configured" in (
            tmp_path / "out" / name).read_text()


def test_a_bad_cross_encoder_fails_before_any_model_is_scored(tiny_chat_model, test_split, tmp_path):
    cfg = EvaluateConfig(embedding_model="", cross_encoder=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="evaluate.cross_encoder"):
        evaluate(tiny_chat_model, test_split, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()
