"""`calltune serve`: an OpenAI-compatible API for the model in the secret's latest version, on FastAPI and uvicorn.

POST /v1/chat/completions takes the conversation as OpenAI messages (system, then user = the seller and assistant =
the customer) and answers with the customer's next line, whole or streamed as server-sent events. GET /v1/models and
/v1/models/{id} name the served version (`<secret>/versions/<n>`, also answered to the bare secret id, which follows
the latest version); GET /health says whether a model is being served, and why not.

A `Watcher` thread re-reads the secret's `latest` every `serve.refresh_s` seconds: a new version's model is loaded
beside the current one and swapped in with one assignment, so a request is answered by the model it started with; a
disabled latest version stops being served. Conversations are windowed with the split settings recorded in the model
card (`calltune.runtime`), as in training. A local model answers concurrent requests in shared batches. Over the
queue's capacity a request gets 503 with Retry-After; over `serve.request_timeout_s`, 504. Every error is JSON in
OpenAI's shape, and the connection stays usable. With an API key in `$<serve.api_key_env>`, every /v1 route needs
`Authorization: Bearer KEY`; without one the server listens on loopback only.

`create_app` builds the app; another module adds its own routes with `app.include_router(router)` and protects them
with `dependencies=[AUTHENTICATED]`.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from calltune.backends.openai_generator import is_loopback  # one definition of loopback
from calltune.backends.registry import open_registry
from calltune.config import Config, DeployConfig, ServeConfig, SplitConfig
from calltune.runtime.encoding import PromptTooLong
from calltune.runtime.responders import (
    EndpointResponder,
    GeminiResponder,
    LocalResponder,
    Responder,
    Sampling,
    conversation,
)

log = logging.getLogger(__name__)


def load_responder(endpoint: str, cfg: ServeConfig | None = None, split: SplitConfig | None = None) -> Responder:
    """The model behind a secret's payload: a file:// model folder, or a Vertex AI resource name. `split`: the
    windowing of a model whose card does not record it (and of a Vertex endpoint)."""
    from calltune.deploy import model_path_from_endpoint

    cfg = cfg or ServeConfig()
    if endpoint.startswith("projects/"):
        from calltune.backends.vertex_endpoint import EndpointChat, is_endpoint

        chat = EndpointChat(endpoint, api_endpoint=cfg.vertex_base_url) if is_endpoint(endpoint) else None
        if chat and chat.is_vllm():  # deploy.target=vertex-endpoint: the vLLM container's chat completions
            return EndpointResponder(endpoint, split=split, max_concurrency=cfg.max_batch, chat=chat)
        return GeminiResponder(endpoint, cfg.vertex_base_url, split, max_concurrency=cfg.max_batch)
    return LocalResponder(model_path_from_endpoint(endpoint), split, max_batch=cfg.max_batch,
                          max_prompt_tokens=cfg.max_prompt_tokens, batch_wait_s=cfg.batch_wait_ms / 1000)


def redact(text: str, endpoint: str, name: str) -> str:
    """`text` with the secret's payload (and the folder it names) replaced by `name`: logs and errors name versions."""
    for s in sorted({endpoint, unquote(urlsplit(endpoint).path)} - {""}, key=len, reverse=True):
        text = text.replace(s, name)
    return text


@dataclass(frozen=True)
class Served:
    version: int
    endpoint: str
    responder: Responder


