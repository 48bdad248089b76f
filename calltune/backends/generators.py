"""Generator backends for synthesize: chat requests in, the same number of answers out, in order.

A request is `{"messages": [{"role": "system"|"user", "content"}], "temperature", "max_tokens", "seed"}`.
- local: a bundled or local Hugging Face model on this machine (calltune.models), a batch of prompts per generate call.
- openai: any OpenAI-compatible `/v1/chat/completions` (the `openai` client), one request per call, `concurrency` at once.
- gemini: Gemini on Vertex AI through google-genai, one request per call, `concurrency` at once.
The remote ones retry 429, 5xx, timeouts and dropped connections with exponential backoff and full jitter (the
clients' own retries are off, so every attempt is counted); anything else (bad request, auth) fails at once.
Keys and credentials are never logged, and an API key is sent only over https or to this machine.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import urlsplit

from calltune.backends import Retrying, brief
from calltune.backends.genai import to_contents, transient, vertex_client
from calltune.config import SynthesizeConfig

log = logging.getLogger(__name__)

DEFAULT_LOCAL_MODEL = "smollm2-135m-instruct"


class GenerateError(RuntimeError):
    """A generation request that failed for good (after its retries)."""


class Generator(Protocol):
    name: str          # backend, model (and weights, for local): part of the cache key, written on every synthetic example
    max_batch: int     # most requests in one generate() call
    concurrency: int   # generate() calls that may run at once
    counters: Counter  # requests (attempts), failures, retries, since the generator was made

    def generate(self, requests: list[dict]) -> list[str]: ...

    def close(self) -> None: ...


def _retrying(cfg: SynthesizeConfig, retryable: Callable[[BaseException], bool], service: str) -> Retrying:
    return Retrying(service=service, setting="synthesize.max_retries", max_retries=cfg.max_retries,
                    backoff_s=cfg.retry_backoff_s, retryable=retryable, error=GenerateError)


class OpenAICompatGenerator:
    max_batch = 1

    def __init__(self, cfg: SynthesizeConfig):
        import openai  # only when this backend is used (pip install calltune[synth])

        if not cfg.model:
            raise ValueError("synthesize.backend=openai needs synthesize.model (the model name the endpoint serves)")
        key = ""
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise ValueError(f"synthesize.backend=openai: the environment variable {cfg.api_key_env} "
                                 f"(synthesize.api_key_env) is not set; set it to the API key, or set "
                                 f"synthesize.api_key_env to empty for a server that needs none")
            url = urlsplit(cfg.base_url)
            if url.scheme == "http" and not _is_loopback(url.hostname or ""):
                raise ValueError(f"synthesize.base_url {cfg.base_url!r} is plain http to another machine: the API key "
                                 f"is sent only over https (or to this machine)")
        self.name = f"openai:{cfg.model}"  # the endpoint is not part of it: the model name says what answers
        self.concurrency = cfg.max_concurrency
        self._cfg = cfg
        retryable = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)
        self._retrying = _retrying(cfg, lambda e: isinstance(e, retryable), "OpenAI-compatible endpoint")
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


class GeminiGenerator:
    max_batch = 1

    def __init__(self, cfg: SynthesizeConfig):
        from google.genai import types  # only when this backend is used

        if not cfg.model:
            raise ValueError("synthesize.backend=gemini needs synthesize.model (e.g. gemini-2.5-flash)")
        project, location = cfg.project, cfg.location
        if cfg.model.startswith("projects/"):  # an endpoint or tuned model names its own project and location
            parts = cfg.model.split("/")
            project, location = parts[1], parts[3]
        if not project:
            raise ValueError("synthesize.backend=gemini needs synthesize.project (the Google Cloud project to bill)")
        try:
            self._client = vertex_client(project, location, cfg.base_url, timeout=int(cfg.timeout_s * 1000))
        except Exception as exc:  # google.auth's DefaultCredentialsError, mostly
            raise GenerateError(f"synthesize.backend=gemini could not start a client: {brief(exc)}; run "
                                f"`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS") from exc
        self.name = f"gemini:{cfg.model}"
        self.concurrency = cfg.max_concurrency
        self._cfg, self._types = cfg, types
        self._retrying = _retrying(cfg, transient, "Gemini")
        self.counters = self._retrying.counters
        self.close = self._retrying.close

    def generate(self, requests: list[dict]) -> list[str]:
        return [self._retrying.call(lambda r=r: self._one(r)) for r in requests]

    def _one(self, request: dict) -> str:
        t = self._types
        system, contents = to_contents(request["messages"])
        response = self._client.models.generate_content(
            model=self._cfg.model, contents=contents,
            config=t.GenerateContentConfig(system_instruction=system, temperature=request["temperature"],
                                           max_output_tokens=request["max_tokens"], seed=request["seed"]))
        return response.text or ""


class LocalGenerator:
    concurrency = 1  # one batch at a time: it already runs on every core

    def __init__(self, cfg: SynthesizeConfig, state_dir: Path):
        from calltune.models import BASE_CARD, resolve_base_model, weights_sha256

        name = cfg.model or DEFAULT_LOCAL_MODEL
        self._path = resolve_base_model(name, Path(state_dir).expanduser())
        card = self._path / BASE_CARD
        sha = json.loads(card.read_text())["weights_sha256"] if card.is_file() else weights_sha256(self._path)
        self.name = f"local:{name}@{sha[:12]}"  # the weights, not just the name, say what answers
        self.max_batch = cfg.batch_size
        self.counters: Counter[str] = Counter()
        self._loaded = None  # (model, tokenizer), loaded on the first batch: a run served from the cache needs none

    def generate(self, requests: list[dict]) -> list[str]:
        import torch

        if self._loaded is None:
            from calltune.models import load_model, set_threads

            set_threads()
            self._loaded = load_model(self._path)
            self._loaded[1].padding_side = "left"  # generation continues from the right end of every row
        model, tok = self._loaded
        texts = [tok.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False) for r in requests]
        inputs = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        temperature = requests[0]["temperature"]
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        torch.manual_seed(requests[0]["seed"])  # the batch's first prompt seeds it: the same batch, the same answers
        self.counters["requests"] += 1
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max(r["max_tokens"] for r in requests),
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                 top_p=None, top_k=None, **sampling)
        return [tok.decode(row, skip_special_tokens=True).strip() for row in out[:, inputs["input_ids"].shape[1]:]]

    def close(self) -> None:
        pass


def make_generator(cfg: SynthesizeConfig, state_dir: Path) -> Generator:
    if cfg.backend == "local":
        return LocalGenerator(cfg, state_dir)
    if cfg.backend == "openai":
        return OpenAICompatGenerator(cfg)
    if cfg.backend == "gemini":
        return GeminiGenerator(cfg)
    raise ValueError(f"unknown synthesize.backend {cfg.backend!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
