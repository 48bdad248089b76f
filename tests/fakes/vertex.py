"""A fake Vertex AI `generateContent` (REST), the call google-genai makes for an endpoint or a tuned model.

The reply names the model resource's last segment and echoes the last user text (`<id> says: <text>`), so a
test sees which model answered what; `streamGenerateContent` (`?alt=sse`) sends the same reply word by word.
Requests are checked as the service checks them: contents must be non-empty and use only the roles user and model,
and every part needs text.
"""
from __future__ import annotations

import json

from . import ApiError, FakeGoogleApi, Raw


class FakeVertex(FakeGoogleApi):
    routes = [("POST", r"/(?P<api>v1|v1beta1)/(?P<model>projects/[^/]+/locations/[^/]+/(endpoints|models)/[^/:]+)"
                       r":generateContent", "generate_content"),
              ("POST", r"/(?P<api>v1|v1beta1)/(?P<model>projects/[^/]+/locations/[^/]+/(endpoints|models)/[^/:]+)"
                       r":streamGenerateContent", "stream_generate_content"),
              ("GET", r"/v1/(?P<model>projects/[^/]+/locations/[^/]+/endpoints/[^/:]+)", "get_endpoint")]

    def get_endpoint(self, match, body) -> dict:
        """A tuned Gemini's endpoint, as GetEndpoint shows it: no calltune labels (calltune serve asks, to tell it
        from an endpoint that calltune's deploy made)."""
        return {"name": match["model"], "displayName": match["model"].rsplit("/", 1)[1], "labels": {}}

    def generate_content(self, match, body: dict) -> dict:
        contents = (body or {}).get("contents") or []
        if not contents:
            raise ApiError(400, "contents is required")
        for c in contents:
            if c.get("role") not in ("user", "model") or not all("text" in p for p in c.get("parts") or [{}]):
                raise ApiError(400, f"invalid content {c!r}")
        if contents[-1]["role"] != "user":
            raise ApiError(400, "the last content must be the user's")
        last_user = contents[-1]["parts"][-1]["text"]
        text = f"{match['model'].rsplit('/', 1)[1]} says: {last_user}"
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1}}

    def stream_generate_content(self, match, body: dict) -> Raw:
        whole = self.generate_content(match, body)
        words = whole["candidates"][0]["content"]["parts"][0]["text"].split(" ")
        events = []
        for i, word in enumerate(words):
            last = i == len(words) - 1
            chunk = {"candidates": [{"content": {"role": "model", "parts": [{"text": word + ("" if last else " ")}]},
                                     **({"finishReason": "STOP"} if last else {})}]}
            events.append("data: " + json.dumps({**chunk, **({"usageMetadata": whole["usageMetadata"]} if last else {})}))
        return Raw(("\n\n".join(events) + "\n\n").encode(), "text/event-stream")
