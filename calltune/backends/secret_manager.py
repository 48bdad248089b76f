"""Google Secret Manager backend of the secret registry: the `Registry` interface of SqliteRegistry, over REST.

Secret Manager versions carry no metadata and AddSecretVersion takes no request id, so both are kept in the
secret's annotations (where the Cloud console shows them):
- `calltune-v<N>`: version N's annotations (run, model, metrics) and the key of the request that added it, as
  JSON. When the annotations near the service's 16 KiB limit, the oldest records are dropped (never versions).
- `calltune-pending-<key>`: written before a request adds its version, holding the newest version number at that
  moment. A retry that finds it (the next attempt of the call, or a rerun of the whole deploy after a crash)
  looks for a version added after that number with the same payload that no other request has claimed, so an
  add whose answer was lost (a timeout after the service committed) is found instead of added a second time.
Annotation updates are read-modify-write guarded by the secret's etag, so concurrent deploys keep each other's
records.
- `calltune-lease`: `exclusive()` (deploy, rollback) takes it with such an etag-guarded update, then lists the
  versions and decides. Secret Manager has no transactions and AddSecretVersion no precondition, so a lease is the
  way the API allows to decide from versions nobody changes meanwhile (verify-and-undo would leave a served
  version behind). Another holder's lease is waited for; one whose holder died expires after LEASE_S.
Every request failing with 429, 5xx, a timeout or a dropped connection is retried alone, by the one retry policy
(calltune.backends.Retrying); before an add is sent again after a failure that may have stored it (anything but
a 429), the versions added since are looked at first. Credentials come from Application Default Credentials; an http:// endpoint (a local fake) gets
anonymous ones, so credentials never go over plain HTTP. Payloads and credentials are never logged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from calltune.backends import registry_base as base
from calltune.backends.retry import MAX_BACKOFF_S, Retrying, brief
from calltune.config import DeployConfig

log = logging.getLogger(__name__)

RECORD = "calltune-v"
PENDING = "calltune-pending-"
LEASE = "calltune-lease"
LEASE_S = 300.0       # a lease whose holder died (no release) frees itself after this long
LEASE_WAIT_S = 600.0  # longest wait for another holder's lease
MAX_ANNOTATIONS_BYTES = 16 * 1024 - 1  # "The total size of annotation keys and values must be less than 16KiB."


def _number(name: str) -> int:
    return int(name.rsplit("/", 1)[1])


def _records(annotations) -> dict[int, dict]:
    """Version number -> {"request": key, "annotations": {...}} from the secret's annotations."""
    out = {}
    for key, value in annotations.items():
        if key.startswith(RECORD) and key[len(RECORD):].isdigit():
            try:
                out[int(key[len(RECORD):])] = json.loads(value)
            except ValueError:
                log.warning("Secret Manager: annotation %s is not calltune JSON; ignored", key)
    return out


def _size(annotations: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())


def _fit(annotations: dict[str, str], keep: str) -> dict[str, str]:
    """Drop the oldest version records, then other requests' pending marks, until the annotations fit."""
    droppable = sorted((int(k[len(RECORD):]), k) for k in annotations if k.startswith(RECORD) and k != keep
                       and k[len(RECORD):].isdigit())
    droppable += [(0, k) for k in annotations if k.startswith(PENDING)]
    annotations = dict(annotations)
    for _, key in droppable:
        if _size(annotations) <= MAX_ANNOTATIONS_BYTES:
            break
        del annotations[key]
    if _size(annotations) > MAX_ANNOTATIONS_BYTES:
        raise base.RegistryError(f"secret annotations take {_size(annotations)} bytes even without old calltune records; "
                            f"Secret Manager allows {MAX_ANNOTATIONS_BYTES} (fewer or shorter metrics?)")
    return annotations


class _Busy(Exception):
    """Another holder's lease is live (args: its expiry, epoch seconds)."""


