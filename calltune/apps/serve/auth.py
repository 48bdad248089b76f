"""Who is calling `calltune serve`: one FastAPI dependency (`caller`) resolves every request to a `Caller`, by
`serve.auth`:

- `keys`: `Authorization: Bearer KEY`, a seller's or a manager's key (`calltune users add`, kept as hashes in the
  practice history's database, so every instance sees it), or the operator's shared key in `$<serve.api_key_env>`
  (the single key of earlier versions, kept working: it acts as the operator, who files calls under any typed name
  and sees every seller). With neither a shared key nor any key issued, a loopback server asks for none, as before.
  The issued keys are re-read every `serve.refresh_s`: a revoked key stops working within it.
- `iap`: behind Identity-Aware Proxy on Cloud Run, the identity is the signed `X-Goog-IAP-JWT-Assertion`, verified
  against IAP's public keys and `serve.iap_audience` (calltune.apps.serve.iap), never the unsigned email header.
  The verified email is the seller's name; a manager is an email added with `calltune users add EMAIL --manager`.
- `none`: nobody is asked (loopback only): everyone is the operator.
"""
from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, Request

from calltune.apps.serve.protocol import ApiError
from calltune.coaching.history import PracticeHistory, key_hash
from calltune.config import ServeConfig
from calltune.core.net import is_loopback

IAP_HEADER = "x-goog-iap-jwt-assertion"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a signed-in seller or manager by name, or the operator (name "": no sign-in, or the
    shared key), who may act for any seller."""
    name: str
    manager: bool


OPERATOR = Caller("", True)


def _refused(message: str) -> ApiError:
    return ApiError(401, message, "authentication_error", "invalid_api_key")


class Authenticator:
    """Resolves requests to callers for one server; `clock` (seconds) decides when the issued keys are re-read."""

    def __init__(self, cfg: ServeConfig, store: PracticeHistory | None, shared_key: str = "",
                 clock: Callable[[], float] = time.monotonic):
        self.cfg, self.store, self.shared_key, self.clock = cfg, store, shared_key, clock
        self._keys: dict[str, tuple[str, bool, bool]] = {}
        self._read_at: float | None = None
        self._lock = threading.Lock()
        if cfg.auth == "none" and not is_loopback(cfg.host):
            raise ValueError(f"serve.host={cfg.host} is reachable from other machines: serve.auth=none is for "
                             f"loopback only (use keys or iap), or listen on 127.0.0.1")
        if cfg.auth == "iap":
            if not cfg.iap_audience:
                raise ValueError("serve.auth=iap needs serve.iap_audience: /projects/NUMBER/locations/REGION/services/"
                                 "SERVICE (IAP on the Cloud Run service) or /projects/NUMBER/global/backendServices/ID "
                                 "(IAP on a load balancer)")
            from calltune.apps.serve.iap import verify_iap_assertion  # noqa: F401 - fails at start, not per request
        if cfg.auth == "keys" and not is_loopback(cfg.host) and not shared_key \
                and not any(valid for _, _, valid in self.keys().values()):
            raise ValueError(f"serve.host={cfg.host} is reachable from other machines: set an API key in "
                             f"${cfg.api_key_env or 'CALLTUNE_API_KEY'} (clients send it as `Authorization: Bearer "
                             f"KEY`), or issue the sellers' keys with `calltune users add NAME`, or listen on 127.0.0.1")

    def keys(self) -> dict[str, tuple[str, bool, bool]]:
        """The keys ever issued ({hash: (name, manager, still valid)}), as read at most `serve.refresh_s` ago."""
        with self._lock:
            now = self.clock()
            if self._read_at is None or now - self._read_at >= self.cfg.refresh_s:
                self._keys = self.store.keys() if self.store is not None else {}
                self._read_at = now
            return self._keys

    def caller(self, request: Request) -> Caller:
        if self.cfg.auth == "none":
            return OPERATOR
        if self.cfg.auth == "iap":
            return self._iap(request)
        sent = request.headers.get("authorization", "")
        if self.shared_key and hmac.compare_digest(sent.encode(), f"Bearer {self.shared_key}".encode()):
            return OPERATOR
        keys = self.keys()
        scheme, _, token = sent.partition(" ")
        found = keys.get(key_hash(token.strip())) if scheme.lower() == "bearer" and token.strip() else None
        if found and found[2]:
            return Caller(found[0], found[1])
        if not self.shared_key and not keys and is_loopback(self.cfg.host):
            return OPERATOR  # no key was ever issued: a loopback server asks for none, as before keys existed
        raise _refused("missing or wrong API key: send it as `Authorization: Bearer KEY`")

    def _iap(self, request: Request) -> Caller:
        from calltune.apps.serve.iap import IapKeysUnavailable, verify_iap_assertion

        assertion = request.headers.get(IAP_HEADER, "")
        if not assertion:
            raise _refused("no IAP assertion: this server is reached through Identity-Aware Proxy only")
        try:
            email = verify_iap_assertion(assertion, audience=self.cfg.iap_audience, certs_url=self.cfg.iap_certs_url)
        except ValueError as exc:  # expired, another audience, unsigned, a key IAP does not publish...
            raise _refused(f"the IAP assertion was refused: {exc}") from None
        except IapKeysUnavailable as exc:  # our side, not the caller's: they may retry
            raise ApiError(503, f"sign-in cannot be checked now: {exc}", "server_error", "iap_keys_unavailable",
                           headers={"Retry-After": "5"}) from None
        managers = {name for name, manager, valid in self.keys().values() if manager and valid}
        return Caller(email, email in managers)


def caller(request: Request) -> Caller:
    """The FastAPI dependency: who sent this request (401 when nobody the server knows)."""
    return request.app.state.auth.caller(request)


AUTHENTICATED = Depends(caller)  # for routers: dependencies=[AUTHENTICATED]; routes that need the caller take it too
