"""A loopback fake of Cloud Storage's JSON API, for the real google-cloud-storage client: set
STORAGE_EMULATOR_HOST to `fake.endpoint` (the client then sends anonymous requests over plain HTTP).

What google-cloud-storage 3.x sends, and the fake answers:
- buckets: get, create, IAM policy get/set;
- uploads to /upload/storage/v1/b/{bucket}/o: uploadType=media (name in the query), multipart (multipart/related:
  JSON metadata, then the bytes) and resumable (a POST opens a session and answers its URL in Location; PUTs with
  Content-Range send chunks and get 308 with Range until the last one; `bytes */*` asks how far it got);
- object metadata (GET /storage/v1/b/{bucket}/o/{name}), download (alt=media, on /storage or /download, whole or
  a Range), list (prefix, delimiter, pages), delete;
- generations: every write makes a new one; ifGenerationMatch (0: only if absent) and ifGenerationNotMatch answer
  412 when they do not hold, before anything is written.
Objects carry md5Hash and crc32c and downloads the x-goog-hash header, so the client's checksum checks run.

Faults come from FakeGoogleApi (inject, fail_when, hang_after); `fail_when` predicates get the request's JSON body
(None for media). The client also GETs the bucket from a background thread (bucket metadata for its telemetry),
so a test that wants a fault on a given request uses `inject_on(path_prefix, ...)`, which queues faults for
requests whose path starts with the prefix (e.g. "/upload/"). `lose_answers(n)` makes the next n writes happen
and then drops the connection without an answer: what a client meets when a response is lost, so a retried
upload finds its own earlier object.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import quote, unquote

import google_crc32c

from . import ApiError, FakeGoogleApi

_OBJECT = r"/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>[^/]+)"


class Answer(NamedTuple):
    """An answer other than a 200 JSON object."""
    status: int = 200
    body: bytes | dict = b""
    headers: dict = {}


@dataclass
class StoredObject:
    data: bytes
    generation: int
    content_type: str
    metadata: dict = field(default_factory=dict)
    updated: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))

    def md5(self) -> str:
        return base64.b64encode(hashlib.md5(self.data).digest()).decode()

    def crc32c(self) -> str:
        return base64.b64encode(google_crc32c.Checksum(self.data).digest()).decode()


class FakeStorage(FakeGoogleApi):
    """Cloud Storage buckets, IAM policies and objects (see the module docstring)."""
    routes = [
        ("GET", r"/storage/v1/b/(?P<bucket>[^/]+)", "get_bucket"),
        ("POST", r"/storage/v1/b", "create_bucket"),
        ("GET", r"/storage/v1/b/(?P<bucket>[^/]+)/iam", "get_iam"),
        ("PUT", r"/storage/v1/b/(?P<bucket>[^/]+)/iam", "set_iam"),
        ("GET", r"/storage/v1/b/(?P<bucket>[^/]+)/o", "list_objects"),
        ("GET", _OBJECT, "get_object"),
        ("GET", "/download" + _OBJECT, "get_object"),
        ("DELETE", _OBJECT, "delete_object"),
        ("POST", r"/upload/storage/v1/b/(?P<bucket>[^/]+)/o", "upload"),
        ("PUT", r"/upload/storage/v1/b/(?P<bucket>[^/]+)/o", "upload_chunk"),
    ]

    def __init__(self, *, buckets: tuple[str, ...] = (), **kwargs):
        super().__init__(**kwargs)
        self.buckets: dict[str, dict] = {}
        self.policies: dict[str, dict] = {}
        self.objects: dict[tuple[str, str], StoredObject] = {}  # (bucket, name) -> the live generation
        self.authorized: list[str] = []  # paths of requests that carried credentials
        self.sessions: dict[str, dict] = {}  # resumable upload id -> {"bucket", "name", "meta", "query", "data"}
        self._generation = 1_700_000_000_000_000
        self._lose = 0
        self._path_faults: list[tuple[str, str, deque]] = []
        for name in buckets:
            self.add_bucket(name)

    # ---- test helpers ----
    def add_bucket(self, name: str, project: str = "test-project") -> None:
        self.buckets[name] = {"kind": "storage#bucket", "name": name, "id": name, "projectNumber": "123456789",
                              "location": "US", "project": project}

    def inject_on(self, path_prefix: str, *faults, method: str = "") -> None:
        """Queue faults for the next requests whose path starts with `path_prefix` (and of `method`, if given)."""
        with self._lock:
            self._path_faults.append((method, path_prefix, deque(faults)))

    def _next_fault(self, index: int, body):
        with self._lock:
            for method, prefix, queue in self._path_faults:
                if queue and self._local.path.startswith(prefix) and method in ("", self._local.method):
                    return queue.popleft()
        return super()._next_fault(index, body)

    def lose_answers(self, n: int) -> None:
        with self._lock:
            self._lose += n

    def read(self, uri: str) -> bytes:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return self.objects[bucket, name].data

    def uploads(self) -> list:
        """Requests that wrote (or tried to write) an object: upload POSTs and resumable PUTs."""
        return [r for r in self.requests if r.path.startswith("/upload/")]

    def _serve(self, method: str, path: str, raw: bytes):
        self._local.raw, self._local.path, self._local.method = raw, path, method
        if self._header("Authorization"):
            self.authorized.append(path)
        is_json = self._header("Content-Type").startswith("application/json")
        result = super()._serve(method, path, raw if is_json else b"")
        if result is not None and method in ("POST", "PUT") and path.startswith("/upload/") and result[0] == 200:
            with self._lock:
                if self._lose > 0:
                    self._lose -= 1
                    return None  # written, but the answer is lost
        return result

    def _dispatch(self, method: str, path: str, body):
        status, payload = super()._dispatch(method, path, body)
        return (payload.status if isinstance(payload, Answer) else status), payload  # record 206/308 as sent

    # ---- buckets ----
    def _bucket(self, name: str) -> dict:
        if name not in self.buckets:
            raise ApiError(404, f"The specified bucket does not exist: {name}")
        return self.buckets[name]

    def get_bucket(self, match, body) -> dict:
        return self._bucket(match["bucket"])

    def create_bucket(self, match, body: dict) -> dict:
        name = body["name"]
        if name in self.buckets:
            raise ApiError(409, f"bucket {name} already exists")
        self.add_bucket(name, self.query().get("project"))
        self.buckets[name]["location"] = body.get("location", "US")
        return self.buckets[name]

    def get_iam(self, match, body) -> dict:
        self._bucket(match["bucket"])
        return self.policies.get(match["bucket"], {"kind": "storage#policy", "bindings": [], "etag": "CAE="})

    def set_iam(self, match, body: dict) -> dict:
        self._bucket(match["bucket"])
        self.policies[match["bucket"]] = {**body, "etag": "CAI="}
        return self.policies[match["bucket"]]

    # ---- objects ----
    def _resource(self, bucket: str, name: str, obj: StoredObject) -> dict:
        return {"kind": "storage#object", "id": f"{bucket}/{name}/{obj.generation}", "name": name, "bucket": bucket,
                "generation": str(obj.generation), "metageneration": "1", "contentType": obj.content_type,
                "size": str(len(obj.data)), "md5Hash": obj.md5(), "crc32c": obj.crc32c(),
                "timeCreated": obj.updated, "updated": obj.updated, "storageClass": "STANDARD",
                "selfLink": f"{self.endpoint}/storage/v1/b/{bucket}/o/{quote(name, safe='')}",
                "mediaLink": f"{self.endpoint}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
                             f"?generation={obj.generation}&alt=media",
                **({"metadata": obj.metadata} if obj.metadata else {})}

    def _live(self, bucket: str, name: str) -> StoredObject:
        self._bucket(bucket)
        obj = self.objects.get((bucket, name))
        wanted = self.query().get("generation")
        if obj is None or (wanted and int(wanted) != obj.generation):
            raise ApiError(404, f"No such object: {bucket}/{name}")
        return obj

    def _check_preconditions(self, bucket: str, name: str, query: dict) -> None:
        current = self.objects.get((bucket, name))
        generation = current.generation if current else 0
        if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != generation:
            raise ApiError(412, "At least one of the pre-conditions you specified did not hold.")
        if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
            raise ApiError(412, "At least one of the pre-conditions you specified did not hold.")

    def _write(self, bucket: str, name: str, data: bytes, meta: dict, query: dict) -> dict:
        with self._lock:  # the precondition check and the write are one step, as on the service
            self._check_preconditions(bucket, name, query)
            self._generation += 1
            obj = StoredObject(data, self._generation, meta.get("contentType") or "application/octet-stream",
                               dict(meta.get("metadata") or {}))
            for key, digest in (("md5Hash", obj.md5()), ("crc32c", obj.crc32c())):
                if meta.get(key) and meta[key] != digest:
                    raise ApiError(400, f"Provided {key} {meta[key]!r} doesn't match calculated {digest!r}.")
            self.objects[bucket, name] = obj
        return self._resource(bucket, name, obj)

    def get_object(self, match, body):
        bucket, name = match["bucket"], unquote(match["name"])
        obj = self._live(bucket, name)
        self._check_preconditions(bucket, name, self.query())
        if self.query().get("alt") != "media":
            return self._resource(bucket, name, obj)
        data, status = obj.data, 200
        headers = {"x-goog-generation": str(obj.generation), "x-goog-hash": f"crc32c={obj.crc32c()},md5={obj.md5()}",
                   "x-goog-stored-content-length": str(len(obj.data)), "Content-Type": obj.content_type}
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self._header("Range"))
        if ranged:
            start = int(ranged[1])
            end = min(int(ranged[2]) if ranged[2] else len(data) - 1, len(data) - 1)
            data, status = data[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(obj.data)}"
        return Answer(status, data, headers)

    def delete_object(self, match, body) -> Answer:
        bucket, name = match["bucket"], unquote(match["name"])
        self._live(bucket, name)
        with self._lock:
            self._check_preconditions(bucket, name, self.query())
            del self.objects[bucket, name]
        return Answer(204)

    def list_objects(self, match, body) -> dict:
        bucket, q = match["bucket"], self.query()
        self._bucket(bucket)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        names, prefixes = [], set()
        for b, name in sorted(self.objects):
            if b != bucket or not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
            else:
                names.append(name)
        start = int(q.get("pageToken") or 0)
        size = int(q.get("maxResults") or 1000)
        page = names[start:start + size]
        answer = {"kind": "storage#objects",
                  "items": [self._resource(bucket, n, self.objects[bucket, n]) for n in page]}
        if prefixes:
            answer["prefixes"] = sorted(prefixes)
        if start + size < len(names):
            answer["nextPageToken"] = str(start + size)
        return answer

    # ---- uploads ----
    def upload(self, match, body):
        bucket, q = match["bucket"], self.query()
        self._bucket(bucket)
        kind = q.get("uploadType")
        if kind == "media":
            if not q.get("name"):
                raise ApiError(400, "Required parameter: name")
            return self._write(bucket, q["name"], self._local.raw,
                               {"contentType": self._header("Content-Type")}, q)
        if kind == "multipart":
            meta, data, ctype = _parse_multipart(self._header("Content-Type"), self._local.raw)
            if not meta.get("name"):
                raise ApiError(400, "Required parameter: name")
            return self._write(bucket, meta["name"], data, {"contentType": ctype, **meta}, q)
        if kind == "resumable":
            meta = dict(body or {})
            name = meta.get("name") or q.get("name")
            if not name:
                raise ApiError(400, "Required parameter: name")
            self._check_preconditions(bucket, name, q)
            meta.setdefault("contentType", self._header("x-upload-content-type"))
            upload_id = uuid.uuid4().hex
            self.sessions[upload_id] = {"bucket": bucket, "name": name, "meta": meta, "query": q, "data": b""}
            return Answer(200, b"", {"Location": f"{self.endpoint}/upload/storage/v1/b/{bucket}/o"
                                                 f"?uploadType=resumable&upload_id={upload_id}"})
        raise ApiError(400, f"unsupported uploadType {kind!r}")

    def upload_chunk(self, match, body):
        session = self.sessions.get(self.query().get("upload_id", ""))
        if session is None or session.get("done"):
            raise ApiError(404, "No such upload session")
        received = len(session["data"])
        progress = {"Range": f"bytes=0-{received - 1}"} if received else {}
        content_range = self._header("Content-Range")
        status = re.fullmatch(r"bytes \*/(\*|\d+)", content_range)
        if status:  # "how far did you get?" (or a final empty chunk, when the total is known)
            if status[1] != "*" and int(status[1]) == received:
                return self._finish(session)
            return Answer(308, b"", progress)
        chunk = re.fullmatch(r"bytes (\d+)-(\d+)/(\*|\d+)", content_range)
        if not chunk:
            raise ApiError(400, f"bad Content-Range {content_range!r}")
        start, total = int(chunk[1]), chunk[3]
        if start > received:
            raise ApiError(400, f"chunk starts at {start}, but {received} bytes were received")
        session["data"] = session["data"][:start] + self._local.raw
        if total != "*" and len(session["data"]) >= int(total):
            return self._finish(session)
        return Answer(308, b"", {"Range": f"bytes=0-{len(session['data']) - 1}"})

    def _finish(self, session: dict) -> dict:
        resource = self._write(session["bucket"], session["name"], session["data"], session["meta"], session["query"])
        session["done"] = True
        return resource

    # ---- serving ----
    def _answer(self, status: int, payload) -> tuple[int, dict[str, str], bytes]:
        """Besides JSON: an `Answer` (its own status and headers) and media bytes."""
        headers = {}
        if isinstance(payload, Answer):
            status, payload, headers = payload.status, payload.body, dict(payload.headers)
        if isinstance(payload, bytes):
            return status, {"Content-Type": "application/octet-stream", **headers}, payload
        status, json_headers, data = super()._answer(status, payload)
        return status, {**headers, **json_headers}, data


def _parse_multipart(content_type: str, raw: bytes) -> tuple[dict, bytes, str]:
    """multipart/related: a JSON metadata part, then the media part -> (metadata, bytes, media content type)."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/related") or not boundary:
        raise ApiError(400, f"multipart upload needs a multipart/related body with a boundary, got {content_type!r}")
    sep = b"--" + boundary[1].encode()
    parts = [p for p in raw.split(sep)[1:] if not p.startswith(b"--")]
    if len(parts) != 2:
        raise ApiError(400, f"multipart upload needs 2 parts, got {len(parts)}")
    decoded = []
    for part in parts:
        head, _, payload = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        ctype = re.search(rb"(?im)^content-type:\s*(.+?)\s*$", head)
        decoded.append((ctype[1].decode() if ctype else "", payload.removesuffix(b"\r\n")))
    return json.loads(decoded[0][1]), decoded[1][1], decoded[1][0]
