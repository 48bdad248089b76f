"""Cloud Translation v3 backend: `TranslationServiceClient.translate_text` over REST.

One `translate()` call is one translateText request of at most MAX_SEGMENTS texts and MAX_CODEPOINTS code
points (the caller, calltune.translate, packs the batches and runs up to `concurrency` of them at once).
Plain-text mode, so the answers carry no HTML entities. Requests failing with 429, 5xx, a timeout or a dropped
connection are retried with exponential backoff and full jitter; anything else (bad request, permission) fails
at once. Each worker thread has its own client (requests sessions are not meant to be shared across threads).
Credentials come from Application Default Credentials and are never logged; an http:// endpoint (a local fake)
gets anonymous credentials, so credentials never travel over plain HTTP.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter

from calltune.backends.translators import TranslateError
from calltune.config import TranslateConfig

log = logging.getLogger(__name__)

# google.cloud.translation.v3.TranslateTextRequest.contents: "We recommend the total content be less than
# 30,000 codepoints. The max length of this field is 1024."
MAX_SEGMENTS = 1024
MAX_CODEPOINTS = 30_000
MAX_BACKOFF_S = 60.0


class GoogleTranslator:
    max_batch = MAX_SEGMENTS
    max_chars = MAX_CODEPOINTS

    def __init__(self, cfg: TranslateConfig):
        # Heavy imports only when this backend is used (the local install may lack them: pip install calltune[gcp]).
        import requests
        from google.api_core import exceptions

        if not cfg.project:
            raise ValueError("translate.backend=google needs translate.project (the Google Cloud project to bill)")
        self._parent = f"projects/{cfg.project}/locations/{cfg.location}"
        self._model = self._resource(cfg.model, "models")
        self._glossary = self._resource(cfg.glossary, "glossaries")
        if self._glossary and cfg.location == "global":
            raise ValueError("translate.glossary needs a regional translate.location (e.g. us-central1), not global")
        # The cache key: the model and glossary decide the output, the project and endpoint do not.
        self.name = "google:" + (cfg.model or "general/nmt") + (f"+glossary={self._glossary}" if self._glossary else "")
        self.concurrency = cfg.max_concurrency
        self.counters: Counter[str] = Counter()
        self._cfg = cfg
        self._retryable = (exceptions.TooManyRequests, exceptions.ServerError,
                           requests.exceptions.Timeout, requests.exceptions.ConnectionError)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._closed = threading.Event()
        self._client()  # fail now, not in a worker, when credentials are missing

    def _resource(self, value: str, kind: str) -> str:
        if not value or value.startswith("projects/"):
            return value
        return f"{self._parent}/{kind}/{value}"

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            import google.auth.exceptions
            from google.api_core.client_options import ClientOptions
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import translate_v3

            endpoint = self._cfg.endpoint
            try:
                client = translate_v3.TranslationServiceClient(
                    transport="rest",
                    client_options=ClientOptions(api_endpoint=endpoint) if endpoint else None,
                    credentials=AnonymousCredentials() if endpoint.startswith("http://") else None)
            except google.auth.exceptions.DefaultCredentialsError as exc:
                raise TranslateError("translate.backend=google found no Google Cloud credentials: run "
                                     "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS") from exc
            self._local.client = client
        return client

    def close(self) -> None:
        """Stop retrying: a run that ends early (Ctrl-C, a failure elsewhere) does not wait out the backoffs."""
        self._closed.set()

    def _count(self, counts: dict[str, int]) -> None:
        with self._lock:
            self.counters.update(counts)

    def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        from google.api_core.retry import exponential_sleep_generator

        request = {"parent": self._parent, "contents": texts, "mime_type": "text/plain", "target_language_code": target}
        if source != "auto":
            request["source_language_code"] = source
        if self._model:
            request["model"] = self._model
        if self._glossary:
            request["glossary_config"] = {"glossary": self._glossary}
        delays = exponential_sleep_generator(self._cfg.retry_backoff_s, MAX_BACKOFF_S, 2.0)  # uniform(0, bound)
        client = self._client()
        for attempt in range(self._cfg.max_retries + 1):
            self._count({"requests": 1})
            try:
                response = client.translate_text(request=request, timeout=self._cfg.timeout_s, retry=None)
                break
            except self._retryable as exc:
                self._count({"failures": 1})
                if attempt == self._cfg.max_retries:
                    raise TranslateError(f"Cloud Translation gave up after {attempt + 1} attempts "
                                         f"(translate.max_retries={self._cfg.max_retries}); last error: {_brief(exc)}") from exc
                delay = next(delays)
                log.warning("translateText failed (%s); retry %d/%d in %.1f s",
                            _brief(exc), attempt + 1, self._cfg.max_retries, delay)
                self._count({"retries": 1})
                if self._closed.wait(delay):
                    raise TranslateError("Cloud Translation: stopped before retrying (the run is ending)") from exc
            except Exception as exc:  # 400, 403, 404...: retrying cannot help
                self._count({"failures": 1})
                raise TranslateError(f"Cloud Translation refused the request: {_brief(exc)}") from exc
        items = response.glossary_translations if self._glossary else response.translations
        if len(items) != len(texts):
            raise TranslateError(f"Cloud Translation answered {len(items)} translations for {len(texts)} texts")
        counts = Counter(f"detected:{i.detected_language_code}" for i in items if i.detected_language_code)
        counts["characters_billed"] = sum(map(len, texts))  # code points, what the API bills
        self._count(counts)
        return [i.translated_text for i in items]


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
