"""Cloud Translation v3 backend: `TranslationServiceClient.translate_text` over REST.

One `translate()` call is one translateText request of at most MAX_SEGMENTS texts and MAX_CODEPOINTS code
points (the caller, calltune.data.translate, packs the batches and runs up to `concurrency` of them at once).
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

from calltune.backends.resources import spelled_as_resource
from calltune.backends.retry import Retrying
from calltune.backends.translator_base import TranslateError
from calltune.config import TranslateConfig

log = logging.getLogger(__name__)

# google.cloud.translation.v3.TranslateTextRequest.contents: "We recommend the total content be less than
# 30,000 codepoints. The max length of this field is 1024."
MAX_SEGMENTS = 1024
MAX_CODEPOINTS = 30_000


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
        self._cfg = cfg
        retryable = (exceptions.TooManyRequests, exceptions.ServerError,
                     requests.exceptions.Timeout, requests.exceptions.ConnectionError)
        self._retrying = Retrying(service="Cloud Translation", setting="translate.max_retries",
                                  max_retries=cfg.max_retries, backoff_s=cfg.retry_backoff_s,
                                  retryable=lambda e: isinstance(e, retryable), error=TranslateError)
        self.counters = self._retrying.counters
        self.close = self._retrying.close  # a run that ends early does not wait out the backoffs
        self._local = threading.local()
        self._client()  # fail now, not in a worker, when credentials are missing

    def _resource(self, value: str, kind: str) -> str:
        if not value or spelled_as_resource(value):  # a full name (models/general/nmt has two parts)
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

    def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        request = {"parent": self._parent, "contents": texts, "mime_type": "text/plain", "target_language_code": target}
        if source != "auto":
            request["source_language_code"] = source
        if self._model:
            request["model"] = self._model
        if self._glossary:
            request["glossary_config"] = {"glossary": self._glossary}
        client = self._client()
        response = self._retrying.call(
            lambda: client.translate_text(request=request, timeout=self._cfg.timeout_s, retry=None))
        items = response.glossary_translations if self._glossary else response.translations
        if len(items) != len(texts):
            raise TranslateError(f"Cloud Translation answered {len(items)} translations for {len(texts)} texts")
        counts = Counter(f"detected:{i.detected_language_code}" for i in items if i.detected_language_code)
        counts["characters_billed"] = sum(map(len, texts))  # code points, what the API bills
        self._retrying.count(counts)
        return [i.translated_text for i in items]


