"""Encoder-decoder bases: the encoder reads the conversation, the decoder learns exactly the customer reply; LoRA
training fits it; a tuned seq2seq folder loads, generates and is scored (token accuracy) like a causal one; and a
whole pipeline run with a seq2seq base completes under kfp.local.

No T5 weights ship offline, so the base is a tiny T5 of the real (flan-t5) architecture with random weights and a
T5 tokenizer trained here on the test texts."""
import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from calltune.config import EvaluateConfig, InferConfig, TuneConfig, load_config
from calltune.evaluation.batch_infer import predict
from calltune.evaluation.evaluate import evaluate
from calltune.runtime.encoding import encode_file, encode_seq2seq, instructions
from calltune.runtime.loading import MODEL_CARD, is_encoder_decoder, load_model, weights_sha256
from calltune.training import seq2seq

from conftest import SYSTEM, TINY_DIALOGUES, make_example, write_examples

T5_LINEAR = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
TRAIN = [make_example(i, *d) for i, d in enumerate(TINY_DIALOGUES)]
# Different lengths, so batched, padded scoring has real padding to get right.
TEST = [make_example(10, [], "Hello, am I speaking with Ana?", "Yes. Who is calling?"),
        make_example(11, [("seller", "I am calling from Acme."), ("customer", "Which company?")],
                     "Acme insurance, about your car.", "I do not want insurance, thank you."),
        make_example(12, [], "Is now a good time?", "No.")]
LONG = make_example(20, [("seller", "Good morning, my name is Bruno and I call from Acme Insurance about your car."),
                         ("customer", "Good morning. What is this about exactly?"),
                         ("seller", "We have a new plan for drivers in your area with lower monthly payments."),
                         ("customer", "I already have insurance with another company.")],
                    "Would you like to compare the two plans?", "Maybe, send me an email.")
# A tiny English call log for the pipeline run: the customer opens, the seller and the customer alternate.
CALLS = [
    ["Hello?", "Hi, this is Bruno from Acme insurance.", "Hi Bruno, what is it about?",
     "We have a cheaper car plan.", "I already have one, thanks.", "Can I send you a quote?", "Yes, send it by email."],
    ["Good morning.", "Good morning, is this Ana?", "Yes, speaking. Who is calling?", "Bruno, from Acme.",
     "Sorry, I am driving right now.", "Can I call you on Friday?", "Friday at ten works for me."],
    ["Hello, who is this?", "Bruno from Acme, about solar panels.", "How much do they cost?",
     "About fifty a month.", "That is too expensive for me.", "We have a smaller plan.", "Tell me more about it."],
    ["Yes?", "Hi, do you have a minute?", "Not really, I am busy.", "When is a good time?", "Call me next week.",
     "Monday morning?", "Monday is fine."],
]


def _corpus() -> list[str]:
    texts = [SYSTEM] + [instructions(e) + "\n" + e["target"] for e in TRAIN + TEST + [LONG]]
    return texts + [" ".join(c) for c in CALLS] + ["[The phone rings and the customer answers.] seller: customer:"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A random-weight T5 (gated-GELU feed-forward, as flan-t5) and a T5 tokenizer (unigram, `</s>` closes every
    encoded text), saved with safetensors."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

    out = tmp_path_factory.mktemp("t5") / "tiny-t5"
    raw = Tokenizer(models.Unigram())
    raw.normalizer = normalizers.NFKC()
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    raw.train_from_iterator(_corpus(), trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                extra_ids=0)
    tokenizer.save_pretrained(out)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def tokenizer(t5_dir):
    return AutoTokenizer.from_pretrained(t5_dir)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, t5_dir, tokenizer):
    """(trainer, tuned model folder) after a short LoRA run that memorises the TRAIN replies; the folder is laid
    out as the tune step writes one: adapter, tokenizer, calltune_model.json naming the base."""
    work = tmp_path_factory.mktemp("s2s-tune")
    rows = [encode_seq2seq(e, tokenizer, 128) for e in TRAIN]
    cfg = TuneConfig(base_model=str(t5_dir), max_steps=40, learning_rate=1e-2, batch_size=4, lora_r=8,
                     lora_alpha=16, lora_dropout=0.0, target_modules=T5_LINEAR, max_seq_len=128)
    trainer = seq2seq.make_trainer(t5_dir, rows, rows, cfg, seed=0, work_dir=work / "work")
    trainer.train()
    out = work / "model"
    trainer.model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / MODEL_CARD).write_text(json.dumps({
        "base_model": str(t5_dir), "base_model_path": str(t5_dir), "base_sha256": weights_sha256(t5_dir),
        "config": TuneConfig(base_model=str(t5_dir), max_seq_len=128, target_modules=T5_LINEAR).model_dump()}))
    return trainer, out


