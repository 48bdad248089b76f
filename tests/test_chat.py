"""Chat: the tuned model answers as the customer and keeps the conversation."""
from calltune.chat import ChatSession
from conftest import SYSTEM, TINY_DIALOGUES


def test_chat_answers_as_the_customer_and_keeps_the_turns(tuned_model):
    out, report = tuned_model
    session = ChatSession(out)
    assert session.system == report["system_prompt"] == SYSTEM

    opening = session.opening(max_new_tokens=16)
    reply = session.reply("Hello, is this Ana?", max_new_tokens=16)
    assert opening.strip() and reply.strip()
    assert "<|im_end|>" not in reply and "<|im_start|>" not in reply
    assert [t["role"] for t in session.turns] == ["customer", "seller", "customer"]
    assert session.turns[1]["text"] == "Hello, is this Ana?"


def test_tuned_model_plays_the_customer_it_learnt(tuned_model):
    out, _ = tuned_model
    history, prompt, target = TINY_DIALOGUES[2]
    session = ChatSession(out)
    assert session.reply(prompt, max_new_tokens=24) == target  # greedy: the memorised reply
