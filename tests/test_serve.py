"""`calltune serve`: real HTTP clients (the openai package, http.client on one kept-alive connection, httpx) against
the server, which follows the secret's latest version without a restart. Vertex endpoints go through the real
google-genai client to a loopback generateContent fake; local models are the session's tiny and bundled models
(tests/conftest.py)."""
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import closing, contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from calltune.apps.serve.app import open_server, serving
from calltune.backends.registry import open_registry
from calltune.cli import main
from calltune.config import DeployConfig, ServeConfig, SplitConfig
from calltune.release.deploy import deploy, rollback
from calltune.runtime.sampling import Generation

from conftest import HANG_UP_REPLY, SYSTEM, TINY_DIALOGUES
from fakes.secret_manager import FakeSecretManager
from fakes.vertex import FakeVertex

ROOT = Path(__file__).resolve().parents[1]
ENDPOINT = "projects/calltune-test/locations/us-central1/endpoints/{}"
HELLO = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello, is this Ana?"}]


@pytest.fixture
def vertex():
    pytest.importorskip("google.genai")
    with FakeVertex(lifetime_s=120) as f:
        yield f


def publish(cfg, state, endpoint: str) -> int:
    with closing(open_registry(cfg, state)) as reg:
        return reg.add_version(cfg.secret_id, endpoint.encode()).version


def running(cfg, state, **serve):
    return serving(ServeConfig(**{"port": 0, "refresh_s": 0.05, **serve}), cfg, state)


def request(url: str, path: str, body: dict | None = None, headers: dict | None = None) -> httpx.Response:
    if body is None:
        return httpx.get(url + path, headers=headers, timeout=60)
    return httpx.post(url + path, json=body, headers=headers, timeout=60)


def reply(url: str, messages: list[dict], **kw) -> tuple[str, str]:
    """(served model, the customer's reply)."""
    r = request(url, "/v1/chat/completions", {"model": "llm-endpoint", "messages": messages, **kw})
    assert r.status_code == 200, r.text
    return r.json()["model"], r.json()["choices"][0]["message"]["content"]


def served_version(url: str) -> int | None:
    r = request(url, "/health")
    return r.json()["version"] if r.status_code == 200 else None


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


# ---- the OpenAI API on a local model ----

def test_openai_client_streams_and_reports_usage_and_finish_reason(tmp_path, base_model_dir):
    openai = pytest.importorskip("openai")
    cfg = DeployConfig()
    publish(cfg, tmp_path, base_model_dir.as_uri())
    with running(cfg, tmp_path) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["llm-endpoint/versions/1", "llm-endpoint"]
        assert client.models.retrieve("llm-endpoint/versions/1").id == "llm-endpoint/versions/1"

        out = client.chat.completions.create(model="llm-endpoint", messages=HELLO, max_tokens=4)
        text, usage = out.choices[0].message.content, out.usage
        assert out.model == "llm-endpoint/versions/1" and text
        assert out.choices[0].finish_reason == "length" and usage.completion_tokens == 4  # cut by max_tokens
        assert usage.total_tokens == usage.prompt_tokens + 4 and usage.prompt_tokens > 10

        # The official client on a pooled connection, across an error: the next request is answered.
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="llm-endpoint", prompt="Hi")
        chunks = list(client.chat.completions.create(model="llm-endpoint/versions/1", messages=HELLO, max_tokens=4,
                                                     stream=True, stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
        assert chunks[-1].usage == usage and not chunks[-1].choices
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not one lump

        first_word = text.split()[1]  # a stop string ends the reply before it
        stopped = client.chat.completions.create(model="llm-endpoint", messages=HELLO, max_tokens=4, stop=[first_word])
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.choices[0].message.content == text[:text.index(first_word)].strip()

        sampled = [client.chat.completions.create(model="llm-endpoint", messages=HELLO, max_tokens=6, temperature=1.0,
                                                  top_p=0.9, seed=11).choices[0].message.content for _ in range(2)]
        assert sampled[0] == sampled[1]  # seeded


def test_a_customer_who_hangs_up_says_so_in_the_stop_reason_extension_field(tmp_path, hang_up_model):
    cfg = DeployConfig()
    publish(cfg, tmp_path, hang_up_model.as_uri())
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "who is calling ?"}]
    with running(cfg, tmp_path) as url:
        r = request(url, "/v1/chat/completions", {"messages": messages, "max_tokens": 16})
        choice = r.json()["choices"][0]
        assert choice["message"]["content"] == HANG_UP_REPLY  # the marker itself never reaches the client
        assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "end_of_call")
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=60,
                          json={"messages": messages, "max_tokens": 16, "stream": True}) as events:
            chunks = [json.loads(line[5:]) for line in events.iter_lines()
                      if line.startswith("data:") and line != "data: [DONE]"]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == HANG_UP_REPLY
        assert [(c["choices"][0]["finish_reason"], c["choices"][0]["stop_reason"]) for c in chunks
                if c["choices"][0]["finish_reason"]] == [("stop", "end_of_call")]
        # A reply that does not end the call says so too: a null stop_reason.
        cut = request(url, "/v1/chat/completions", {"messages": messages, "max_tokens": 1}).json()["choices"][0]
        assert (cut["finish_reason"], cut["stop_reason"]) == ("length", None)


