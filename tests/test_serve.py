"""`calltune serve`: real HTTP clients (urllib, and the openai package when installed) against the server, which
follows the secret's latest version without a restart. Vertex endpoints go through the real google-genai client to
a loopback generateContent fake; local models are the session's base and tuned models (tests/conftest.py)."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from conftest import SYSTEM, TINY_DIALOGUES
from fakes.secret_manager import FakeSecretManager
from fakes.vertex import FakeVertex

from calltune.backends.registry import open_registry
from calltune.config import DeployConfig
from calltune.deploy import deploy, rollback
from calltune.serve import open_server

ROOT = Path(__file__).resolve().parents[1]
ENDPOINT = "projects/calltune-test/locations/us-central1/endpoints/{}"


@pytest.fixture
def vertex():
    pytest.importorskip("google.genai")
    with FakeVertex(lifetime_s=120) as f:
        yield f


def publish(cfg, state, endpoint: str) -> int:
    with closing(open_registry(cfg, state)) as reg:
        return reg.add_version(cfg.secret_id, endpoint.encode()).version


@contextmanager
def running(cfg, state, **kw):
    server = open_server(cfg, state, port=0, refresh_s=0.05, **kw)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def request(url: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def chat(url: str, messages: list[dict], **kw) -> tuple[int, dict]:
    return request(url, "/v1/chat/completions", json.dumps({"model": "llm-endpoint", "messages": messages, **kw}).encode())


def reply(url: str, messages: list[dict], **kw) -> tuple[str, str]:
    """(served model, the customer's reply)."""
    status, body = chat(url, messages, **kw)
    assert status == 200, body
    return body["model"], body["choices"][0]["message"]["content"]


def served_version(url: str) -> int:
    with urllib.request.urlopen(url + "/v1/models", timeout=60) as r:
        return int(r.headers["X-Calltune-Version"])


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


def test_serves_a_vertex_endpoint_from_secret_manager_and_follows_new_versions(tmp_path, vertex):
    pytest.importorskip("google.cloud.secretmanager_v1")
    with FakeSecretManager(lifetime_s=120) as sm:
        cfg = DeployConfig(registry="secret-manager", project="calltune-test", endpoint=sm.endpoint,
                           retry_backoff_s=0.01, timeout_s=5)
        publish(cfg, tmp_path, ENDPOINT.format(111))
        with running(cfg, tmp_path, vertex_base_url=vertex.endpoint) as url:
            assert request(url, "/v1/models") == (200, {"object": "list", "data": [
                {"id": "llm-endpoint", "object": "model", "created": 0, "owned_by": "calltune"}]})
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

            assert publish(cfg, tmp_path, ENDPOINT.format(222)) == 2  # lands while serving
            wait_for(lambda: served_version(url) == 2)
            assert reply(url, conversation) == ("llm-endpoint/versions/2", "222 says: Bruno, from Acme.")

            rollback(cfg, tmp_path)  # version 3 holds version 1's endpoint again
            wait_for(lambda: served_version(url) == 3)
            assert reply(url, conversation) == ("llm-endpoint/versions/3", "111 says: Bruno, from Acme.")


def test_keeps_serving_through_a_registry_outage_and_a_model_that_fails_to_load(tmp_path, vertex, caplog):
    pytest.importorskip("google.cloud.secretmanager_v1")
    caplog.set_level(logging.INFO, logger="calltune.serve")
    turn = [{"role": "user", "content": "Hi"}]
    with FakeSecretManager(lifetime_s=120) as sm:
        cfg = DeployConfig(registry="secret-manager", project="calltune-test", endpoint=sm.endpoint,
                           retry_backoff_s=0.01, timeout_s=0.2, max_retries=0)
        publish(cfg, tmp_path, ENDPOINT.format(111))
        with running(cfg, tmp_path, vertex_base_url=vertex.endpoint) as url:
            sm.hang_after(len(sm.requests))  # Secret Manager stops answering
            wait_for(lambda: "cannot read llm-endpoint's latest version" in caplog.text)
            time.sleep(0.5)  # several more failed checks
            assert caplog.text.count("cannot read llm-endpoint's latest version") == 1  # logged once, not per check
            assert reply(url, turn) == ("llm-endpoint/versions/1", "111 says: Hi")
            sm.hang_after(None)

            publish(cfg, tmp_path, (tmp_path / "no-such-model").as_uri())
            wait_for(lambda: "version 2 failed to load" in caplog.text)
            assert reply(url, turn) == ("llm-endpoint/versions/1", "111 says: Hi")

            publish(cfg, tmp_path, ENDPOINT.format(333))
            wait_for(lambda: reply(url, turn) == ("llm-endpoint/versions/3", "333 says: Hi"))


def test_bad_requests_get_openai_style_errors(tmp_path, vertex):
    cfg = DeployConfig()
    publish(cfg, tmp_path, ENDPOINT.format(111))
    with running(cfg, tmp_path, vertex_base_url=vertex.endpoint) as url:
        for messages, kw, message in [
            ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], {}, "last message must be the seller's"),
            ([{"role": "tool", "content": "x"}], {}, "messages[0].role must be"),
            ([{"role": "user", "content": 5}], {}, "messages[0].content must be"),
            ([], {}, "non-empty list"),
            ([{"role": "user", "content": "Hi"}], {"stream": True}, "stream is not supported"),
            ([{"role": "user", "content": "Hi"}], {"max_tokens": 0}, "max_tokens must be"),
        ]:
            status, body = chat(url, messages, **kw)
            assert status == 400 and body["error"]["type"] == "invalid_request_error", body
            assert message in body["error"]["message"]
        assert request(url, "/v1/chat/completions", b"{not json")[0] == 400
        assert request(url, "/v1/embeddings", b"{}")[0] == 404
        # With no turn at all the customer answers the phone: the opening prompt stands in for the seller.
        assert reply(url, [{"role": "system", "content": "You are Ana."}])[1] == \
            "111 says: [The phone rings and the customer answers.]"


def test_openai_client(tmp_path, vertex):
    openai = pytest.importorskip("openai")
    cfg = DeployConfig()
    publish(cfg, tmp_path, ENDPOINT.format(111))
    with running(cfg, tmp_path, vertex_base_url=vertex.endpoint) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["llm-endpoint"]
        out = client.chat.completions.create(model="llm-endpoint", messages=[{"role": "user", "content": "Hi"}])
        assert out.choices[0].message.content == "111 says: Hi" and out.model == "llm-endpoint/versions/1"


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


def test_cli_serve(tmp_path, vertex):
    cfg = DeployConfig()
    publish(cfg, tmp_path, ENDPOINT.format(111))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "calltune.cli", "serve", "--port", str(port), "--refresh-s", "1",
                             "--vertex-base-url", vertex.endpoint, f"state_dir={tmp_path}"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            assert proc.poll() is None, proc.stdout.read()
            try:
                return request(url, "/v1/models")[0] == 200
            except OSError:
                return False

        wait_for(up, timeout=60)
        assert reply(url, [{"role": "user", "content": "Hi"}]) == ("llm-endpoint/versions/1", "111 says: Hi")
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 130
    assert "llm-endpoint version 1 at http://127.0.0.1" in out