def _squeeze(text: str) -> str:
    return " ".join(text.split())  # a T5 tokenizer reads newlines as spaces


def test_is_encoder_decoder_reads_only_the_config(t5_dir, tmp_path):
    from transformers import LlamaConfig

    assert is_encoder_decoder(t5_dir)
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "causal")
    assert not is_encoder_decoder(tmp_path / "causal")  # a config.json alone: no weights are needed
    (tmp_path / "t5-config").mkdir()
    (tmp_path / "t5-config" / "config.json").write_bytes((t5_dir / "config.json").read_bytes())
    assert is_encoder_decoder(tmp_path / "t5-config")


def test_encoder_reads_the_conversation_and_labels_are_exactly_the_reply_and_eos(tokenizer):
    encoded = encode_seq2seq(LONG, tokenizer, max_len=512)
    encoder_text = tokenizer.decode(encoded["input_ids"], skip_special_tokens=True)
    assert encoder_text == _squeeze(instructions(LONG))  # system, every history turn, the seller's line
    assert encoder_text.endswith("seller: Would you like to compare the two plans?")
    assert "Maybe, send me an email" not in encoder_text  # the reply is never an input
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id  # T5's own closing </s>, as in pretraining
    assert encoded["labels"] == tokenizer("Maybe, send me an email.", add_special_tokens=False)["input_ids"] + [1]
    assert tokenizer.decode(encoded["labels"]) == "Maybe, send me an email.</s>"


def test_long_conversations_lose_the_oldest_history_first_and_never_the_reply(tokenizer):
    full = encode_seq2seq(LONG, tokenizer, max_len=512)

    cut = encode_seq2seq(LONG, tokenizer, max_len=len(full["input_ids"]) - 5)
    text = tokenizer.decode(cut["input_ids"], skip_special_tokens=True)
    assert len(cut["input_ids"]) <= len(full["input_ids"]) - 5
    assert "Good morning, my name is Bruno" not in text  # the oldest turn went first
    assert text.startswith("system: You are Ana") and "I already have insurance" in text
    assert cut["labels"] == full["labels"]

    n = len(full["labels"])
    tight = encode_seq2seq(LONG, tokenizer, max_len=n)  # no room even for the seller's whole line
    assert tight["input_ids"] == full["input_ids"][-n:] and tight["labels"] == full["labels"]
    assert "seller:" not in tokenizer.decode(tight["input_ids"]) and "plans?" in tokenizer.decode(tight["input_ids"])
    assert encode_seq2seq(LONG, tokenizer, max_len=n - 1) is None  # the reply alone cannot fit


def test_a_broken_example_names_the_file_and_the_example(tokenizer, tmp_path):
    bad = {k: v for k, v in TEST[1].items() if k != "target"}
    path = write_examples(tmp_path / "test.examples.jsonl", [TEST[0], bad])
    with pytest.raises(ValueError, match=r"test\.examples\.jsonl: example 'call11:5' has a missing .*'target'"):
        encode_file(path, tokenizer, 128, encode=encode_seq2seq)


def test_training_pads_labels_with_ignore_and_fits_the_replies(tuned, tokenizer):
    trainer, _ = tuned
    batch = next(iter(trainer.get_eval_dataloader()))
    rows = [encode_seq2seq(e, tokenizer, 128) for e in TRAIN]
    for got, row in zip(batch["labels"].tolist(), rows):  # the collator keeps the dataset's order here
        n = len(row["labels"])
        assert got[:n] == row["labels"] and set(got[n:]) <= {-100}
    assert any(-100 in got for got in batch["labels"].tolist())

    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 40 and losses[-1] < losses[0] / 10
    validation = trainer.evaluate()
    assert validation["eval_loss"] < 0.1 and validation["eval_mean_token_accuracy"] == 1.0


def test_tuned_folder_loads_and_generates_the_replies_it_learned(tuned, tmp_path):
    _, model_dir = tuned
    model, _ = load_model(model_dir)
    assert model.config.is_encoder_decoder and not hasattr(model, "peft_config")  # the adapter is merged
    train = write_examples(tmp_path / "train.examples.jsonl", TRAIN)
    # batch_size 3 over 4 prompts of different lengths: left padding inside a batch, and a second batch
    rows, report = predict(model_dir, train, tmp_path / "predictions", InferConfig(max_new_tokens=32, batch_size=3))
    assert [r["candidate_responses"] for r in rows] == [e["target"] for e in TRAIN]
    assert report["rows"] == 4 and report["model_sha"]
    assert (tmp_path / "predictions" / "predictions.parquet").is_file()


