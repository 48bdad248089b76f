"""POST /v1/chat/completions: one `ServingChat`, a method per phase of a request.

read the body -> pick the served model (the one this request keeps, whatever lands meanwhile) -> check the asked
model and the sampling -> window the conversation as in training -> admit it (or 503 over the queue's capacity)
-> start generating off the event loop -> answer whole (504 past `serve.request_timeout_s`) or stream the pieces as
server-sent events. A request that ends in any way releases its place and, if still generating, stops its row.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from calltune.apps.serve.protocol import ApiError, ChatRequest, finish, model_id, sse, usage
from calltune.apps.serve.watcher import Served, Watcher
from calltune.config import ServeConfig
from calltune.runtime.encoding import PromptTooLong
from calltune.runtime.responders import Responder, Sampling, conversation

log = logging.getLogger(__name__)


def served_now(request: Request, watcher: Watcher) -> Served:
    """The model answering now (its version is recorded on the request for the log and the header); 503 without."""
    served = watcher.current
    if served is None:
        raise ApiError(503, watcher.problem or "no model is being served", "server_error", "model_unavailable",
                       headers={"Retry-After": str(max(1, round(watcher.refresh_s)))})
    request.state.version = served.version
    return served


def check_model(name: str, secret_id: str, served: Served) -> None:
    """A request may name the secret (the latest), the served version, or nothing."""
    current = model_id(secret_id, served.version)
    if name not in ("", secret_id, current):
        raise ApiError(404, f"model {name!r} is not served here; {current} is (or ask for {secret_id!r}, the latest)",
                       code="model_not_found", param="model")


def log_request(request: Request, status: int, started: float) -> None:
    """One line per request: method, path, status, tokens, time and version; never the conversation."""
    prompt, completion = getattr(request.state, "tokens", (0, 0))
    version = getattr(request.state, "version", None)
    log.info("%s %s %d tokens=%d+%d %.3fs version=%s", request.method, request.url.path, status, prompt, completion,
             time.monotonic() - started, "-" if version is None else version)


class ServingChat:
    """Chat completions against the watcher's current model, at most `max_batch + max_queue` requests at once."""

    def __init__(self, watcher: Watcher, cfg: ServeConfig):
        self.watcher, self.cfg, self.secret = watcher, cfg, watcher.cfg.secret_id
        self.active = 0  # requests generating or queued (one event loop: a plain counter)

    async def create(self, request: Request):
        started = time.monotonic()
        body = await self.read(request)
        served = served_now(request, self.watcher)
        check_model(body.model, self.secret, served)
        sampling = self.sampling(body)
        example = self.conversation(served.responder, body)
        # the customer's own earlier turns of the whole call, which guarded decoding checks the reply against
        earlier = [m.text() for m in body.messages if m.role == "assistant"]
        release = self.admit()
        try:
            if body.stream:
                return await self.stream(request, body, served, (example, earlier), sampling, started, release)
            return await self.complete(request, served, (example, earlier), sampling, release)
        except BaseException:
            release()
            raise

    async def read(self, request: Request) -> ChatRequest:
        """The body, at most `serve.max_body_bytes` (413), valid JSON (400) of the request's shape (400, naming the
        most specific field)."""
        limit = self.cfg.max_body_bytes
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

    def sampling(self, body: ChatRequest) -> Sampling:
        tokens = body.max_completion_tokens or body.max_tokens or self.cfg.default_max_tokens
        if tokens > self.cfg.max_tokens:
            raise ApiError(400, f"max_tokens {tokens} is over this server's limit of {self.cfg.max_tokens}",
                           param="max_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        if len(stop) > 4:
            raise ApiError(400, "at most 4 stop sequences", param="stop")
        return Sampling(tokens, body.temperature or 0.0, body.top_p or 1.0, body.seed, tuple(s for s in stop if s))

    @staticmethod
    def conversation(responder: Responder, body: ChatRequest) -> dict:
        """The windowed example: system messages joined (none: the model's own persona), user = seller, assistant =
        customer."""
        system = [m.text() for m in body.messages if m.role in ("system", "developer")]
        turns = [{"role": "seller" if m.role == "user" else "customer", "text": m.text()}
                 for m in body.messages if m.role in ("user", "assistant")]
        try:
            return conversation(responder, "\n".join(system) if system else None, turns)
        except ValueError as exc:
            raise ApiError(400, f"messages: {exc}", param="messages") from None

    def admit(self):
        """Take a place (503 when none is left); returns the function that gives it back, once."""
        if self.active >= self.cfg.max_batch + self.cfg.max_queue:
            raise ApiError(503, "the server is busy; retry later", "server_error", "busy", headers={"Retry-After": "1"})
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1

        return release

    @staticmethod
    async def start(responder: Responder, call: tuple[dict, list[str]], sampling: Sampling, cancel: threading.Event,
                    on_text=None):
        """The generation's future for `call` (the windowed example, the customer's earlier turns); tokenizing a
        long prompt takes a while, so not on the event loop."""
        example, earlier = call
        try:
            future = await asyncio.to_thread(responder.start, example, sampling, on_text, cancel.is_set, earlier)
        except PromptTooLong as exc:
            raise ApiError(400, f"{exc} (max_tokens {sampling.max_tokens} is reserved for the reply)",
                           code="context_length_exceeded", param="messages") from None
        return asyncio.wrap_future(future)

    def head(self, served: Served) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": model_id(self.secret, served.version), "system_fingerprint": None}

    async def complete(self, request: Request, served: Served, call: tuple[dict, list[str]], sampling: Sampling,
                       release) -> dict:
        cancel = threading.Event()
        done = await self.start(served.responder, call, sampling, cancel)
        try:
            result = await asyncio.wait_for(asyncio.shield(done), self.cfg.request_timeout_s)
        except TimeoutError:
            cancel.set()
            raise ApiError(504, f"no reply within {self.cfg.request_timeout_s:g} s", "server_error", "timeout") from None
        finally:
            release()
        request.state.tokens = (result.prompt_tokens, result.completion_tokens)
        return {**self.head(served), "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": result.text}, **finish(result),
            "logprobs": None}], "usage": usage(result)}

    async def stream(self, request: Request, body: ChatRequest, served: Served, call: tuple[dict, list[str]],
                     sampling: Sampling, started: float, release) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        pieces: asyncio.Queue[str] = asyncio.Queue()
        done = await self.start(served.responder, call, sampling, cancel,
                                lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text))
        request.state.logs_itself = True
        chunk = {**self.head(served), "object": "chat.completion.chunk"}
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        timeout = self.cfg.request_timeout_s

        def delta(content: dict, ended: dict | None = None) -> str:
            return sse({**chunk, "choices": [{"index": 0, "delta": content,
                                              **(ended or {"finish_reason": None}), "logprobs": None}]})

        async def events():
            status, deadline = 200, time.monotonic() + timeout
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
                        yield sse(ApiError(504, f"no complete reply within {timeout:g} s", "server_error",
                                           "timeout").body())
                        break
                    while not pieces.empty():
                        yield delta({"content": pieces.get_nowait()})
                    result = done.result()
                    request.state.tokens = (result.prompt_tokens, result.completion_tokens)
                    yield delta({}, finish(result))
                    if include_usage:
                        yield sse({**chunk, "choices": [], "usage": usage(result)})
                    break
                yield sse("[DONE]")
            except Exception:
                status = 500
                log.exception("serve: streaming failed (version %d)", served.version)
                yield sse(ApiError(500, "internal error; see the server log", "server_error").body())
            finally:
                cancel.set()  # finished, or the client went away: the row stops generating
                release()
                log_request(request, status, started)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Calltune-Version": str(served.version)})
