"""Guarded decoding (calltune.runtime.guardrails) and the end-of-call marker in the runtime: the rules on known
replies; a model forced to repeat the customer's earlier turn is generated again (greedy: the copied n-grams banned,
the same reply every time; sampled: a seed derived from the request's, the same reply for the same seed); the
local responder retries behind one future and streams only the try it keeps; a reply that says the marker ends
with finish_reason end_of_call."""
import pytest

from calltune.runtime.generation import Request, generate
from calltune.runtime.guardrails import Guardrails, length_band
from calltune.runtime.loading import load_model

from conftest import HANG_UP, HANG_UP_REPLY, SYSTEM


def test_the_rules_on_known_replies():
    rails = Guardrails(band=(2, 12))
    earlier = ["I need to think about it, really.", "Ok."]
    assert rails.broken("I need to think about it, really!", earlier) == ["repeat"]
    assert rails.broken("Ok.", earlier) == ["length"]  # short turns never count as repeats; one word is off the band
    assert rails.broken("no no no no no no no no", []) == ["loop"]
    assert rails.broken("...", []) == ["empty"]
    assert rails.broken("Send me the contract by email and I will look tonight.", earlier) == []
    assert rails.broken(" ".join(f"w{i}" for i in range(13)), []) == ["length"]
    assert length_band(["a b", "a b c"] * 50 + ["a " * 40]) == [2, 3]  # percentiles 1 and 99: one outlier ignored


@pytest.fixture(scope="module")
def tiny(tiny_chat_model):
    return load_model(tiny_chat_model)


def _prompt(tokenizer, seller: str = "who is calling ?") -> list[int]:
    return tokenizer.apply_chat_template([{"role": "system", "content": "ana"}, {"role": "user", "content": seller}],
                                         tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]


def _forced_to_repeat(model, tokenizer, **sampling):
    """The model's own reply to the prompt, then the prompt again with that reply as the customer's earlier turn:
    the first try repeats it word for word."""
    request = Request(_prompt(tokenizer), max_new_tokens=8, min_tokens=8, **sampling)  # eight words, no less
    [plain] = generate(model, tokenizer, [request])
    assert len(plain.text.split()) >= 3  # long enough to count as a repeat
    return request, plain


def test_a_model_forced_to_repeat_is_regenerated_with_the_copied_ngrams_banned_the_same_way_each_time(tiny):
    model, tokenizer = tiny
    request, plain = _forced_to_repeat(model, tokenizer)
    guarded = [generate(model, tokenizer, [request], rails=Guardrails(), earlier=[[plain.text]])[0] for _ in range(2)]
    first = guarded[0]
    assert first.guard.broken[0][0] == "repeat" and first.guard.retries >= 1
    assert first.text != plain.text and first.guard.broken[first.guard.kept] != ["repeat"]
    assert guarded[1].text == first.text and guarded[1].guard == first.guard  # greedy: deterministic
    # With nothing to repeat, the repeat rule has nothing to say.
    assert "repeat" not in generate(model, tokenizer, [request], rails=Guardrails(), earlier=[[]])[0].guard.broken[0]


def test_a_sampled_reply_that_repeats_is_resampled_with_a_seed_derived_from_the_requests(tiny):
    model, tokenizer = tiny
    request, plain = _forced_to_repeat(model, tokenizer, temperature=1.0, seed=5)
    again = [generate(model, tokenizer, [request], rails=Guardrails(), earlier=[[plain.text]])[0] for _ in range(2)]
    assert again[0].guard.retries >= 1 and again[0].text != plain.text
    assert again[1].text == again[0].text  # the same seed, the same reply


def test_the_local_responder_retries_behind_one_future_and_streams_only_the_kept_try(hang_up_model):
    from calltune.runtime.local_responder import LocalResponder
    from calltune.runtime.responders import Sampling, conversation

    responder = LocalResponder(hang_up_model, max_batch=4)
    try:
        example = conversation(responder, SYSTEM, [{"role": "seller", "text": "who is calling ?"}])
        plain = responder.start(example, Sampling(max_tokens=16)).result()
        assert plain.text == HANG_UP_REPLY and plain.guard.retries == 0  # it always says this
        pieces = []  # ...so when it said it before in the call, the first try repeats it
        guarded = responder.start(example, Sampling(max_tokens=16), on_text=pieces.append,
                                  earlier=[HANG_UP_REPLY]).result()
        assert guarded.guard.broken[0] == ["repeat"] and guarded.guard.retries == 2 == responder.retries
        # This tiny model can only loop otherwise: the try breaking the fewest rules is kept, and only it streamed.
        kept = guarded.guard.broken[guarded.guard.kept]
        assert all(len(kept) <= len(b) for b in guarded.guard.broken) and not guarded.guard.passed
        assert "".join(pieces).strip() == guarded.text
    finally:
        responder.close()
    off = LocalResponder(hang_up_model, max_batch=4, guardrails=False)
    try:
        unguarded = off.start(example, Sampling(max_tokens=16), earlier=[HANG_UP_REPLY]).result()
        assert (unguarded.text, unguarded.guard) == (HANG_UP_REPLY, None)
    finally:
        off.close()


def test_a_reply_that_says_the_end_of_call_marker_ends_the_call(hang_up_model):
    from calltune.runtime.local_responder import LocalResponder
    from calltune.runtime.responders import Sampling, conversation

    responder = LocalResponder(hang_up_model, max_batch=4)
    try:
        assert responder.split.end_of_call == HANG_UP  # from the model card
        example = conversation(responder, SYSTEM, [{"role": "seller", "text": "who is calling ?"}])
        out = responder.start(example, Sampling(max_tokens=16)).result()
        assert (out.text, out.finish_reason) == (HANG_UP_REPLY, "end_of_call")
    finally:
        responder.close()
