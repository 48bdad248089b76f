"""The generator interface: chat requests in, the same number of answers out, in order; its error and the retry
policy of the remote ones.

A request is `{"messages": [{"role": "system"|"user", "content"}], "temperature", "max_tokens", "seed"}`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

from calltune.backends.retry import Retrying
from calltune.config import JudgeConfig, SellerConfig, SynthesizeConfig

# The settings a generator is made from (synthesize, judge, simulate's seller): messages name each setting as
# `cfg.setting(field)` does.
GeneratorSettings = SynthesizeConfig | JudgeConfig | SellerConfig


class GenerateError(RuntimeError):
    """A generation request that failed for good (after its retries)."""


class Generator(Protocol):
    name: str          # backend, model (and weights, for local): part of the cache key, written on every synthetic example
    max_batch: int     # most requests in one generate() call
    concurrency: int   # generate() calls that may run at once
    counters: Counter  # requests (attempts), failures, retries, since the generator was made

    def generate(self, requests: list[dict]) -> list[str]: ...

    def close(self) -> None: ...


def retrying(cfg: GeneratorSettings, retryable: Callable[[BaseException], bool], service: str) -> Retrying:
    return Retrying(service=service, setting=cfg.setting("max_retries"), max_retries=cfg.max_retries,
                    backoff_s=cfg.retry_backoff_s, retryable=retryable, error=GenerateError)
