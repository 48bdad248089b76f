"""`calltune serve`: an OpenAI-compatible chat endpoint for the model in the secret's latest version.

POST /v1/chat/completions takes the conversation as OpenAI messages (system, then user = the seller and
assistant = the customer) and answers with the customer's next line; GET /v1/models lists the one model served.
A background thread re-reads the secret's `latest` every `refresh_s` seconds (one small registry call); when a
new version appears, its model is loaded beside the current one and swapped in with one assignment, so requests
never wait for a load and each is answered by one model from start to end. If the new model fails to load, the
old one keeps serving and the failure is logged.

A `file://` endpoint is a local model folder (calltune.models). A Vertex AI resource name, an endpoint
(`projects/P/locations/L/endpoints/E`) or a tuned Gemini model (`projects/P/locations/L/models/M`), is served
through google-genai with Application Default Credentials.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import urlsplit

from calltune.backends.registry import open_registry
from calltune.config import DeployConfig, SplitConfig

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
_VERTEX = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/(endpoints|models)/[^/]+")


class Responder(Protocol):
    def reply(self, messages: list[dict], max_tokens: int, temperature: float) -> str: ...


class LocalResponder:
    """A local model folder; one generation at a time (the model's threads already use every core)."""

    def __init__(self, model_dir: Path):
        from calltune.models import load_model, read_model_card

        self.model, self.tokenizer = load_model(model_dir)
        self.system = (read_model_card(model_dir) or {}).get("system_prompt", "")
        self._lock = threading.Lock()

    def reply(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
        from calltune.chat import generate_reply

        if self.system and messages[0]["role"] != "system":  # the persona the model was tuned with
            messages = [{"role": "system", "content": self.system}, *messages]
        with self._lock:
            return generate_reply(self.model, self.tokenizer, messages, max_tokens, temperature)


class GeminiResponder:
    """A Vertex AI endpoint or tuned Gemini model, through google-genai (Vertex mode)."""

    def __init__(self, resource: str, base_url: str = ""):
        from google.genai import types

        from calltune.backends.genai import vertex_client

        match = _VERTEX.fullmatch(resource)
        if not match:
            raise ValueError(f"{resource!r} is not a Vertex AI endpoint or model resource name")
        self.resource, self._types = resource, types
        self._client = vertex_client(match["project"], match["location"], base_url, timeout=120_000,
                                     retry_options=types.HttpRetryOptions(attempts=5))

    def reply(self, messages: list[dict], max_tokens: int, temperature: float) -> str:
        from calltune.backends.genai import to_contents

        system, contents = to_contents(messages)
        response = self._client.models.generate_content(
            model=self.resource, contents=contents,
            config=self._types.GenerateContentConfig(system_instruction=system, max_output_tokens=max_tokens,
                                                     temperature=temperature))
        return (response.text or "").strip()


def load_responder(endpoint: str, vertex_base_url: str = "") -> Responder:
    """The model behind a secret's payload: a file:// model folder, or a Vertex AI resource name."""
    from calltune.deploy import model_path_from_endpoint

    if endpoint.startswith("projects/"):
        return GeminiResponder(endpoint, vertex_base_url)
    return LocalResponder(model_path_from_endpoint(endpoint))


@dataclass(frozen=True)
class Served:
    version: int
    endpoint: str
    responder: Responder


class Watcher:
    """Keeps `current` on the model of the secret's latest version, checking every `refresh_s` seconds."""

    def __init__(self, cfg: DeployConfig, state_dir: Path, refresh_s: float = 30.0,
                 load: Callable[[str], Responder] = load_responder):
        self.cfg, self.state_dir, self.refresh_s, self._load = cfg, state_dir, refresh_s, load
        self.current: Served | None = None
        self._failed: int | None = None  # a version whose model did not load: not tried again
        self._problem = ""
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="calltune-serve-watcher", daemon=True)

    def start(self) -> Served:
        """Load the latest version's model (errors raise here), then keep watching in the background."""
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error
        return self.current

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # The registry lives in this thread (a SQLite connection stays in the thread that opened it).
        try:
            registry = open_registry(self.cfg, self.state_dir)
            with closing(registry):
                self._check(registry)
                self._ready.set()
                while not self._stop.wait(self.refresh_s):
                    try:
                        self._check(registry)
                    except Exception as exc:  # never let the watcher die: the current model keeps serving
                        log.exception("serve: checking %s failed: %s", self.cfg.secret_id, exc)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def _warn(self, problem: str) -> None:
        if problem != self._problem:  # once per problem, not once per check
            log.warning("serve: %s; still serving version %d", problem, self.current.version)
        self._problem = problem

    def _check(self, registry) -> None:
        secret = self.cfg.secret_id
        try:
            version = registry.get_version(secret, "latest").version
            known = self.current is not None and version in (self.current.version, self._failed)
            endpoint = None if known else registry.access(secret, version).decode("utf-8")
        except Exception as exc:  # registry unreachable, latest disabled...
            if self.current is None:
                raise
            return self._warn(f"cannot read {secret}'s latest version ({exc})")
        self._problem = ""
        if endpoint is None:
            return
        if self.current and endpoint == self.current.endpoint:  # a rollback or redeploy of the same model
            self.current = Served(version, endpoint, self.current.responder)
            return
        log.info("serve: loading %s version %d", secret, version)
        start = time.monotonic()
        try:
            responder = self._load(endpoint)
        except Exception as exc:
            if self.current is None:
                raise
            self._failed = version
            log.error("serve: %s version %d failed to load (%s); still serving version %d",
                      secret, version, exc, self.current.version)
            return
        self.current = Served(version, endpoint, responder)  # one assignment: requests see the old or the new
        log.info("serve: now serving %s version %d (loaded in %.1f s)", secret, version, time.monotonic() - start)


def chat_messages(body: dict, split: SplitConfig) -> list[dict]:
    """The request's messages as {role, content}: system first, then the last `history_turns` turns before
    the seller's line, as in training. With no turn at all, the opening prompt stands in for the seller."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ValueError("messages must be a non-empty list")
    system, turns = [], []
    for i, m in enumerate(raw):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
        if isinstance(content, list):  # content parts: only text is understood
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or a list of text parts")
        if role in ("system", "developer"):
            system.append(content)
        elif role in ("user", "assistant"):
            turns.append({"role": role, "content": content})
        else:
            raise ValueError(f"messages[{i}].role must be system, user (the seller) or assistant (the customer), "
                             f"not {role!r}")
    if not turns and split.opening_prompt:
        turns = [{"role": "user", "content": split.opening_prompt}]  # the customer answers the phone
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("the last message must be the seller's (role user): the reply is the customer's next line")
    turns = turns[-(split.history_turns + 1):]
    return ([{"role": "system", "content": "\n".join(system)}] if system else []) + turns


def _options(body: dict, max_tokens: int) -> tuple[int, float]:
    if body.get("stream"):
        raise ValueError("stream is not supported")
    if body.get("n", 1) != 1:
        raise ValueError("only n=1 is supported")
    tokens = next((body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None), min(64, max_tokens))
    temperature = body.get("temperature")
    temperature = 0.0 if temperature is None else temperature
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError("max_tokens must be a positive integer")
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise ValueError("temperature must be a number from 0 to 2")
    return min(tokens, max_tokens), float(temperature)


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], watcher: Watcher, max_tokens: int = 256):
        self.watcher, self.max_tokens, self.split = watcher, max_tokens, SplitConfig()
        super().__init__(address, _Handler)

    def server_close(self) -> None:
        super().server_close()
        self.watcher.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    server: ChatServer

    def _send(self, status: int, payload: dict, version: int | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if version is not None:
            self.send_header("X-Calltune-Version", str(version))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

    def do_GET(self) -> None:
        served, secret = self.server.watcher.current, self.server.watcher.cfg.secret_id
        if urlsplit(self.path).path.rstrip("/") != "/v1/models":
            return self._error(404, f"no route GET {self.path}")
        self._send(200, {"object": "list", "data": [{"id": secret, "object": "model", "created": 0,
                                                     "owned_by": "calltune"}]}, served.version)

    def do_POST(self) -> None:
        if urlsplit(self.path).path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route POST {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self._error(413, f"request body over {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            messages = chat_messages(body, self.server.split)
            max_tokens, temperature = _options(body, self.server.max_tokens)
        except ValueError as exc:
            return self._error(400, str(exc))
        served = self.server.watcher.current  # this request's model, whatever lands meanwhile
        try:
            text = served.responder.reply(messages, max_tokens, temperature)
        except Exception:
            log.exception("serve: generation failed (version %d)", served.version)
            return self._error(500, "generation failed; see the server log", "server_error")
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": f"{self.server.watcher.cfg.secret_id}/versions/{served.version}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None}]}, served.version)

    def log_message(self, format: str, *args) -> None:  # request lines go to logging, not stderr
        log.debug("serve: %s " + format, self.address_string(), *args)


def open_server(cfg: DeployConfig, state_dir: Path, host: str = "127.0.0.1", port: int = 8000,
                refresh_s: float = 30.0, vertex_base_url: str = "", max_tokens: int = 256) -> ChatServer:
    """Load the latest version's model, start watching for new versions and listen; `serve_forever()` answers,
    `server_close()` stops the watching too."""
    watcher = Watcher(cfg, state_dir, refresh_s, lambda endpoint: load_responder(endpoint, vertex_base_url))
    watcher.start()
    try:
        return ChatServer((host, port), watcher, max_tokens)
    except BaseException:
        watcher.stop()
        raise


def serve(cfg: DeployConfig, state_dir: Path, host: str = "127.0.0.1", port: int = 8000, refresh_s: float = 30.0,
          vertex_base_url: str = "", max_tokens: int = 256) -> None:
    """Serve until interrupted."""
    with open_server(cfg, state_dir, host, port, refresh_s, vertex_base_url, max_tokens) as server:
        log.info("serve: %s version %d at http://%s:%d/v1 (checking for new versions every %g s)",
                 cfg.secret_id, server.watcher.current.version, *server.server_address[:2], refresh_s)
        server.serve_forever()
