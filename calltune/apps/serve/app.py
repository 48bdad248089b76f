"""`calltune serve`: the FastAPI app, its routes and its lifetime (uvicorn on a socket bound here).

POST /v1/chat/completions (calltune.apps.serve.chat) answers as the customer model of the secret's latest version
(calltune.apps.serve.watcher); GET /v1/models and /v1/models/{id} name the served version (`<secret>/versions/<n>`,
also answered to the bare secret id, which follows the latest version); GET /health says whether a model is being
served, and why not. Every error is JSON in OpenAI's shape (calltune.apps.serve.protocol.ApiError), and the
connection stays usable. Every /v1 route knows who is calling (calltune.apps.serve.auth: a seller's key, the
operator's, or the verified IAP identity, by serve.auth). With the whole config (`page`), the practice page
(calltune.apps.practice) is served at `/`, its JSON endpoints behind the same sign-in, its history in the practice
history's database (serve.database_url), which instances of the server may share.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from calltune.apps.practice import mount_practice
from calltune.apps.serve.auth import AUTHENTICATED, Authenticator
from calltune.apps.serve.chat import ServingChat, check_model, log_request, served_now
from calltune.apps.serve.protocol import ApiError, model_id, model_object
from calltune.apps.serve.watcher import Watcher, load_responder
from calltune.coaching.history import open_history
from calltune.config import Config, DeployConfig, ServeConfig, SplitConfig
from calltune.runtime.responders import Responder

log = logging.getLogger(__name__)
DB_RETRY_S = 5  # Retry-After of a 503 while the practice history's database is unreachable


def create_app(watcher: Watcher, cfg: ServeConfig | None = None, auth: Authenticator | None = None) -> FastAPI:
    """The ASGI app over a started `Watcher`. `auth` None: nobody is asked (everyone is the operator)."""
    cfg = cfg or ServeConfig()
    app = FastAPI(title="calltune", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.watcher, app.state.cfg = watcher, cfg
    app.state.auth = auth or Authenticator(cfg.model_copy(update={"auth": "none", "host": "127.0.0.1"}), None)
    app.state.on_stop = []  # what the server closes when it stops (the practice history's connections)
    chat = app.state.chat = ServingChat(watcher, cfg)
    secret = watcher.cfg.secret_id

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # unknown route, wrong method
        return ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}",
                        code="not_found" if exc.status_code == 404 else None, headers=exc.headers).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return ApiError(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where or None).response()

    async def database_lost(request: Request, exc: Exception):
        # The type only: a driver's message may quote what it was sending (hide_parameters keeps SQLAlchemy's out).
        log.error("serve: %s %s: the practice history's database is unreachable (%s)", request.method,
                  request.url.path, type(exc).__name__)
        return ApiError(503, "the practice history's database is unreachable; your call is kept: retry shortly",
                        "server_error", "database_unavailable", headers={"Retry-After": str(DB_RETRY_S)}).response()

    for lost in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(lost, database_lost)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.error("serve: %s %s failed (%s)", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return ApiError(500, "internal error; see the server log", "server_error").response()

    @app.middleware("http")
    async def access_log(request: Request, call_next):
        started = time.monotonic()
        response = await call_next(request)
        if getattr(request.state, "version", None) is not None:
            response.headers["X-Calltune-Version"] = str(request.state.version)
        if not getattr(request.state, "logs_itself", False):  # a stream logs when it ends
            log_request(request, response.status_code, started)
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
        current = model_id(secret, served_now(request, watcher).version)
        return {"object": "list", "data": [model_object(current, current), model_object(secret, current)]}

    @v1.get("/models/{name:path}")
    async def model(name: str, request: Request):
        served = served_now(request, watcher)
        check_model(name, secret, served)
        return model_object(name, model_id(secret, served.version))

    v1.add_api_route("/chat/completions", chat.create, methods=["POST"])
    app.include_router(v1)
    return app


def shared_key(cfg: ServeConfig) -> str:
    """The operator's key from `$<serve.api_key_env>` (empty: none)."""
    return os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""


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
        self.app = app
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
        self.close()

    def close(self) -> None:
        self.socket.close()
        for close in self.app.state.on_stop:
            close()


def open_server(cfg: ServeConfig, deploy: DeployConfig, state_dir: Path, split: SplitConfig | None = None,
                load: Callable[[str], Responder] | None = None, page: Config | None = None) -> tuple[Server, Watcher]:
    """Open the practice history (its schema migrated), check the sign-in rules, load the latest version's model,
    start watching, bind; `Server.run()` or `.start()` answers. The caller stops both (`server.stop()`,
    `watcher.stop()`). `page`: the whole config, to serve the practice page (calltune.apps.practice) at `/` too."""
    store = open_history(cfg.database_url, state_dir) if page is not None or cfg.auth != "none" else None
    try:
        auth = Authenticator(cfg, store, shared_key(cfg))
        watcher = Watcher(deploy, state_dir, cfg.refresh_s,
                          load or (lambda endpoint: load_responder(endpoint, cfg, split)))
        watcher.start()
    except BaseException:
        if store is not None:
            store.close()
        raise
    try:
        app = create_app(watcher, cfg, auth)
        if store is not None:
            app.state.on_stop.append(store.close)
        if page is not None:
            mount_practice(app, page, store, [AUTHENTICATED])
        return Server(app, cfg), watcher
    except BaseException:
        watcher.stop()
        if store is not None:
            store.close()
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
                 f"; sign-in: {cfg.auth}")
        server.run()
    finally:
        server.close()
        watcher.stop()
