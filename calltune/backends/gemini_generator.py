"""Generator backend: Gemini on Vertex AI through google-genai, one request per call, `concurrency` at once."""
from __future__ import annotations

from calltune.backends.genai import to_contents, transient, vertex_client
from calltune.backends.generator_base import GenerateError, GeneratorSettings, retrying
from calltune.backends.resources import vertex_model
from calltune.backends.retry import brief


class GeminiGenerator:
    max_batch = 1

    def __init__(self, cfg: GeneratorSettings):
        from google.genai import types  # only when this backend is used

        p = cfg.setting
        project, location = cfg.project, cfg.location
        if name := vertex_model(cfg.model):  # an endpoint or tuned model names its own project and location
            project, location = name.project, name.location
        if not project:
            raise ValueError(f"{p('backend')}=gemini needs {p('project')} (the Google Cloud project to bill)")
        try:
            self._client = vertex_client(project, location, cfg.base_url, timeout=int(cfg.timeout_s * 1000))
        except Exception as exc:  # google.auth's DefaultCredentialsError, mostly
            raise GenerateError(f"{p('backend')}=gemini could not start a client: {brief(exc)}; run "
                                f"`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS") from exc
        self.name = f"gemini:{cfg.model}"
        self.concurrency = cfg.max_concurrency
        self._cfg, self._types = cfg, types
        self._retrying = retrying(cfg, transient, "Gemini")
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
