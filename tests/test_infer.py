"""Batch inference: left-padded batches give the greedy replies of one-by-one generation; the predictions table."""
import json

import pyarrow.parquet as pq
import pytest
import torch

from calltune.config import InferConfig
from calltune.conversation.render import to_messages
from calltune.evaluation.batch_infer import COLUMNS, generate_batch, predict, prompt_ids, read_predictions
from calltune.release.deploy import model_sha
from calltune.runtime.encoding import encode_causal as encode_example
from calltune.runtime.loading import load_model

from conftest import TINY_DIALOGUES, make_example, write_examples

# Prompts of different lengths, so batches carry real left padding.
EXAMPLES = [make_example(i, *d) for i, d in enumerate(TINY_DIALOGUES)]


@pytest.fixture(scope="module")
def loaded(base_model_dir):
    return load_model(base_model_dir)


def test_batched_greedy_replies_equal_one_by_one_generation(loaded):
    model, tokenizer = loaded
    prompts = prompt_ids([encode_example(e, tokenizer, 512) for e in EXAMPLES])
    assert len({len(p) for p in prompts}) > 1
    batched = generate_batch(model, tokenizer, prompts, InferConfig(max_new_tokens=8, batch_size=4))
    chat = [tokenizer.apply_chat_template(to_messages(e)["messages"][:-1], add_generation_prompt=True,
                                          return_dict=True)["input_ids"] for e in EXAMPLES]
    assert chat == prompts  # the prompt is the chat template's rendering of the conversation
    # transformers' own greedy generate, one prompt at a time (no padding)
    single = [tokenizer.decode(model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, top_p=None,
                                              top_k=None, temperature=None)[0, len(p):],
                               skip_special_tokens=True).strip() for p in prompts]
    assert [g.text for g in batched] == single
    assert all(single)


def test_predictions_table_has_every_column_in_parquet_and_jsonl(base_model_dir, loaded, tmp_path):
    test = write_examples(tmp_path / "test.examples.jsonl", EXAMPLES)
    cfg = InferConfig(max_new_tokens=6, batch_size=2)
    rows, report = predict(base_model_dir, test, tmp_path / "out", cfg, limit=3, loaded=loaded)
    table = pq.read_table(tmp_path / "out" / "predictions.parquet")
    assert table.column_names == list(COLUMNS) and table.num_rows == 3 == report["rows"]
    assert table.to_pylist() == rows == read_predictions(tmp_path / "out" / "predictions.jsonl")
    for row, example in zip(rows, EXAMPLES):
        assert row["target_responses"] == example["target"]
        assert row["call_id"] == example["call_id"] and row["turn_index"] == example["turn_index"]
        assert row["instructions"].endswith(f"seller: {example['prompt']}")
        assert row["model_id"] == str(base_model_dir) and row["model_sha"] == model_sha(base_model_dir)
    assert rows[1]["instructions"].splitlines()[1] == "seller: Hi Ana, this is Bruno from Acme."  # history kept
    assert report["decoding"] == "greedy"

    sampled = InferConfig(max_new_tokens=6, batch_size=2, temperature=1.0)
    first, report = predict(base_model_dir, test, None, sampled, seed=5, limit=3, loaded=loaded)
    again, _ = predict(base_model_dir, test, None, sampled, seed=5, limit=3, loaded=loaded)
    assert report["decoding"] == "sampled"
    assert [r["candidate_responses"] for r in first] == [r["candidate_responses"] for r in again]  # seeded


def test_vertex_endpoint_through_google_genai(tmp_path):
    pytest.importorskip("google.genai")
    from fakes.vertex import FakeVertex

    test = write_examples(tmp_path / "test.examples.jsonl", EXAMPLES)
    resource = "projects/p1/locations/us-central1/endpoints/e7"
    with FakeVertex() as fake:
        fake.inject(503)  # retried by the client
        cfg = InferConfig(vertex_base_url=fake.endpoint, max_concurrency=2)
        rows, report = predict(resource, test, tmp_path / "out", cfg)
        bodies = [r.body for r in fake.answered()]
    assert [r["candidate_responses"] for r in rows] == [f"e7 says: {e['prompt']}" for e in EXAMPLES]
    assert {r["model_id"] for r in rows} == {resource} and report["rows"] == 4
    # the persona went as the system instruction, the history as earlier turns
    assert all(b["systemInstruction"]["parts"][0]["text"] == EXAMPLES[0]["system"] for b in bodies)
    assert sorted(len(b["contents"]) for b in bodies) == [1, 1, 2, 3]
    assert json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])["call_id"] == "call0"


def test_scoring_and_replying_in_one_pass_reads_each_prompt_once(loaded):
    from calltune.evaluation.batch_infer import score_and_reply
    from calltune.runtime.generation import PrefixCache
    from calltune.runtime.scoring import score

    model, tokenizer = loaded
    rows = [encode_example(e, tokenizer, 512) for e in EXAMPLES]
    cfg = InferConfig(max_new_tokens=8, batch_size=4)
    prompts = prompt_ids(rows)
    small = PrefixCache(max_tokens=sum(map(len, prompts[:2])))  # room for two prompts: several rounds
    scores, replies = score_and_reply(model, tokenizer, rows, cfg, 3, small)
    alone = score(model, tokenizer, rows, 3)
    assert (scores["correct"], scores["tokens"]) == (alone["correct"], alone["tokens"])
    assert scores["nll"] == pytest.approx(alone["nll"], rel=1e-4)  # other batches, other float rounding
    assert replies == generate_batch(model, tokenizer, prompts, cfg)
    # replying read no prompt again: scoring left each one's keys, values and next-token scores
    assert small.read_tokens == sum(map(len, prompts)) == small.reused_tokens
