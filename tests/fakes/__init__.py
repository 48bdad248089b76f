"""Loopback fakes of Google Cloud REST APIs, for tests that drive the real client libraries.

A fake is a stdlib ThreadingHTTPServer on 127.0.0.1 (port 0: the OS picks a free one) served from a daemon
thread. Point a client at it with `client_options={"api_endpoint": fake.endpoint}`, `transport="rest"` and
`AnonymousCredentials()`. A subclass lists its `routes` (HTTP method, path regex, handler method name);
a handler gets the path match and the JSON body and returns (status, JSON object).

Faults are injected per request, before the handler runs: an HTTP status (429, 500, 503, 504...) answered in
Google's JSON error shape, or HANG (no answer until the fake stops, so the client's own timeout fires).
`inject(...)` queues faults for the next requests in order; `fail_when(predicate, fault)` applies one to every
request whose body matches, until `heal()` (`every(n)`: every n-th request); `hang_after(n)` holds every request
after the n-th.

`latency_s` delays every answer (to see requests overlap). One HTTP handler serves every fake: inside a handler,
`query()` and `_header(name)` read the request being handled; a handler may answer `Raw` bytes instead of JSON, and
a subclass widens `_answer` for other shapes.

Bounded: the fake stops itself after `lifetime_s`, answers 503 past `max_requests`, and refuses bodies over
`max_body` bytes. Every request is recorded (`requests`), as is the peak number in flight (`peak_in_flight`).
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

HANG = "hang"
Fault = int | str  # an HTTP status, or HANG

# google.rpc.Code names for the statuses a fake answers (the client maps them back to exceptions)
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
                501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class ApiError(Exception):
    """Raised by a handler to answer with a Google JSON error; `name`: its google.rpc status, where the HTTP status
    stands for several (400: INVALID_ARGUMENT or FAILED_PRECONDITION...)."""

    def __init__(self, status: int, message: str, name: str = ""):
        super().__init__(message)
        self.status, self.message, self.name = status, message, name


class Raw(NamedTuple):
    """A non-JSON answer."""
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    status: int | None = None  # None: never answered (hung)


class FakeGoogleApi:
    routes: list[tuple[str, str, str]] = []  # (method, path regex, handler method name)

    def __init__(self, *, latency_s: float = 0.0, lifetime_s: float = 120, max_requests: int = 100_000,
                 max_body: int = 16 << 20):
        self.latency_s, self.max_requests, self.max_body = latency_s, max_requests, max_body
        self._routes = [(m, re.compile(p), getattr(self, h)) for m, p, h in self.routes]
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._rules: list[tuple[Callable[[Any], bool], Fault]] = []
        self._hang_after: int | None = None
        self._local = threading.local()  # the request being handled, per server thread
        self._released = threading.Event()
        self.requests: list[Recorded] = []
        self.in_flight = self.peak_in_flight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name=type(self).__name__, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    # ---- lifecycle ----
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeGoogleApi:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self._released.set()  # let hung handlers go
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- fault injection ----
    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def fail_when(self, predicate: Callable[[Any], bool], fault: Fault) -> None:
        with self._lock:
            self._rules.append((predicate, fault))

    def heal(self) -> None:
        """Stop the `fail_when` faults: the service answers normally again."""
        with self._lock:
            self._rules.clear()

    def hang_after(self, n: int | None) -> None:
        with self._lock:
            self._hang_after = n

    def answered(self, status: int = 200) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.status == status]

    # ---- serving ----
    def _next_fault(self, index: int, body: Any) -> Fault | None:
        with self._lock:
            if self._hang_after is not None and index >= self._hang_after:
                return HANG
            for predicate, fault in self._rules:
                if predicate(body):
                    return fault
            return self._faults.popleft() if self._faults else None

    def _serve(self, method: str, path: str, raw: bytes) -> tuple[int, Any] | None:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return 400, _error(400, "body is not JSON")
        record = Recorded(method, path, body)
        with self._lock:
            index = len(self.requests)
            self.requests.append(record)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if index >= self.max_requests:
                status, payload = 503, _error(503, f"fake: more than {self.max_requests} requests")
            else:
                fault = self._next_fault(index, body)
                if fault == HANG:
                    self._released.wait()
                    return None
                time.sleep(self.latency_s)
                if fault is not None:
                    status, payload = fault, _error(fault, f"fake: injected {fault}")
                else:
                    status, payload = self._dispatch(method, path, body)
            record.status = status
            return status, payload
        finally:
            with self._lock:
                self.in_flight -= 1

    def _dispatch(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        for m, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if m == method and match:
                try:
                    return 200, handler(match, body)
                except ApiError as exc:
                    return exc.status, _error(exc.status, exc.message, exc.name)
        return 404, _error(404, f"fake: no route for {method} {path}")

    # ---- the request being handled (inside a handler) ----
    def query(self) -> dict[str, str]:
        """The query string of the request being handled (last value of each key)."""
        return {k: v[-1] for k, v in self._local.query.items()}

    def _header(self, name: str) -> str:
        return self._local.headers.get(name, "")

    def _answer(self, status: int, payload: Any) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of a handler's result: JSON, or `Raw` bytes. Subclasses add other shapes."""
        if isinstance(payload, Raw):
            return status, {"Content-Type": payload.content_type}, payload.body
        return status, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(payload).encode()

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

            def _handle(self):
                url = urlsplit(self.path)
                fake._local.query = parse_qs(url.query, keep_blank_values=True)
                fake._local.headers = self.headers  # case-insensitive
                length = int(self.headers.get("Content-Length") or 0)
                if length > fake.max_body:
                    result = 413, _error(413, f"fake: body over {fake.max_body} bytes")
                    self.close_connection = True
                else:
                    result = fake._serve(self.command, url.path, self.rfile.read(length))
                if result is None:  # hung, or the answer is lost: drop the connection without an answer
                    self.close_connection = True
                    return
                status, headers, data = fake._answer(*result)
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timed out) first
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args):  # quiet
                pass

        return Handler


def every(n: int) -> Callable[[Any], bool]:
    """A `fail_when` predicate that holds for every n-th request (the n-th, the 2n-th, ...), whatever it asks."""
    count = iter(range(1, 1 << 62))
    return lambda body: next(count) % n == 0


def _error(status: int, message: str, name: str = "") -> dict:
    return {"error": {"code": status, "message": message, "status": name or STATUS_NAMES.get(status, "UNKNOWN")}}
