"""The model runtime: serving builds exactly the prompt tokens training saw (split settings from the model card), and
batched generation keeps every request's own settings."""
import json
from contextlib import closing

import httpx
import pytest

from calltune.apps.serve.app import serving
from calltune.backends.registry import open_registry
from calltune.config import DeployConfig, ServeConfig, SplitConfig, TuneConfig
from calltune.conversation.windows import split_call
from calltune.runtime.encoding import encode_causal, prompt_ids, window
from calltune.runtime.generation import Batch, PrefixCache, Request, generate
from calltune.runtime.loading import load_model
from calltune.runtime.local_responder import LocalResponder
from calltune.runtime.responders import Sampling, conversation
from calltune.training.lora import train_lora

from conftest import SYSTEM

TURNS = [("customer", "Hello?"), ("seller", "Hi, this is Bruno from Acme."), ("customer", "Oh, hi Bruno."),
         ("seller", "Do you have a minute?"), ("customer", "A short one."), ("seller", "Our plan is fifty a month."),
         ("customer", "That is a lot."), ("seller", "It covers the whole family."), ("customer", "Tell me more.")]
CALL = {"call_id": "c1", "source_row": 1, "persona": {}, "system": SYSTEM,
        "turns": [{"role": r, "text": t} for r, t in TURNS]}
SPLIT = SplitConfig(history_turns=2, opening_prompt="[Ring ring]")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir):
    """A model tuned (one step) on examples split with non-default settings, recorded in its card."""
    tmp = tmp_path_factory.mktemp("split-model")
    examples = split_call(CALL, SPLIT)
    train = tmp / "train.examples.jsonl"
    train.write_text("".join(json.dumps(e) + "\n" for e in examples))
    card = train_lora(train, None, tmp / "model", TuneConfig(base_model=str(tiny_llama_dir), max_steps=1, batch_size=2,
                                                            max_seq_len=256), seed=0, state_dir=tmp / "state",
                      split=SPLIT, system_prompt="You are {character}.")
    return tmp / "model", card, examples


def test_serving_builds_the_prompt_tokens_training_saw(trained, tmp_path):
    model_dir, card, examples = trained
    assert card["split"] == SPLIT.model_dump() and card["system_prompt_template"] == "You are {character}."
    assert card["end_of_turn_token"] == "<|im_end|>"
    responder = LocalResponder(model_dir)  # no split given: the card's
    try:
        assert responder.split == SPLIT
        for example in examples:
            trained_prompt = prompt_ids([encode_causal(example, responder.tokenizer, 256)])[0]
            # What a seller's app sends: the whole call so far (the merged turns before the reply).
            so_far = [{"role": t["role"], "text": t["text"]} for t in CALL["turns"][:example["turn_index"]]]
            served = responder.prompt(conversation(responder, SYSTEM, so_far), max_tokens=16)
            assert served == trained_prompt, example["example_id"]
        # The defaults would have given the model more history than it ever saw.
        default = responder.prompt(window(SYSTEM, so_far, SplitConfig()), max_tokens=16)
        assert len(default) > len(served)
    finally:
        responder.close()

    # And through the server: the whole call as OpenAI messages, the prompt counted as in training.
    cfg = DeployConfig()
    with closing(open_registry(cfg, tmp_path)) as registry:
        registry.add_version(cfg.secret_id, model_dir.as_uri().encode())
    with serving(ServeConfig(port=0), cfg, tmp_path) as url:
        messages = [{"role": "system", "content": SYSTEM}] + [
            {"role": "user" if t["role"] == "seller" else "assistant", "content": t["text"]} for t in so_far]
        r = httpx.post(url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 1}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(served)


def test_the_opening_and_history_windows_follow_turn_split():
    opening = split_call({**CALL, "turns": CALL["turns"][:1]}, SPLIT)[0]
    opening.pop("end_of_call")  # a live call has not ended: its window never carries the marker
    assert window(SYSTEM, [], SPLIT) == {**opening, "target": "", "example_id": "live:0", "call_id": "live"}
    with pytest.raises(ValueError, match="no seller line and no opening prompt"):
        window(SYSTEM, [], SplitConfig(opening_prompt=""))
    with pytest.raises(ValueError, match="the last turn must be the seller's"):
        window(SYSTEM, [{"role": "customer", "text": "Hi"}], SPLIT)
    # Consecutive seller lines are merged, as in training.
    merged = window("", [{"role": "seller", "text": "Hi."}, {"role": "seller", "text": "Anyone there?"}], SPLIT)
    assert merged["prompt"] == "Hi. Anyone there?" and merged["history"] == []


def test_batched_rows_keep_their_own_settings(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir)
    prompts = [tokenizer(t)["input_ids"] for t in ("Hello there", "A much longer prompt than the first one", "Hi")]
    alone = generate(model, tokenizer, [Request(prompts[0], 6, temperature=1.0, seed=5)])[0]
    pieces = []
    batch = generate(model, tokenizer, [
        Request(prompts[0], 6, temperature=1.0, seed=5),
        Request(prompts[1], 3, on_text=pieces.append),
        Request(prompts[2], 12, cancelled=lambda: False),
    ])
    assert batch[0] == alone  # a seeded row does not depend on what shares its batch
    assert (batch[1].completion_tokens, batch[1].finish_reason) == (3, "length")
    assert "".join(pieces) == batch[1].text and batch[1].prompt_tokens == len(prompts[1])
    assert batch[2].finish_reason == "length" and batch[2].completion_tokens == 12
    greedy = generate(model, tokenizer, [Request(prompts[2], 12)])[0]
    assert greedy.text == batch[2].text  # left padding changes nothing for a greedy row

    assert len(greedy.text) > 8
    stop = greedy.text[6:8]
    cut = generate(model, tokenizer, [Request(prompts[2], 12, stop=(stop,)),
                                      Request(prompts[2], 12, cancelled=lambda: True)])
    assert (cut[0].text, cut[0].finish_reason) == (greedy.text[:greedy.text.index(stop)].strip(), "stop")
    assert (cut[1].finish_reason, cut[1].completion_tokens) == ("cancelled", 1)