class Watcher:
    """Keeps `current` on the model of the secret's latest version, checking every `refresh_s` seconds. `current` is
    None while the latest version is disabled; `problem` says why."""

    def __init__(self, cfg: DeployConfig, state_dir: Path, refresh_s: float = 30.0,
                 load: Callable[[str], Responder] = load_responder):
        self.cfg, self.state_dir, self.refresh_s, self._load = cfg, state_dir, refresh_s, load
        self.current: Served | None = None
        self.problem = ""
        self._last: Served | None = None  # the model loaded last, kept while its version is disabled
        self._failed: int | None = None  # a version whose model did not load: not tried again
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="calltune-serve-watcher", daemon=True)

    def start(self) -> Served | None:
        """Load the latest version's model (errors raise here), then keep watching in the background."""
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error
        return self.current

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._last:
            self._last.responder.close()

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
                        log.error("serve: checking %s failed (%s)", self.cfg.secret_id, type(exc).__name__)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    def _warn(self, problem: str) -> None:
        if problem != self.problem:  # once per problem, not once per check
            log.warning("serve: %s", problem)
        self.problem = problem

    def _check(self, registry) -> None:
        secret = self.cfg.secret_id
        try:
            latest = registry.get_version(secret, "latest")
            if latest.state != "ENABLED":
                self.current = None  # in-flight requests finish on the responder they hold
                return self._warn(f"{secret} version {latest.version} (the latest) is disabled: nothing is served")
            version = latest.version
            known = self._last is not None and version in (self._last.version, self._failed)
            endpoint = None if known else registry.access(secret, version).decode("utf-8")
        except Exception as exc:  # registry unreachable...
            if self._last is None:
                raise
            return self._warn(f"cannot read {secret}'s latest version ({type(exc).__name__}); still serving "
                              f"version {self._last.version}")
        if endpoint is None:
            if version == self._last.version:
                self.current, self.problem = self._last, ""
            return
        name = f"<{secret} version {version}>"
        if self._last and endpoint == self._last.endpoint:  # a rollback or redeploy of the same model
            self.current = self._last = Served(version, endpoint, self._last.responder)
            self.problem = ""
            return
        log.info("serve: loading %s version %d", secret, version)
        start = time.monotonic()
        try:
            responder = self._load(endpoint)
        except Exception as exc:
            why = redact(f"{type(exc).__name__}: {exc}", endpoint, name)
            if self._last is None:
                raise ValueError(f"{secret} version {version} cannot be served ({why})") from None
            self._failed = version
            log.error("serve: %s version %d failed to load (%s); still serving version %d",
                      secret, version, why, self._last.version)
            return
        old, self.current = self._last, Served(version, endpoint, responder)  # one assignment: old or new
        self._last, self.problem = self.current, ""
        if old:
            old.responder.close()  # after the requests it already holds
        log.info("serve: now serving %s version %d (loaded in %.1f s)", secret, version, time.monotonic() - start)


# ---- the API ----

