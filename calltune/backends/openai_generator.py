"""Generator backend: any OpenAI-compatible `/v1/chat/completions` (the `openai` client), one request per call,
`concurrency` at once. An API key is sent only over https or to this machine, and never logged."""
from __future__ import annotations

import os
from urllib.parse import urlsplit

from calltune.backends.generator_base import GenerateError, GeneratorSettings, retrying
from calltune.core.net import is_loopback


class OpenAICompatGenerator:
    max_batch = 1

    def __init__(self, cfg: GeneratorSettings):
        import openai  # only when this backend is used (pip install calltune[synth])

        p = cfg.setting
        key = ""
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise ValueError(f"{p('backend')}=openai: the environment variable {cfg.api_key_env} "
                                 f"({p('api_key_env')}) is not set; set it to the API key, or set "
                                 f"{p('api_key_env')} to empty for a server that needs none")
            url = urlsplit(cfg.base_url)
            if url.scheme == "http" and not is_loopback(url.hostname or ""):
                raise ValueError(f"{p('base_url')} {cfg.base_url!r} is plain http to another machine: the API key "
                                 f"is sent only over https (or to this machine)")
        self.name = f"openai:{cfg.model}"  # the endpoint is not part of it: the model name says what answers
        self.concurrency = cfg.max_concurrency
        self._cfg = cfg
        retryable = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)
        self._retrying = retrying(cfg, lambda e: isinstance(e, retryable), "OpenAI-compatible endpoint")
        self.counters = self._retrying.counters
        self.close = self._retrying.close
        # One client for every thread (its connection pool is thread-safe); its own retries are off.
        self._client = openai.OpenAI(api_key=key or "unused", base_url=cfg.base_url or None,
                                     timeout=cfg.timeout_s, max_retries=0)

    def generate(self, requests: list[dict]) -> list[str]:
        return [self._retrying.call(lambda r=r: self._one(r)) for r in requests]

    def _one(self, request: dict) -> str:
        response = self._client.chat.completions.create(
            model=self._cfg.model, messages=request["messages"], temperature=request["temperature"],
            max_tokens=request["max_tokens"], seed=request["seed"])
        if not response.choices:
            raise GenerateError("OpenAI-compatible endpoint answered without choices")
        return response.choices[0].message.content or ""

