"""Generator backends for synthesize: chat requests in, the same number of answers out, in order.

A request is `{"messages": [{"role": "system"|"user", "content"}], "temperature", "max_tokens", "seed"}`.
- local: a bundled or local Hugging Face model on this machine (calltune.runtime.loading), a batch of prompts per generate call.
- openai: any OpenAI-compatible `/v1/chat/completions` (the `openai` client), one request per call, `concurrency` at once.
- gemini: Gemini on Vertex AI through google-genai, one request per call, `concurrency` at once.
The remote ones retry 429, 5xx, timeouts and dropped connections with exponential backoff and full jitter (the
clients' own retries are off, so every attempt is counted); anything else (bad request, auth) fails at once.
Keys and credentials are never logged, and an API key is sent only over https or to this machine.
"""
from __future__ import annotations

from pathlib import Path

from calltune.backends.gemini_generator import GeminiGenerator
from calltune.backends.generator_base import GenerateError, Generator, GeneratorSettings
from calltune.backends.local_generator import DEFAULT_LOCAL_MODEL, LocalGenerator
from calltune.backends.openai_generator import OpenAICompatGenerator

__all__ = ["DEFAULT_LOCAL_MODEL", "GenerateError", "Generator", "make_generator"]


def make_generator(cfg: GeneratorSettings, state_dir: Path) -> Generator:
    """The backend `cfg.backend` names (synthesize.*, judge.* or simulate.seller_*; only synthesize may be local)."""
    if cfg.backend == "local":
        return LocalGenerator(cfg, state_dir)
    if cfg.backend in ("openai", "gemini") and not cfg.model:
        raise ValueError(f"{cfg.setting('backend')}={cfg.backend} needs {cfg.setting('model')} (the model's name: the one "
                         f"the endpoint serves, or a Gemini model id such as gemini-2.5-flash)")
    if cfg.backend == "openai":
        return OpenAICompatGenerator(cfg)
    if cfg.backend == "gemini":
        return GeminiGenerator(cfg)
    raise ValueError(f"unknown {cfg.setting('backend')} {cfg.backend!r}")
