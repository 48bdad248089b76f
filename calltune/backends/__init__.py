"""Backends: one small interface per step that has variants, picked by config name. Each family has a base module
(its protocol and errors), implementations that import only the base, and a factory that imports them:

- registries: registry_base, sqlite_registry, secret_manager; factory `registry.open_registry`
- translators: translator_base, local_translate, google_translate; factory `translators.make_translator`
- generators: generator_base, openai_generator, gemini_generator, local_generator; factory `generators.make_generator`
Shared by them: retry (the one retry policy), genai (google-genai clients), resources (Google resource names), and
vertex_endpoint (a model on a Vertex AI endpoint). The tuners are a layer of their own, calltune.training.

Where they sit among the layers: every module here is a thin client that calls a service, below the runtime (which
asks genai and vertex_endpoint for a Vertex model's replies), except local_generator, which runs a local model through
calltune.runtime, and so the generators' factory: those two sit above the runtime.
"""
from calltune.backends.retry import DEADLINE_S, MAX_BACKOFF_S, Retrying, brief  # the import path other modules use

__all__ = ["DEADLINE_S", "MAX_BACKOFF_S", "Retrying", "brief"]
