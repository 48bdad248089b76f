"""Chat: the tuned model answers as the customer and keeps the conversation; `calltune chat`'s commands."""
import io
import warnings

import pytest

from calltune.apps.chat import ChatSession, repl
from calltune.runtime.local_responder import LocalResponder

from conftest import SYSTEM, TINY_DIALOGUES


def test_chat_answers_as_the_customer_and_keeps_the_turns(tuned_model):
    out, report = tuned_model
    with warnings.catch_warnings():  # nothing from the libraries on the chat screen (peft's FutureWarning was)
        warnings.simplefilter("error", FutureWarning)
        session = ChatSession(LocalResponder(out))
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
    session = ChatSession(LocalResponder(out))
    assert session.reply(prompt, max_new_tokens=24) == target  # greedy: the memorised reply


def test_the_repl_has_help_reset_and_quit(tiny_chat_model):
    session = ChatSession(LocalResponder(tiny_chat_model))
    lines = iter(["/help", "who is calling ?", "/reset", "/nope", "", "/quit", "never read"])
    out = io.StringIO()
    repl(session, seller_first=True, read=lambda prompt: next(lines), out=out, max_new_tokens=4)
    text = out.getvalue()
    assert "/reset  start the call again" in text and "unknown command /nope" in text
    assert text.count("customer> ") == 1 and "-- new call --" in text
    assert session.turns == []  # /reset emptied it
    assert next(lines) == "never read"  # /quit left the loop


@pytest.mark.parametrize("given_by", ["config", "flag"])
def test_chat_with_a_tuned_gemini_endpoint(tmp_path, monkeypatch, capsys, given_by):
    """`calltune chat` when the secret's payload is a Vertex endpoint (what deploying a tuned Gemini writes): the
    conversation goes through google-genai to that endpoint, with the kept turns as context. The Vertex base URL
    comes from where `calltune serve` takes it: serve.vertex_base_url, or --vertex-base-url."""
    from contextlib import closing

    from calltune.backends.registry import open_registry
    from calltune.cli import main
    from calltune.config import DeployConfig

    from fakes.vertex import FakeVertex

    endpoint = "projects/p/locations/us-central1/endpoints/777"
    with FakeVertex(lifetime_s=60) as fake:
        serve = f"serve:\n  vertex_base_url: {fake.endpoint}\n" if given_by == "config" else ""
        (tmp_path / "c.yaml").write_text(f"state_dir: {tmp_path}\n{serve}")
        flag = ["--vertex-base-url", fake.endpoint] if given_by == "flag" else []
        with closing(open_registry(DeployConfig(), tmp_path)) as registry:
            registry.add_version("llm-endpoint", endpoint.encode())
        monkeypatch.setattr("sys.stdin", io.StringIO("Hello, is this Ana?\nCan we talk on Friday?\n/quit\n"))
        assert main(["chat", "--config", str(tmp_path / "c.yaml"), *flag]) == 0
        bodies = [r.body for r in fake.answered()]
    out = capsys.readouterr().out
    assert "customer> 777 says: Hello, is this Ana?" in out and "customer> 777 says: Can we talk on Friday?" in out
    assert endpoint not in out  # the secret's payload is never shown
    # The second request carries the first exchange: the customer keeps the conversation.
    texts = [p["text"] for c in bodies[-1]["contents"] for p in c["parts"]]
    assert texts[-3:] == ["Hello, is this Ana?", "777 says: Hello, is this Ana?", "Can we talk on Friday?"]


def test_a_bad_payload_is_reported_by_version_not_by_content(tmp_path, capsys):
    from contextlib import closing

    from calltune.backends.registry import open_registry
    from calltune.cli import main
    from calltune.config import DeployConfig

    with closing(open_registry(DeployConfig(), tmp_path)) as registry:
        registry.add_version("llm-endpoint", b"TOPSECRET-x")
    assert main(["chat", f"state_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "llm-endpoint version latest cannot be loaded" in err and "TOPSECRET" not in err
