"""google-genai in Vertex mode, for every Gemini caller: the synthesis generator, the Gemini tuner and the endpoint
responder (serve, chat, batch inference)."""
from __future__ import annotations

import importlib.util


def vertex_client(project: str | None, location: str, base_url: str = "", **http_options):
    """A google-genai Client in Vertex mode. An http:// `base_url` (a local fake) gets a placeholder token, so real
    credentials never go over plain HTTP; otherwise Application Default Credentials. `http_options`: more
    types.HttpOptions fields (timeout in ms, retry_options)."""
    from google import genai
    from google.genai import types

    credentials = None
    if base_url.startswith("http://"):
        from google.oauth2.credentials import Credentials

        credentials = Credentials(token="placeholder")
    return genai.Client(vertexai=True, project=project or None, location=location, credentials=credentials,
                        http_options=types.HttpOptions(base_url=base_url or None, **http_options))


def to_contents(messages: list[dict]) -> tuple[str | None, list]:
    """Chat messages (system/user/assistant) -> (system instruction or None, Gemini contents: user and model)."""
    from google.genai import types

    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    contents = [types.Content(role="user" if m["role"] == "user" else "model", parts=[types.Part(text=m["content"])])
                for m in messages if m["role"] != "system"]
    return system or None, contents


def transient(exc: BaseException) -> bool:
    """Worth another attempt: 408, 429, 5xx, and timeouts, refused or dropped connections."""
    from google.genai import errors

    transport = tuple(importlib.import_module(m).TransportError for m in ("httpx", "httpx2")  # genai uses either
                      if importlib.util.find_spec(m))
    return (isinstance(exc, errors.APIError) and (exc.code in (408, 429) or (exc.code or 0) >= 500)) \
        or isinstance(exc, transport)