class SecretManagerRegistry:
    def __init__(self, cfg: DeployConfig):
        # Heavy imports only when this backend is used (the local install may lack them: pip install calltune[gcp]).
        import google.auth.exceptions
        import requests
        from google.api_core import exceptions
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import secretmanager_v1

        if not cfg.project:
            raise ValueError("deploy.registry=secret-manager needs deploy.project (the Google Cloud project of the secret)")
        self._cfg = cfg
        self._parent = f"projects/{cfg.project}"
        self._x = exceptions
        retryable = (exceptions.TooManyRequests, exceptions.ServerError,
                     requests.exceptions.Timeout, requests.exceptions.ConnectionError)
        self._retrying = Retrying(service="Secret Manager", setting="deploy.max_retries", max_retries=cfg.max_retries,
                                  backoff_s=cfg.retry_backoff_s, retryable=lambda e: isinstance(e, retryable),
                                  error=base.RegistryError, wrap_refusals=False)
        # Refused before anything happened (RESOURCE_EXHAUSTED, or no connection made): safe to send again at once.
        self._not_applied = (exceptions.TooManyRequests, requests.exceptions.ConnectTimeout)
        try:
            self._client = secretmanager_v1.SecretManagerServiceClient(
                transport="rest",
                client_options=ClientOptions(api_endpoint=cfg.endpoint) if cfg.endpoint else None,
                credentials=AnonymousCredentials() if cfg.endpoint.startswith("http://") else None)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise base.RegistryError("deploy.registry=secret-manager found no Google Cloud credentials: run `gcloud auth "
                                "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS") from exc

    def __enter__(self) -> SecretManagerRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.transport.close()

    # ---- plumbing ----
    def _name(self, secret_id: str, version: int | str | None = None) -> str:
        name = f"{self._parent}/secrets/{base.check_secret_id(secret_id)}"
        return name if version is None else f"{name}/versions/{base.version_number(secret_id, version)}"

    def _delays(self) -> Iterator[float]:
        from google.api_core.retry import exponential_sleep_generator

        return exponential_sleep_generator(self._cfg.retry_backoff_s, MAX_BACKOFF_S, 2.0)  # uniform(0, bound)

    def _call(self, what: str, method: Callable, **request):
        """One call that is safe to repeat, retried on 429, 5xx, timeouts and dropped connections."""
        return self._retrying.call(lambda: method(**request, timeout=self._cfg.timeout_s, retry=None), what)

    @contextmanager
    def _errors(self, secret_id: str, version: int | str | None = None):
        """Service errors as registry errors: a missing secret or version, or a refusal (permission, bad request)."""
        try:
            yield
        except self._x.NotFound as exc:
            if version is not None and self._exists(secret_id):
                raise base.VersionNotFound(f"secret {secret_id}: version {version} not found") from exc
            raise base.SecretNotFound(f"secret {secret_id!r} not found in {self._parent}") from exc
        except self._x.GoogleAPICallError as exc:
            raise base.RegistryError(f"Secret Manager refused a request on secret {secret_id}: {brief(exc)}") from exc

    def _exists(self, secret_id: str) -> bool:
        try:
            self._call(f"get secret {secret_id}", self._client.get_secret, name=self._name(secret_id))
            return True
        except self._x.NotFound:
            return False

    def _get_secret(self, secret_id: str):
        return self._call(f"get secret {secret_id}", self._client.get_secret, name=self._name(secret_id))

    def _list(self, secret_id: str) -> list:
        # The pager fetches further pages with the same timeout; a retry lists again from the start.
        return self._call(f"list versions of {secret_id}", lambda **kw: list(self._client.list_secret_versions(**kw)),
                          parent=self._name(secret_id))

    def _version(self, secret_id: str, v, annotations) -> base.SecretVersion:
        number = _number(v.name)
        record = _records(annotations).get(number, {})
        return base.SecretVersion(secret_id, number, v.state.name, v.create_time.isoformat(), record.get("annotations", {}))

    def _update_annotations(self, secret_id: str, change: Callable[[dict], dict]):
        """Apply `change` to the secret's annotations; redone on the new state when another writer got there first."""
        for _ in range(20):
            secret = self._get_secret(secret_id)
            current = dict(secret.annotations)
            new = change(current)
            if new == current:
                return secret
            try:
                return self._call(f"update annotations of {secret_id}", self._client.update_secret,
                                  secret={"name": secret.name, "annotations": new, "etag": secret.etag},
                                  update_mask={"paths": ["annotations"]})
            except self._x.BadRequest:  # FAILED_PRECONDITION on a stale etag; anything else is a real refusal
                if self._get_secret(secret_id).etag == secret.etag:
                    raise
        raise base.RegistryError(f"secret {secret_id}: its annotations kept changing under 20 updates in a row")

    @contextmanager
    def exclusive(self, secret_id: str) -> Iterator[None]:
        """Hold the secret's lease (creating the secret if needed): other calltune writers wait until it is released."""
        owner, delays = uuid.uuid4().hex, self._delays()
        waited_until = time.monotonic() + LEASE_WAIT_S

        def take(a: dict) -> dict:
            held = json.loads(a.get(LEASE, "{}"))
            if held.get("owner", owner) != owner and held.get("until", 0) > time.time():
                raise _Busy(held["until"])
            return _fit({**a, LEASE: json.dumps({"owner": owner, "until": round(time.time() + LEASE_S)})}, keep=LEASE)

        with self._errors(secret_id):
            self._get_or_create(secret_id)
            while True:
                try:
                    self._update_annotations(secret_id, take)
                    break
                except _Busy as busy:
                    if time.monotonic() > waited_until:
                        raise base.RegistryError(f"secret {secret_id}: another deploy or rollback holds its lease (annotation "
                                            f"{LEASE}) until {time.ctime(busy.args[0])}; retry then") from None
                    time.sleep(min(next(delays), 5.0))
        try:
            yield
        finally:
            try:
                self._update_annotations(secret_id, lambda a: {k: v for k, v in a.items()
                                                               if not (k == LEASE and owner in v)})
            except Exception as exc:  # noqa: BLE001 - never hide the body's own error; the lease expires by itself
                log.warning("Secret Manager: could not release the lease on %s (%s); it expires in %.0f s",
                            secret_id, brief(exc), LEASE_S)

    # ---- the Registry interface ----
    def add_version(self, secret_id: str, payload: bytes, *, annotations: dict[str, str] | None = None,
                    request_id: str | None = None) -> base.SecretVersion:
        """Add the next version (creating the secret if needed); a repeated request_id returns the version it added.

        Without a request_id, one is made up for this call, so its own retries are as safe.
        """
        import google_crc32c

        annotations = base.check_new_version(secret_id, payload, annotations)
        key = hashlib.sha256((request_id or uuid.uuid4().hex).encode()).hexdigest()[:16]
        pending = PENDING + key
        with self._errors(secret_id):
            secret = self._get_or_create(secret_id)
            records = _records(secret.annotations)
            mine = next((n for n, r in records.items() if r.get("request") == key), None)
            if mine is not None:
                return self._same_payload(secret_id, mine, payload, request_id)

            def landed(after: int) -> int | None:
                """The version an earlier attempt of this request stored although its answer was lost."""
                found = self._find_added(secret_id, after, payload, records)
                if found is not None:
                    log.info("Secret Manager: %s version %d was added by an earlier attempt of this request",
                             secret_id, found)
                return found

            if pending in secret.annotations:  # an earlier run of this request died after marking it
                after = int(secret.annotations[pending])
                if (found := landed(after)) is not None:
                    return self._claim(secret_id, found, key, annotations)
            else:
                after = self._newest(secret_id)
                self._update_annotations(secret_id, lambda a: {**a, pending: str(after)})

            def add() -> int:
                return _number(self._client.add_secret_version(
                    parent=self._name(secret_id), timeout=self._cfg.timeout_s, retry=None,
                    payload={"data": payload, "data_crc32c": google_crc32c.value(payload)}).name)

            number = self._retrying.call(add, f"add a version to {secret_id}",
                                         recover=lambda exc: None if isinstance(exc, self._not_applied) else landed(after))
            return self._claim(secret_id, number, key, annotations)

    def _get_or_create(self, secret_id: str):
        try:
            return self._get_secret(secret_id)
        except self._x.NotFound:
            pass
        try:
            secret = self._call(f"create secret {secret_id}", self._client.create_secret, parent=self._parent,
                                secret_id=secret_id, secret={"replication": {"automatic": {}}})
            log.info("Secret Manager: created secret %s/secrets/%s", self._parent, secret_id)
            return secret
        except self._x.Conflict:  # created meanwhile: by another deploy, or by our own retried create
            return self._get_secret(secret_id)

    def _newest(self, secret_id: str) -> int:
        try:
            return _number(self._call(f"get {secret_id} latest", self._client.get_secret_version,
                                      name=self._name(secret_id, "latest")).name)
        except self._x.NotFound:
            return 0

    def _find_added(self, secret_id: str, after: int, payload: bytes, records: dict[int, dict]) -> int | None:
        """The oldest unclaimed version newer than `after` holding `payload`: an add whose answer was lost."""
        for v in sorted(self._list(secret_id), key=lambda v: _number(v.name)):
            number = _number(v.name)
            if number > after and number not in records and v.state.name == "ENABLED" \
                    and self.access(secret_id, number) == payload:
                return number
        return None

    def _claim(self, secret_id: str, number: int, key: str, annotations: dict[str, str]) -> base.SecretVersion:
        record = json.dumps({"request": key, "annotations": annotations}, sort_keys=True, separators=(",", ":"))

        def change(a: dict) -> dict:
            a = {k: v for k, v in a.items() if k != PENDING + key}
            return _fit({**a, f"{RECORD}{number}": record}, keep=f"{RECORD}{number}")

        self._update_annotations(secret_id, change)
        return self.get_version(secret_id, number)

    def _same_payload(self, secret_id: str, number: int, payload: bytes, request_id: str | None) -> base.SecretVersion:
        try:
            if self.access(secret_id, number) != payload:
                raise base.RequestIdConflict(f"secret {secret_id}: request_id {request_id!r} already added version "
                                        f"{number} with a different payload")
        except base.VersionDisabled:  # cannot be read back: trust the record
            pass
        return self.get_version(secret_id, number)

    def access(self, secret_id: str, version: int | str = "latest") -> bytes:
        """The payload of an enabled version; `latest` is the newest version and fails if that one is disabled."""
        import google_crc32c

        name = self._name(secret_id, version)
        with self._errors(secret_id, version):
            try:
                response = self._call(f"access {secret_id} version {version}", self._client.access_secret_version,
                                      name=name)
            except self._x.BadRequest:  # FAILED_PRECONDITION: the version is not enabled
                v = self.get_version(secret_id, version)
                if v.state != "ENABLED":
                    alias = " (latest; older versions are not used instead)" if version == "latest" else ""
                    raise base.VersionDisabled(f"secret {secret_id}: version {v.version}{alias} is {v.state.lower()}; "
                                          f"enable it or add a new version") from None
                raise
        data = response.payload.data
        if "data_crc32c" in response.payload and google_crc32c.value(data) != response.payload.data_crc32c:
            raise base.RegistryError(f"secret {secret_id}: version {version} arrived corrupted (CRC32C mismatch)")
        return data

    def get_version(self, secret_id: str, version: int | str = "latest") -> base.SecretVersion:
        with self._errors(secret_id, version):
            v = self._call(f"get {secret_id} version {version}", self._client.get_secret_version,
                           name=self._name(secret_id, version))
            return self._version(secret_id, v, self._get_secret(secret_id).annotations)

    def list_versions(self, secret_id: str) -> list[base.SecretVersion]:
        """Newest first, as Secret Manager lists them."""
        with self._errors(secret_id):
            annotations = self._get_secret(secret_id).annotations
            versions = self._list(secret_id)
        return sorted((self._version(secret_id, v, annotations) for v in versions), key=lambda v: -v.version)

    def list_secrets(self) -> list[str]:
        with self._errors("*"):
            secrets = self._call("list secrets", lambda **kw: list(self._client.list_secrets(**kw)), parent=self._parent)
        return sorted(s.name.rsplit("/", 1)[1] for s in secrets)

    def _set_state(self, secret_id: str, version: int | str, action: str) -> base.SecretVersion:
        if base.version_number(secret_id, version) == "latest":  # the alias works for get and access only
            version = self.get_version(secret_id, "latest").version
        with self._errors(secret_id, version):
            v = self._call(f"{action} {secret_id} version {version}", getattr(self._client, f"{action}_secret_version"),
                           name=self._name(secret_id, version))
            return self._version(secret_id, v, self._get_secret(secret_id).annotations)

    def disable(self, secret_id: str, version: int | str) -> base.SecretVersion:
        return self._set_state(secret_id, version, "disable")

    def enable(self, secret_id: str, version: int | str) -> base.SecretVersion:
        return self._set_state(secret_id, version, "enable")
