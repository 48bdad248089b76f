"""Backends: one small interface per step that has variants, picked by config name. Each family has a base module
(its protocol and errors), implementations that import only the base, and a factory that imports them:

- registries: registry_base, sqlite_registry, secret_manager; factory `registry.open_registry`
- translators: translator_base, local_translate, google_translate; factory `translators.make_translator`
- generators: generator_base, openai_generator, gemini_generator, local_generator; factory `generators.make_generator`
- tuners: gemini_tuner (and calltune.tune for hf-lora); factory `tuners.tune`
Shared by them: retry (the one retry policy), genai (google-genai clients).
"""
from calltune.backends.retry import DEADLINE_S, MAX_BACKOFF_S, Retrying, brief  # the import path other modules use

__all__ = ["DEADLINE_S", "MAX_BACKOFF_S", "Retrying", "brief"]