def test_a_request_joins_a_running_batch_and_leaves_when_it_ends(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir)
    prompts = [tokenizer(t)["input_ids"] for t in ("Hi", "A much longer prompt than the first one", "Hello there", "Yo")]
    lengths = (12, 3, 8, 4)
    alone = [generate(model, tokenizer, [Request(p, n)])[0] for p, n in zip(prompts, lengths)]
    assert all(g.finish_reason == "length" for g in alone)  # the tiny model never ends a turn by itself
    requests = [Request(p, n) for p, n in zip(prompts, lengths)]

    batch = Batch(model, tokenizer)
    assert batch.add(requests[:1]) == [] and not batch.step() and not batch.step()
    assert batch.add(requests[1:3]) == [] and len(batch) == 3  # two join the running one, between two steps
    ended = []
    while batch:
        ended += [(request, generation, len(batch)) for request, generation in batch.step()]
        if len(ended) == 1 and len(batch) == 2:
            assert batch.add(requests[3:]) == []  # and one takes the place of the first to end
    # each leaves as soon as it ends, the others go on; nobody's reply changes
    order = [(requests[1], 2), (requests[3], 2), (requests[2], 1), (requests[0], 0)]
    assert [(request, left) for request, _, left in ended] == order
    assert {id(r): g for r, g, _ in ended} == {id(r): g for r, g in zip(requests, alone)}


def test_a_prompt_that_starts_like_a_cached_one_reads_only_the_rest(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir)
    first = tokenizer("The seller said hello and the customer answered that she was busy")["input_ids"]
    second = first + tokenizer(" so the seller asked when to call back")["input_ids"]  # the call's next turn
    other = tokenizer("A different call about car insurance")["input_ids"]
    plain = [generate(model, tokenizer, [Request(p, 8)])[0].text for p in (first, second, other)]

    prefixes = PrefixCache()
    assert generate(model, tokenizer, [Request(first, 8)], prefixes)[0].text == plain[0]
    batch = generate(model, tokenizer, [Request(second, 8), Request(other, 8)], prefixes)
    assert [g.text for g in batch] == plain[1:]  # the same replies as reading every prompt in full
    assert prefixes.reused_tokens == len(first)  # the next turn read only what it added
    assert prefixes.read_tokens == len(first) + len(second) + len(other)

    small = PrefixCache(max_tokens=len(first))  # room for one prompt: the least recently used goes
    for prompt in (first, other, second):
        generate(model, tokenizer, [Request(prompt, 2)], small)
    assert small.reused_tokens == 0


def test_requests_that_come_within_the_batch_wait_share_a_batch(tiny_llama_dir, caplog):
    import logging
    import time

    example = window(SYSTEM, [{"role": "seller", "text": "Hello, is this Ana?"}], SPLIT)
    responder = LocalResponder(tiny_llama_dir, max_batch=4, batch_wait_s=1.0)
    try:
        with caplog.at_level(logging.DEBUG, logger="calltune.runtime.local_responder"):
            first = responder.start(example, Sampling(max_tokens=4))
            time.sleep(0.05)  # the worker has the first request and waits for company
            second = responder.start(example, Sampling(max_tokens=4))
            assert first.result(timeout=60) == second.result(timeout=60)
    finally:
        responder.close()
    assert "2 requests join, 2 generating together" in caplog.text


# ---- a Vertex model answers the same whatever the mode, and stops when told ----

@pytest.fixture
def gemini():
    pytest.importorskip("google.genai")
    from calltune.runtime.responders import GeminiResponder

    from fakes.vertex import FakeVertex

    with FakeVertex(lifetime_s=60) as fake:
        responder = GeminiResponder("projects/p/locations/us-central1/endpoints/42", fake.endpoint, max_concurrency=1)
        yield fake, responder
        responder.close()


def test_a_vertex_reply_is_the_same_whole_or_streamed(gemini):
    fake, responder = gemini
    example = window(SYSTEM, [{"role": "seller", "text": "Is this Ana?"}], SplitConfig())
    whole = responder.start(example, Sampling()).result()
    pieces: list[str] = []
    streamed = responder.start(example, Sampling(), on_text=pieces.append).result()
    assert whole.text == streamed.text == "42 says: Is this Ana?" and whole.finish_reason == streamed.finish_reason
    assert len(pieces) > 1 and "".join(pieces).strip() == streamed.text  # it did arrive in pieces
    assert [r.path.rsplit(":", 1)[1].split("?")[0] for r in fake.answered()] == ["generateContent",
                                                                                 "streamGenerateContent"]


def test_a_cancelled_vertex_request_is_not_sent_and_a_stream_stops_at_the_next_piece(gemini):
    fake, responder = gemini
    example = window(SYSTEM, [{"role": "seller", "text": "Can we talk about your plan today?"}], SplitConfig())
    gave_up = responder.start(example, Sampling(), cancelled=lambda: True).result()  # e.g. serve's 504
    assert gave_up.finish_reason == "cancelled" and fake.requests == []
    pieces: list[str] = []
    cut = responder.start(example, Sampling(), on_text=pieces.append, cancelled=lambda: len(pieces) >= 2).result()
    assert cut.finish_reason == "cancelled" and pieces == ["42 ", "says: "] and cut.text == "42 says:"