def test_every_bad_request_gets_its_4xx_and_the_connection_stays_usable(tmp_path, tiny_chat_model):
    cfg = DeployConfig()
    publish(cfg, tmp_path, tiny_chat_model.as_uri())
    good = json.dumps({"model": "llm-endpoint", "messages": [{"role": "user", "content": "who is calling ?"}],
                       "max_tokens": 2})
    user = {"role": "user", "content": "who ?"}
    cases = [
        ("POST", "/v1/completions", json.dumps({"model": "llm-endpoint", "prompt": "x"}), 404, "/v1/completions"),
        ("GET", "/v1/chat/completions", None, 405, "Method Not Allowed"),
        ("POST", "/v1/chat/completions", "{not json", 400, "not valid JSON"),
        ("POST", "/v1/chat/completions", "[" * 4000, 400, "not valid JSON"),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": [
            {"type": "text", "text": 5}]}]}), 400, "messages.0.content"),
        ("POST", "/v1/chat/completions", json.dumps({"messages": []}), 400, "messages"),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "tool", "content": "x"}]}), 400,
         "messages.0.role"),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [user, {"role": "assistant", "content": "no"}]}),
         400, "the last turn must be the seller's"),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [user], "max_tokens": 0}), 400, "max_tokens"),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [user], "max_tokens": 10_000}), 400,
         "over this server's limit"),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [user], "n": 2}), 400, "n"),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [user], "temperature": 3}), 400, "temperature"),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [user], "model": "gpt-4o"}), 404, "not served here"),
        ("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "who " * 40}]}), 400,
         "without any history"),
        ("GET", "/v1/models/gpt-4o", None, 404, "not served here"),
    ]
    with running(cfg, tmp_path, max_prompt_tokens=32, max_body_bytes=4096) as url:
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
        conn.request("POST", "/v1/chat/completions", good, {"Content-Type": "application/json"})
        assert conn.getresponse().read() and (sock := conn.sock) is not None
        for method, path, body, status, message in cases:
            conn.request(method, path, body, {"Content-Type": "application/json"} if body else {})
            response = conn.getresponse()
            error = json.loads(response.read())["error"]
            assert (response.status, error["type"]) == (status, "invalid_request_error"), (path, body[:80] if body else "", error)
            assert message in error["message"], error
            conn.request("POST", "/v1/chat/completions", good, {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["usage"]["completion_tokens"] >= 1
            assert conn.sock is sock, f"the connection was closed after {method} {path}"

        # Too large a body: 413, whether announced or sent chunked.
        big = json.dumps({"messages": [user], "user": "x" * 5000})
        assert request(url, "/v1/chat/completions", json.loads(big)).status_code == 413
        chunked = httpx.post(url + "/v1/chat/completions", content=iter([big.encode()[:3000], big.encode()[3000:]]))
        assert chunked.status_code == 413 and chunked.json()["error"]["message"] == "request body over 4096 bytes"
        # A long history is windowed to what fits, as training drops the oldest turns first.
        history = [{"role": r, "content": "yes no yes no"} for r in ("user", "assistant") * 4]
        r = request(url, "/v1/chat/completions", {"messages": [*history, user], "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] <= 32
        # A malformed request line or header is answered (400) too, not dropped.
        with socket.create_connection(sock.getpeername()) as raw:
            raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 400")


class BlockedModel:
    """A responder that answers nothing until `release` is set: a request holds its place for exactly as long as
    the test needs, and the test sees whether the server told it to stop (`stopped`)."""

    system, split = SYSTEM, SplitConfig()

    def __init__(self):
        self.release, self.stopped = threading.Event(), []

    def start(self, example, sampling, on_text=None, cancelled=None, earlier=None) -> Future:
        future: Future = Future()

        def answer_when_released():
            self.release.wait(60)
            self.stopped.append(bool(cancelled and cancelled()))
            future.set_result(Generation("too late", 1, 1, "stop"))

        threading.Thread(target=answer_when_released, daemon=True).start()
        return future

    def close(self) -> None:
        self.release.set()


def test_concurrent_requests_generate_together(tmp_path, base_model_dir, caplog):
    """Four requests to a model that waits for company until its batch is full (batch_wait_ms far above any
    scheduling delay, max_batch 4): the fourth arrival starts them, all four decoded together."""
    caplog.set_level(logging.DEBUG, logger="calltune.runtime.local_responder")
    cfg = DeployConfig()
    publish(cfg, tmp_path, base_model_dir.as_uri())
    with running(cfg, tmp_path, max_batch=4, batch_wait_ms=600_000) as url:
        results = []
        threads = [threading.Thread(target=lambda: results.append(reply(url, HELLO, max_tokens=4))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 4 and len(set(results)) == 1  # greedy: the same reply whatever shares the batch
        joins = [(int(r.message.split()[0]), int(r.message.split()[3])) for r in caplog.records
                 if " requests join, " in r.message]
        assert joins == [(4, 4)]


def test_a_full_queue_gets_503_and_a_slow_request_504_and_its_generation_stops(tmp_path):
    cfg, model = DeployConfig(), BlockedModel()
    publish(cfg, tmp_path, (tmp_path / "any").as_uri())
    serve = ServeConfig(port=0, refresh_s=60, max_batch=1, max_queue=0, request_timeout_s=0.5)
    with serving(serve, cfg, tmp_path, load=lambda endpoint: model) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json={"messages": HELLO, "stream": True},
                          timeout=60) as streaming:
            lines = streaming.iter_lines()
            next(lines)  # the first event: the request holds the only place, and the model does not answer
            busy = request(url, "/v1/chat/completions", {"messages": HELLO, "max_tokens": 2})
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
            assert busy.json()["error"]["code"] == "busy"
            events = [line for line in lines if line.startswith("data: ")]
        assert json.loads(events[-2][6:])["error"]["code"] == "timeout" and events[-1] == "data: [DONE]"
        late = request(url, "/v1/chat/completions", {"messages": HELLO})
        assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
        model.release.set()
        wait_for(lambda: len(model.stopped) == 2)
        assert model.stopped == [True, True]  # both generations were told to stop when their time ran out


# ---- versions: promotion, rollback, disabling ----

def test_a_disabled_or_rolled_back_version_stops_serving_within_the_refresh(tmp_path, tiny_chat_model, caplog):
    caplog.set_level(logging.INFO, logger="calltune.apps.serve")
    cfg, state = DeployConfig(), tmp_path / "state"
    other = shutil.copytree(tiny_chat_model, tmp_path / "other-model")
    (other / "marker.txt").write_text("another model folder")
    publish(cfg, state, tiny_chat_model.as_uri())
    turn = [{"role": "user", "content": "who ?"}]
    with running(cfg, state) as url:
        assert publish(cfg, state, other.as_uri()) == 2
        wait_for(lambda: served_version(url) == 2)
        assert reply(url, turn, max_tokens=2)[0] == "llm-endpoint/versions/2"

        with closing(open_registry(cfg, state)) as registry:
            registry.disable(cfg.secret_id, 2)
            health = wait_for(lambda: (r := request(url, "/health")).status_code == 503 and r.json())
            assert health["reason"] == "llm-endpoint version 2 (the latest) is disabled: nothing is served"
            refused = request(url, "/v1/chat/completions", {"messages": turn})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable"
            assert refused.headers["Retry-After"]
            registry.enable(cfg.secret_id, 2)
            wait_for(lambda: served_version(url) == 2)

        rollback(cfg, state)  # version 3 holds version 1's endpoint again
        wait_for(lambda: served_version(url) == 3)
        assert reply(url, turn, max_tokens=2)[0] == "llm-endpoint/versions/3"
    assert str(tmp_path) not in caplog.text  # the payloads (model paths) are never logged
    assert "POST /v1/chat/completions 200 tokens=" in caplog.text and "version=3" in caplog.text


def test_switches_local_models_when_a_new_version_lands(tmp_path, base_model_dir, tuned_model):
    """Base model first; the tuned model, deployed while serving, takes over and answers the line it learnt."""
    cfg, state = DeployConfig(), tmp_path / "state"
    history, prompt, target = TINY_DIALOGUES[2]
    assert history == []
    publish(cfg, state, base_model_dir.as_uri())
    with running(cfg, state) as url:
        seller = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        model, base_reply = reply(url, seller, max_tokens=16)
        assert model == "llm-endpoint/versions/1" and base_reply and base_reply != target

        deploy(tuned_model[0], cfg, state, run_id="run-tuned", metrics={})
        wait_for(lambda: served_version(url) == 2, timeout=120)
        assert reply(url, seller, max_tokens=16) == ("llm-endpoint/versions/2", target)
        # No system message: the tuned model's own persona (from its model card) is used.
        assert reply(url, seller[1:], max_tokens=16)[1] == target


# ---- authentication ----

def test_the_api_key_is_required_when_set_and_beyond_loopback(tmp_path, tiny_chat_model, monkeypatch, capsys):
    openai = pytest.importorskip("openai")
    cfg = DeployConfig()
    publish(cfg, tmp_path, tiny_chat_model.as_uri())
    with pytest.raises(ValueError, match=r"serve.host=0.0.0.0 is reachable from other machines: set an API key"):
        open_server(ServeConfig(host="0.0.0.0", port=0), cfg, tmp_path)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0", f"state_dir={tmp_path}"]) == 1
    assert "set an API key in $CALLTUNE_API_KEY" in capsys.readouterr().err

    monkeypatch.setenv("CALLTUNE_API_KEY", "s3cret-key")
    with running(cfg, tmp_path) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            r = request(url, "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert request(url, "/health").status_code == 200  # no key needed to ask whether it is up
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret-key", max_retries=0)
        assert client.chat.completions.create(model="llm-endpoint", messages=[{"role": "user", "content": "who ?"}],
                                              max_tokens=2).model == "llm-endpoint/versions/1"


# ---- Vertex endpoints, from Secret Manager ----

def test_serves_a_vertex_endpoint_from_secret_manager_and_follows_new_versions(tmp_path, vertex):
    pytest.importorskip("google.cloud.secretmanager_v1")
    with FakeSecretManager(lifetime_s=120) as sm:
        cfg = DeployConfig(registry="secret-manager", project="calltune-test", endpoint=sm.endpoint,
                           retry_backoff_s=0.01, timeout_s=5)
        publish(cfg, tmp_path, ENDPOINT.format(111))
        with running(cfg, tmp_path, vertex_base_url=vertex.endpoint) as url:
            conversation = [{"role": "system", "content": "You are Ana."}, {"role": "user", "content": "Hello?"},
                            {"role": "assistant", "content": "Who is it?"},
                            {"role": "user", "content": [{"type": "text", "text": "Bruno, from Acme."}]}]
            assert reply(url, conversation, max_tokens=20, temperature=0.5) == (
                "llm-endpoint/versions/1", "111 says: Bruno, from Acme.")
            sent = vertex.requests[-1]
            assert sent.path == f"/v1beta1/{ENDPOINT.format(111)}:generateContent"
            assert sent.body["systemInstruction"]["parts"] == [{"text": "You are Ana."}]
            assert [c["role"] for c in sent.body["contents"]] == ["user", "model", "user"]
            assert sent.body["generationConfig"] == {"maxOutputTokens": 20, "temperature": 0.5}

            vertex.inject(503)  # google-genai retries it
            assert reply(url, conversation)[1] == "111 says: Bruno, from Acme."
            assert [r.status for r in vertex.requests[-2:]] == [503, 200]
            # With no turn at all the customer answers the phone: the opening prompt stands in for the seller.
            assert reply(url, conversation[:1])[1] == "111 says: [The phone rings and the customer answers.]"

            assert publish(cfg, tmp_path, ENDPOINT.format(222)) == 2  # lands while serving
            wait_for(lambda: served_version(url) == 2)
            assert reply(url, conversation) == ("llm-endpoint/versions/2", "222 says: Bruno, from Acme.")

            rollback(cfg, tmp_path)  # version 3 holds version 1's endpoint again
            wait_for(lambda: served_version(url) == 3)
            assert reply(url, conversation) == ("llm-endpoint/versions/3", "111 says: Bruno, from Acme.")


def test_keeps_serving_through_a_registry_outage_and_a_model_that_fails_to_load(tmp_path, vertex, caplog):
    pytest.importorskip("google.cloud.secretmanager_v1")
    caplog.set_level(logging.INFO, logger="calltune.apps.serve")
    turn = [{"role": "user", "content": "Hi"}]
    with FakeSecretManager(lifetime_s=120) as sm:
        cfg = DeployConfig(registry="secret-manager", project="calltune-test", endpoint=sm.endpoint,
                           retry_backoff_s=0.01, timeout_s=0.2, max_retries=0)
        publish(cfg, tmp_path, ENDPOINT.format(111))
        with running(cfg, tmp_path, vertex_base_url=vertex.endpoint) as url:
            sm.hang_after(len(sm.requests))  # Secret Manager stops answering
            wait_for(lambda: "cannot read llm-endpoint's latest version" in caplog.text)
            failed = len(sm.requests)
            wait_for(lambda: len(sm.requests) >= failed + 3)  # three more checks, each failing
            assert caplog.text.count("cannot read llm-endpoint's latest version") == 1  # logged once, not per check
            assert reply(url, turn) == ("llm-endpoint/versions/1", "111 says: Hi")
            sm.hang_after(None)

            missing = tmp_path / "TOPSECRET-no-such-model"
            publish(cfg, tmp_path, missing.as_uri())
            wait_for(lambda: "version 2 failed to load" in caplog.text)
            assert reply(url, turn) == ("llm-endpoint/versions/1", "111 says: Hi")
            assert "TOPSECRET" not in caplog.text  # the error names the version, not its payload

            publish(cfg, tmp_path, ENDPOINT.format(333))
            wait_for(lambda: reply(url, turn) == ("llm-endpoint/versions/3", "333 says: Hi"))


@contextmanager
def cli_server(*args: str, program: tuple[str, ...] = ("-m", "calltune.cli")) -> Iterator[SimpleNamespace]:
    """`calltune serve ARGS` in its own process (`program`: how python runs the CLI) on a free port, answering once
    /health does; stopped with SIGINT when the block ends, its output and exit code then in `.out`, `.returncode`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, *program, "serve", "--port", str(port), *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    server = SimpleNamespace(url=f"http://127.0.0.1:{port}", out="", returncode=None)
    try:
        def up():
            assert proc.poll() is None, proc.stdout.read()
            try:
                return request(server.url, "/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=120)
        yield server
    finally:
        proc.send_signal(signal.SIGINT)
        server.out = proc.communicate(timeout=60)[0]
        server.returncode = proc.returncode


def test_cli_serve(tmp_path, vertex):
    cfg = DeployConfig()
    publish(cfg, tmp_path, ENDPOINT.format(111))
    with cli_server("--refresh-s", "1", "--vertex-base-url", vertex.endpoint, f"state_dir={tmp_path}") as server:
        assert reply(server.url, [{"role": "user", "content": "Hi"}]) == ("llm-endpoint/versions/1", "111 says: Hi")
    out = server.out
    assert server.returncode in (0, 130)
    assert "llm-endpoint version 1 at http://127.0.0.1" in out
    assert "POST /v1/chat/completions 200 tokens=1+1" in out and "version=1" in out
    assert ENDPOINT.format(111) not in out