def by_hand(model, tokenizer, examples):
    """One example at a time, no padding: the decoder reads <start> + reply[:-1]; position t predicts token t."""
    correct = total = 0
    nll = 0.0
    for example in examples:
        encoder = tokenizer(instructions(example))["input_ids"]
        reply = tokenizer(example["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        decoder = [model.config.decoder_start_token_id] + reply[:-1]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([encoder]), decoder_input_ids=torch.tensor([decoder])).logits[0]
        for row, token in zip(logits, reply):
            correct += int(row.argmax()) == token
            nll -= float(torch.log_softmax(row, -1)[token])
            total += 1
    return correct, total, nll


def test_evaluation_scores_reply_tokens_with_teacher_forcing(tuned, t5_dir, tokenizer, tmp_path):
    from peft import PeftModel

    _, model_dir = tuned
    test = write_examples(tmp_path / "test.examples.jsonl", TEST + TRAIN)
    cfg = EvaluateConfig(batch_size=3, embedding_model="", bootstrap_samples=20, compare=["base"], threshold=0.0)
    result = evaluate(model_dir, test, tmp_path / "out", cfg, infer=InferConfig(max_new_tokens=32, batch_size=4))

    base = AutoModelForSeq2SeqLM.from_pretrained(t5_dir).eval()
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(t5_dir), model_dir).eval()
    correct, total, nll = by_hand(model, tokenizer, TEST + TRAIN)
    assert result["examples"] == 7 and result["tokens"] == total
    assert result["accuracy"] == pytest.approx(correct / total, abs=1 / total)  # a near-tie may flip one token
    assert result["loss"] == pytest.approx(nll / total, rel=1e-3)
    base_correct, base_total, _ = by_hand(base, tokenizer, TEST + TRAIN)
    assert result["base_accuracy"] == pytest.approx(base_correct / base_total, abs=1 / base_total)
    assert result["accuracy"] > result["base_accuracy"]  # it learned the TRAIN replies

    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert comparison["gate"]["decision"] == "promote"
    predictions = [json.loads(line) for line in (tmp_path / "out/predictions/tuned/predictions.jsonl").open()]
    assert [p["candidate_responses"] for p in predictions[3:]] == [e["target"] for e in TRAIN]


def test_pipeline_run_with_a_seq2seq_base_completes_under_kfp_local(t5_dir, tmp_path):
    from calltune.pipeline.local_run import run_local

    calls = tmp_path / "calls.jsonl"
    calls.write_text("".join(json.dumps({
        "call_id": f"call-{i}", "system": SYSTEM,
        "turns": [{"role": "customer" if k % 2 == 0 else "seller", "text": t} for k, t in enumerate(turns)]}) + "\n"
        for i, turns in enumerate(CALLS)), encoding="utf-8")
    cfg = load_config(None, [
        f"state_dir={tmp_path / 'state'}", f"data.input={calls}", "translate.backend=none",
        "sample.train_size=8", "sample.validation_size=4", "sample.test_size=4",  # one call each for validation, test
        f"tune.base_model={t5_dir}", f"tune.target_modules={json.dumps(T5_LINEAR)}", "tune.max_steps=2",
        "tune.batch_size=4", "tune.max_seq_len=128", "evaluate.embedding_model=", "evaluate.bootstrap_samples=10",
        "evaluate.threshold=0.0", "evaluate.min_gain_over_base=-1.0", "infer.max_new_tokens=8"])
    summary = run_local(cfg, tmp_path / "run")

    assert 0.0 <= summary["gate"]["accuracy"] <= 1.0
    assert summary["promoted"] is not None and summary["promoted"]["version"] == 1
    model_dir = tmp_path / "run" / "pipeline_root" / summary["run"] / "tune" / "model"
    card = json.loads((model_dir / MODEL_CARD).read_text())
    assert card["base_model_path"] == str(t5_dir) and (model_dir / "adapter_model.safetensors").is_file()
    assert card["steps"] == 2 and card["validation_examples"] > 0 and card["validation_token_accuracy"] is not None
    assert json.loads((model_dir / "adapter_config.json").read_text())["task_type"] == "SEQ_2_SEQ_LM"


def test_chat_with_a_tuned_seq2seq_model(tuned):
    """`calltune chat` on a promoted T5: the encoder reads the same plain-text conversation as in training."""
    from calltune.apps.chat import ChatSession
    from calltune.runtime.local_responder import LocalResponder

    _, model_dir = tuned
    history, prompt, target = TINY_DIALOGUES[1]
    session = ChatSession(LocalResponder(model_dir), system=TRAIN[1]["system"])
    session.turns = [{"role": r, "text": t} for r, t in history]
    assert _squeeze(session.reply(prompt, max_new_tokens=32)) == _squeeze(target)  # greedy: the memorised reply
    assert [t["role"] for t in session.turns][-2:] == ["seller", "customer"]