class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param, self.headers = \
            status, message, kind, code, param, headers


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
           param: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status,
                        headers=headers)


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat completion request that the server honours; other fields are ignored."""
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: Literal[1] = 1


def _authenticate(request: Request) -> None:
    key = request.app.state.api_key
    if key and not hmac.compare_digest(request.headers.get("authorization", "").encode(), f"Bearer {key}".encode()):
        raise ApiError(401, "missing or wrong API key: send it as `Authorization: Bearer KEY`", "authentication_error",
                       "invalid_api_key")


AUTHENTICATED = Depends(_authenticate)  # for routes another module adds: dependencies=[AUTHENTICATED]


def model_id(secret_id: str, version: int) -> str:
    return f"{secret_id}/versions/{version}"


def _served(request: Request) -> Served:
    watcher: Watcher = request.app.state.watcher
    served = watcher.current
    if served is None:
        raise ApiError(503, watcher.problem or "no model is being served", "server_error", "model_unavailable",
                       headers={"Retry-After": str(max(1, round(watcher.refresh_s)))})
    request.state.version = served.version
    return served


def _model_card(secret_id: str, served: Served, name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "calltune",
            "root": model_id(secret_id, served.version)}


def _check_model(name: str, secret_id: str, served: Served) -> None:
    current = model_id(secret_id, served.version)
    if name not in ("", secret_id, current):
        raise ApiError(404, f"model {name!r} is not served here; {current} is (or ask for {secret_id!r}, the latest)",
                       code="model_not_found", param="model")


async def _body(request: Request, limit: int) -> ChatRequest:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"request body over {limit} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ApiError(400, f"the body is not valid JSON ({type(exc).__name__})") from None
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = max(exc.errors(), key=lambda e: len(e["loc"]))  # the most specific of a union's alternatives
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"{where or 'body'}: {first['msg']}", param=where or None) from None


def _conversation(responder: Responder, body: ChatRequest) -> dict:
    """The windowed example: system messages joined (none: the model's own persona), user = seller, assistant =
    customer."""
    system = [m.text() for m in body.messages if m.role in ("system", "developer")]
    turns = [{"role": "seller" if m.role == "user" else "customer", "text": m.text()}
             for m in body.messages if m.role in ("user", "assistant")]
    try:
        return conversation(responder, "\n".join(system) if system else None, turns)
    except ValueError as exc:
        raise ApiError(400, f"messages: {exc}", param="messages") from None


def _sampling(body: ChatRequest, cfg: ServeConfig) -> Sampling:
    tokens = body.max_completion_tokens or body.max_tokens or cfg.default_max_tokens
    if tokens > cfg.max_tokens:
        raise ApiError(400, f"max_tokens {tokens} is over this server's limit of {cfg.max_tokens}", param="max_tokens")
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    if len(stop) > 4:
        raise ApiError(400, "at most 4 stop sequences", param="stop")
    return Sampling(tokens, body.temperature or 0.0, body.top_p or 1.0, body.seed, tuple(s for s in stop if s))


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def create_app(watcher: Watcher, cfg: ServeConfig | None = None, api_key: str = "") -> FastAPI:
    """The ASGI app over a started `Watcher`. `api_key` empty: no authentication."""
    cfg = cfg or ServeConfig()
    app = FastAPI(title="calltune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.watcher, app.state.cfg, app.state.api_key = watcher, cfg, api_key
    app.state.active = 0  # requests generating or queued (one event loop: a plain counter)
    secret = watcher.cfg.secret_id

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.kind, exc.code, exc.param, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # unknown route, wrong method
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}",
                      code="not_found" if exc.status_code == 404 else None, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error(400, str(exc.errors()[0].get("msg", "invalid request")))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.error("serve: %s %s failed (%s)", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return _error(500, "internal error; see the server log", "server_error")

    @app.middleware("http")
    async def access_log(request: Request, call_next):
        started = time.monotonic()
        response = await call_next(request)
        if getattr(request.state, "version", None) is not None:
            response.headers["X-Calltune-Version"] = str(request.state.version)
        if not getattr(request.state, "logs_itself", False):  # a stream logs when it ends
            _log_request(request, response.status_code, started)
        return response

    @app.get("/health")
    async def health():
        served = watcher.current
        if served is None:
            return JSONResponse({"status": "unavailable", "reason": watcher.problem or "no model loaded"}, 503)
        return {"status": "ok", "model": model_id(secret, served.version), "version": served.version}

    v1 = APIRouter(prefix="/v1", dependencies=[AUTHENTICATED])

    @v1.get("/models")
    async def models(request: Request):
        served = _served(request)
        return {"object": "list", "data": [_model_card(secret, served, model_id(secret, served.version)),
                                           _model_card(secret, served, secret)]}

    @v1.get("/models/{name:path}")
    async def model(name: str, request: Request):
        served = _served(request)
        _check_model(name, secret, served)
        return _model_card(secret, served, name)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        started = time.monotonic()
        body = await _body(request, cfg.max_body_bytes)
        served = _served(request)  # this request's model, whatever lands meanwhile
        _check_model(body.model, secret, served)
        sampling = _sampling(body, cfg)
        example = _conversation(served.responder, body)
        if app.state.active >= cfg.max_batch + cfg.max_queue:
            raise ApiError(503, "the server is busy; retry later", "server_error", "busy", headers={"Retry-After": "1"})
        app.state.active += 1
        released = False

        def release() -> None:  # once, whichever way the request ends
            nonlocal released
            if not released:
                released = True
                app.state.active -= 1

        try:
            return await _complete(request, body, served, example, sampling, started, release)
        except BaseException:
            release()
            raise

    async def _complete(request, body, served, example, sampling, started, release):
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        pieces: asyncio.Queue[str] = asyncio.Queue()
        on_text = (lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)) if body.stream else None
        try:  # tokenizing a long prompt takes a while: not on the event loop
            future = await asyncio.to_thread(served.responder.start, example, sampling, on_text, cancel.is_set)
        except PromptTooLong as exc:
            raise ApiError(400, f"{exc} (max_tokens {sampling.max_tokens} is reserved for the reply)",
                           code="context_length_exceeded", param="messages") from None
        done = asyncio.wrap_future(future)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": model_id(secret, served.version), "system_fingerprint": None}
        if not body.stream:
            try:
                result = await asyncio.wait_for(asyncio.shield(done), cfg.request_timeout_s)
            except TimeoutError:
                cancel.set()
                raise ApiError(504, f"no reply within {cfg.request_timeout_s:g} s", "server_error", "timeout") from None
            finally:
                release()
            request.state.tokens = (result.prompt_tokens, result.completion_tokens)
            return {**head, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason, "logprobs": None}], "usage": _usage(result)}
        request.state.logs_itself = True
        chunk = {**head, "object": "chat.completion.chunk"}
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def delta(content: dict, finish: str | None = None) -> str:
            return _sse({**chunk, "choices": [{"index": 0, "delta": content, "finish_reason": finish,
                                               "logprobs": None}]})

        async def events():
            status, deadline = 200, time.monotonic() + cfg.request_timeout_s
            try:
                yield delta({"role": "assistant", "content": ""})
                while True:
                    piece = asyncio.ensure_future(pieces.get())
                    finished, _ = await asyncio.wait({piece, done}, timeout=deadline - time.monotonic(),
                                                     return_when=asyncio.FIRST_COMPLETED)
                    if piece in finished:
                        yield delta({"content": piece.result()})
                        continue
                    piece.cancel()
                    if not finished:  # timed out
                        status = 504
                        cancel.set()
                        yield _sse({"error": {"message": f"no complete reply within {cfg.request_timeout_s:g} s",
                                              "type": "server_error", "param": None, "code": "timeout"}})
                        break
                    while not pieces.empty():
                        yield delta({"content": pieces.get_nowait()})
                    result = done.result()
                    request.state.tokens = (result.prompt_tokens, result.completion_tokens)
                    yield delta({}, result.finish_reason)
                    if include_usage:
                        yield _sse({**chunk, "choices": [], "usage": _usage(result)})
                    break
                yield _sse("[DONE]")
            except Exception:
                status = 500
                log.exception("serve: streaming failed (version %d)", served.version)
                yield _sse({"error": {"message": "internal error; see the server log", "type": "server_error",
                                      "param": None, "code": None}})
            finally:
                cancel.set()  # finished, or the client went away: the row stops generating
                release()
                _log_request(request, status, started)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Calltune-Version": str(served.version)})

    app.include_router(v1)
    return app


def _usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _log_request(request: Request, status: int, started: float) -> None:
    prompt, completion = getattr(request.state, "tokens", (0, 0))
    version = getattr(request.state, "version", None)
    log.info("%s %s %d tokens=%d+%d %.3fs version=%s", request.method, request.url.path, status, prompt, completion,
             time.monotonic() - started, "-" if version is None else version)


# ---- running it ----

def api_key_for(cfg: ServeConfig) -> str:
    """The API key from `$<serve.api_key_env>`; a non-loopback bind without one is refused."""
    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
    if not key and not is_loopback(cfg.host):
        raise ValueError(f"serve.host={cfg.host} is reachable from other machines: set an API key in "
                         f"${cfg.api_key_env or 'CALLTUNE_API_KEY'} (clients send it as `Authorization: Bearer KEY`), "
                         f"or listen on 127.0.0.1")
    return key


class Server:
    """uvicorn serving `app` on a socket bound here (port 0: a free one) in a background thread; `url`, `stop()`."""

    def __init__(self, app: FastAPI, cfg: ServeConfig):
        import uvicorn

        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((cfg.host, cfg.port))
        self.socket.listen(2048)  # many clients connecting at once are queued, not dropped
        host, port = self.socket.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, timeout_keep_alive=int(max(1, cfg.idle_timeout_s)),
                                                    log_config=None, access_log=False, lifespan="off"))
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve in this thread until interrupted (uvicorn handles SIGINT and SIGTERM)."""
        self.server.run(sockets=[self.socket])

    def start(self) -> Server:
        self.server.config.install_signal_handlers = False
        self.thread = threading.Thread(target=self.run, name="calltune-serve", daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread:
            self.thread.join()
        self.socket.close()


def open_server(cfg: ServeConfig, deploy: DeployConfig, state_dir: Path, split: SplitConfig | None = None,
                load: Callable[[str], Responder] | None = None, page: Config | None = None) -> tuple[Server, Watcher]:
    """Check the API key rule, load the latest version's model, start watching, bind; `Server.run()` or
    `.start()` answers. The caller stops both (`server.stop()`, `watcher.stop()`). `page`: the whole config, to
    serve the practice page (calltune.practice) at `/` too."""
    key = api_key_for(cfg)
    watcher = Watcher(deploy, state_dir, cfg.refresh_s, load or (lambda endpoint: load_responder(endpoint, cfg, split)))
    watcher.start()
    try:
        app = create_app(watcher, cfg, key)
        if page is not None:
            from calltune.practice import mount_practice

            mount_practice(app, page, [AUTHENTICATED])
        return Server(app, cfg), watcher
    except BaseException:
        watcher.stop()
        raise


@contextmanager
def serving(cfg: ServeConfig, deploy: DeployConfig, state_dir: Path, split: SplitConfig | None = None,
            load: Callable[[str], Responder] | None = None, page: Config | None = None) -> Iterator[str]:
    """`open_server`, answering from a background thread until the block ends; yields the base URL (for tests,
    benchmarks and anything else that embeds the server)."""
    server, watcher = open_server(cfg, deploy, state_dir, split, load, page)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
        watcher.stop()


def serve(cfg: ServeConfig, deploy: DeployConfig, state_dir: Path, split: SplitConfig | None = None,
          page: Config | None = None) -> None:
    """Serve until interrupted."""
    for name in ("httpx", "httpx2", "httpcore"):  # their request lines name the endpoint, the secret's payload
        logging.getLogger(name).setLevel(logging.WARNING)
    server, watcher = open_server(cfg, deploy, state_dir, split, page=page)
    try:
        served = watcher.current
        log.info("serve: %s %s at %s/v1 (checking for new versions every %g s%s)", deploy.secret_id,
                 f"version {served.version}" if served else f"({watcher.problem})", server.url, cfg.refresh_s,
                 "; API key required" if server.server.config.app.state.api_key else "")
        server.run()
    finally:
        server.socket.close()
        watcher.stop()
