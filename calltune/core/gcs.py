"""Cloud Storage helpers over google-cloud-storage: gs:// URIs, retry-safe uploads and atomic downloads.

The client talks to STORAGE_EMULATOR_HOST when it is set (a local fake or emulator, over plain HTTP, so with
anonymous credentials: real ones are never sent there); otherwise to Cloud Storage with Application Default
Credentials.

Uploads are conditional (`ifGenerationMatch`): the object is written only if it is still the generation we saw,
which also lets the library retry them on 429, 5xx, timeouts and dropped connections (it retries only
conditional uploads, since an unconditional one could write twice). When a retry finds the object already there
(our own earlier attempt, whose answer was lost), the MD5 of what is stored decides: the same bytes are success,
and an object whose bytes are already equal to the file's is not sent again.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

# Bucket names: 3-63 characters (up to 222 with dots), lowercase letters, digits, -, _ and ., starting and ending
# with a letter or digit (https://cloud.google.com/storage/docs/buckets#naming).
BUCKET = r"[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]"  # a bucket name's characters and length (3-222)
_BUCKET = re.compile(BUCKET)


def is_gcs(uri: str | Path) -> bool:
    return str(uri).startswith("gs://")


def parse_uri(uri: str, *, what: str = "gs:// URI", folder: bool = False) -> tuple[str, str]:
    """gs://bucket/path -> (bucket, path). `what` names the setting in errors; `folder`: the path may be empty
    (the bucket's root), and a trailing slash is dropped."""
    if not isinstance(uri, str) or not uri.startswith("gs://"):
        raise ValueError(f"{what} must start with gs:// (got {uri!r})")
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not _BUCKET.fullmatch(bucket) or len(bucket) > 63 and "." not in bucket:
        raise ValueError(f"{what} has an invalid bucket name {bucket!r} (3-63 lowercase letters, digits, -, _ "
                         f"and ., starting and ending with a letter or digit): {uri!r}")
    if folder:
        name = name.rstrip("/")
    elif not name or name.endswith("/"):
        raise ValueError(f"{what} must name an object, gs://BUCKET/PATH/NAME (got {uri!r})")
    if "//" in name or any(part in (".", "..") for part in name.split("/")) or "\n" in name or "\r" in name:
        raise ValueError(f"{what} has an invalid object path {name!r}: {uri!r}")
    return bucket, name


def join(uri: str, *parts: str) -> str:
    """gs://b/a + (x, y) -> gs://b/a/x/y."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def client(project: str | None = None):
    """A storage client: anonymous against STORAGE_EMULATOR_HOST when set, else Application Default Credentials."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "local", credentials=AnonymousCredentials())
    return storage.Client(project=project or None)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


def upload_file(path: str | Path, uri: str, *, content_type: str | None = None, gcs=None,
                timeout: float = 60.0) -> str:
    """Upload a local file to the gs:// object `uri` and return the URI. Safe to retry and to repeat: the same
    bytes never make a second write, and a concurrent different write fails instead of being overwritten."""
    from google.api_core.exceptions import PreconditionFailed

    path = Path(path)
    bucket_name, name = parse_uri(uri)
    bucket = (gcs or client()).bucket(bucket_name)
    md5 = _md5(path)
    existing = bucket.get_blob(name, timeout=timeout)
    if existing is not None and existing.md5_hash == md5:
        return uri
    blob = bucket.blob(name)
    try:
        blob.upload_from_filename(str(path), content_type=content_type, timeout=timeout,
                                  if_generation_match=existing.generation if existing else 0)
    except PreconditionFailed:
        # The object changed after we looked: our own attempt whose answer was lost, or another writer.
        current = bucket.get_blob(name, timeout=timeout)
        if current is None or current.md5_hash != md5:
            raise RuntimeError(f"{uri} was changed by another writer while uploading {path}") from None
    return uri
