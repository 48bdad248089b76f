"""A fake Secret Manager v1 (REST) for the real google-cloud-secret-manager client, with the service's rules.

- Versions are numbered 1, 2, 3... per secret; `latest` (get and access only) is the most recently created one,
  whatever its state; accessing a disabled version fails with FAILED_PRECONDITION (HTTP 400).
- secrets.patch replaces the fields named in `updateMask`; a stale `etag` fails with FAILED_PRECONDITION (400);
  annotation keys follow the service's pattern and all annotations together must stay under 16 KiB.
- addVersion checks `dataCrc32c` when sent; versions.list pages (newest first) with pageSize/pageToken.

Besides the base class's faults (which answer before anything happens), `commit_then(*faults)` makes the next
addVersion requests commit the version and only then fail (a status) or hang (HANG): the ambiguous failures
a client cannot tell from uncommitted ones.
"""
from __future__ import annotations

import base64
import re
import threading
from collections import deque
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import google_crc32c

from . import HANG, ApiError, FakeGoogleApi, Fault

MAX_ANNOTATIONS_BYTES = 16 * 1024
_ANNOTATION_KEY = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?")
_SECRET = r"/v1/projects/(?P<project>[^/:]+)/secrets/(?P<secret>[^/:]+)"
_VERSION = _SECRET + r"/versions/(?P<version>[^/:]+)"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeSecretManager(FakeGoogleApi):
    routes = [
        ("POST", r"/v1/projects/(?P<project>[^/:]+)/secrets", "create_secret"),
        ("GET", r"/v1/projects/(?P<project>[^/:]+)/secrets", "list_secrets"),
        ("GET", _SECRET, "get_secret"),
        ("PATCH", _SECRET, "patch_secret"),
        ("POST", _SECRET + ":addVersion", "add_version"),
        ("GET", _SECRET + "/versions", "list_versions"),
        ("GET", _VERSION, "get_version"),
        ("GET", _VERSION + ":access", "access_version"),
        ("POST", _VERSION + ":disable", "disable_version"),
        ("POST", _VERSION + ":enable", "enable_version"),
    ]

    def __init__(self, **kw):
        self._query = threading.local()  # the request's query string (the base class routes on the path only)
        super().__init__(**kw)
        self._state = threading.Lock()
        self._etags = 0
        self.secrets: dict[str, dict] = {}   # resource name -> Secret JSON
        self.versions: dict[str, list[dict]] = {}  # secret name -> [{"json": SecretVersion JSON, "data": bytes}]
        self._after_commit: deque[Fault] = deque()

    def _handler_class(self):
        fake, base = self, super()._handler_class()

        class Handler(base):
            def _handle(self):
                fake._query.params = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                super()._handle()

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

        return Handler

    def commit_then(self, *faults: Fault) -> None:
        with self._lock:
            self._after_commit.extend(faults)

    # ---- helpers ----
    def _param(self, name: str, default: str = "") -> str:
        return getattr(self._query, "params", {}).get(name, default)

    def _etag(self) -> str:
        self._etags += 1
        return f'"etag-{self._etags}"'

    def _secret(self, m) -> dict:
        name = f"projects/{m['project']}/secrets/{m['secret']}"
        if name not in self.secrets:
            raise ApiError(404, f"Secret [{name}] not found or has no versions.")
        return self.secrets[name]

    def _version(self, m, aliases: bool) -> dict:
        secret = self._secret(m)
        versions = self.versions[secret["name"]]
        v = m["version"]
        if v == "latest" and aliases:
            if not versions:
                raise ApiError(404, f"Secret [{secret['name']}] not found or has no versions.")
            return versions[-1]
        if not v.isdigit() or not 1 <= int(v) <= len(versions):
            raise ApiError(404 if v.isdigit() else 400, f"Secret Version [{secret['name']}/versions/{v}] not found.")
        return versions[int(v) - 1]

    # ---- secrets ----
    def create_secret(self, m, body: dict) -> dict:
        secret_id = self._param("secretId")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", secret_id):
            raise ApiError(400, f"invalid secretId {secret_id!r}")
        if not (body or {}).get("replication"):
            raise ApiError(400, "Secret.replication is required")
        name = f"projects/{m['project']}/secrets/{secret_id}"
        with self._state:
            if name in self.secrets:
                raise ApiError(409, f"Secret [{name}] already exists.")
            self._check_annotations(body.get("annotations") or {})
            self.secrets[name] = {"name": name, "replication": body["replication"], "createTime": _now(),
                                  "labels": body.get("labels") or {}, "annotations": body.get("annotations") or {},
                                  "etag": self._etag()}
            self.versions[name] = []
            return dict(self.secrets[name])

    def list_secrets(self, m, body) -> dict:
        prefix = f"projects/{m['project']}/secrets/"
        with self._state:
            return {"secrets": [dict(s) for n, s in sorted(self.secrets.items()) if n.startswith(prefix)],
                    "totalSize": len(self.secrets)}

    def get_secret(self, m, body) -> dict:
        with self._state:
            return dict(self._secret(m))

    def patch_secret(self, m, body: dict) -> dict:
        paths = [p for p in self._param("updateMask").split(",") if p]
        if not paths or set(paths) - {"annotations", "labels"}:
            raise ApiError(400, f"fake: updateMask {paths} is not supported (annotations, labels)")
        with self._state:
            secret = self._secret(m)
            if body.get("etag") and body["etag"] != secret["etag"]:
                raise ApiError(400, f"FAILED_PRECONDITION: etag {body['etag']} does not match {secret['etag']}")
            if "annotations" in paths:
                self._check_annotations(body.get("annotations") or {})
            for p in paths:
                secret[p] = body.get(p) or {}
            secret["etag"] = self._etag()
            return dict(secret)

    @staticmethod
    def _check_annotations(annotations: dict[str, str]) -> None:
        for key in annotations:
            if not _ANNOTATION_KEY.fullmatch(key):
                raise ApiError(400, f"invalid annotation key {key!r}")
        size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
        if size >= MAX_ANNOTATIONS_BYTES:
            raise ApiError(400, f"annotations take {size} bytes; the total must be less than 16KiB")

    # ---- versions ----
    def add_version(self, m, body: dict) -> dict:
        payload = (body or {}).get("payload") or {}
        data = base64.b64decode(payload.get("data", ""))
        if "dataCrc32c" in payload and int(payload["dataCrc32c"]) != google_crc32c.value(data):
            raise ApiError(400, "Checksum mismatch: the payload's data_crc32c does not match its data")
        with self._state:
            secret = self._secret(m)
            versions = self.versions[secret["name"]]
            version = {"name": f"{secret['name']}/versions/{len(versions) + 1}", "createTime": _now(),
                       "state": "ENABLED", "replicationStatus": {"automatic": {}}, "etag": self._etag(),
                       "clientSpecifiedPayloadChecksum": "dataCrc32c" in payload}
            versions.append({"json": version, "data": data})
        with self._lock:
            fault = self._after_commit.popleft() if self._after_commit else None
        if fault == HANG:
            self._released.wait()  # committed; the client times out before any answer
        if fault is not None:
            raise ApiError(500 if fault == HANG else fault, "fake: failed after committing the version")
        return dict(version)

    def list_versions(self, m, body) -> dict:
        size = min(int(self._param("pageSize") or 0) or 25, 25_000)
        start = int(self._param("pageToken") or 0)
        with self._state:
            versions = [dict(v["json"]) for v in reversed(self.versions[self._secret(m)["name"]])]
        page = {"versions": versions[start:start + size], "totalSize": len(versions)}
        if start + size < len(versions):
            page["nextPageToken"] = str(start + size)
        return page

    def get_version(self, m, body) -> dict:
        with self._state:
            return dict(self._version(m, aliases=True)["json"])

    def access_version(self, m, body) -> dict:
        with self._state:
            v = self._version(m, aliases=True)
            if v["json"]["state"] != "ENABLED":
                raise ApiError(400, f"FAILED_PRECONDITION: Secret Version [{v['json']['name']}] is in "
                                    f"{v['json']['state']} state.")
            return {"name": v["json"]["name"], "payload": {"data": base64.b64encode(v["data"]).decode(),
                                                           "dataCrc32c": str(google_crc32c.value(v["data"]))}}

    def _set_state(self, m, body, state: str) -> dict:
        with self._state:
            v = self._version(m, aliases=False)["json"]
            if (body or {}).get("etag") and body["etag"] != v["etag"]:
                raise ApiError(400, f"FAILED_PRECONDITION: etag {body['etag']} does not match {v['etag']}")
            v["state"], v["etag"] = state, self._etag()
            return dict(v)

    def disable_version(self, m, body) -> dict:
        return self._set_state(m, body, "DISABLED")

    def enable_version(self, m, body) -> dict:
        return self._set_state(m, body, "ENABLED")

    # ---- for tests ----
    def payloads(self, secret: str) -> list[bytes]:
        with self._state:
            return [v["data"] for v in self.versions[secret]]

    def calls(self, route: str) -> int:
        """Requests answered 200 whose path ends with `route` (e.g. ':addVersion')."""
        return len([r for r in self.answered() if r.path.endswith(route)])
