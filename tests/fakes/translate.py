"""A fake Cloud Translation v3 `translateText` (REST), checked the way the real service checks requests.

The "translation" is deterministic and visibly different from the input: `[<target>] ` + the text upper-cased,
with glossary terms kept exactly as written. Without `mimeType: text/plain` the service treats the input as HTML
and, like the real one, answers with HTML entities (`'` -> `&#39;`). Requests over the API limits (1024
contents, 30,000 code points) are refused with 400, as are unknown glossaries, glossaries on the global
location and models of another project or location.
"""
from __future__ import annotations

import html
import re

from . import ApiError, FakeGoogleApi

MAX_CONTENTS = 1024
MAX_CODEPOINTS = 30_000
MODELS = ("general/nmt", "general/translation-llm")
_PT_HINT = re.compile(r"[ãõçáéêíóôú]|\b(não|você|que|de|para|bom|dia)\b", re.IGNORECASE)


def fake_translation(text: str, target: str, terms: tuple[str, ...] = (), html_mode: bool = False) -> str:
    parts = re.split(f"({'|'.join(map(re.escape, terms))})", text) if terms else [text]
    out = "".join(p if p in terms else p.upper() for p in parts)
    return f"[{target}] " + (html.escape(out).replace("&#x27;", "&#39;") if html_mode else out)


def detect(text: str) -> str:
    return "pt" if _PT_HINT.search(text) else "en"


class FakeTranslation(FakeGoogleApi):
    routes = [("POST", r"/v3/projects/(?P<project>[^/:]+)(?:/locations/(?P<location>[^/:]+))?:translateText", "translate_text")]

    def __init__(self, glossaries: dict[str, list[str]] | None = None, **kw):
        """glossaries: full resource name -> the terms it keeps as they are."""
        super().__init__(**kw)
        self.glossaries = glossaries or {}

    def translate_text(self, match: re.Match, body: dict) -> dict:
        project, location = match["project"], match["location"] or "global"
        contents, target = body.get("contents") or [], body.get("targetLanguageCode")
        if not contents or not target:
            raise ApiError(400, "contents and targetLanguageCode are required")
        if len(contents) > MAX_CONTENTS:
            raise ApiError(400, f"Number of contents {len(contents)} exceeds the limit of {MAX_CONTENTS}")
        if sum(map(len, contents)) > MAX_CODEPOINTS:
            raise ApiError(400, f"Text too long: {sum(map(len, contents))} code points, the limit is {MAX_CODEPOINTS}")
        prefix = f"projects/{project}/locations/{location}/"
        model = body.get("model", "")
        if model and model not in [prefix + "models/" + m for m in MODELS]:
            raise ApiError(400, f"Invalid model {model!r} for {prefix}")
        glossary = (body.get("glossaryConfig") or {}).get("glossary", "")
        if glossary:
            if location == "global":
                raise ApiError(400, "Glossaries need a non-global location")
            if not glossary.startswith(prefix + "glossaries/"):
                raise ApiError(400, f"Glossary {glossary!r} is not in {prefix}")
            if glossary not in self.glossaries:
                raise ApiError(404, f"Glossary not found: {glossary}")
        html_mode = body.get("mimeType", "text/html") != "text/plain"
        source = body.get("sourceLanguageCode", "")

        def one(text: str, terms: tuple[str, ...] = ()) -> dict:
            out = {"translatedText": fake_translation(text, target, terms, html_mode), "model": model}
            if not source:
                out["detectedLanguageCode"] = detect(text)
            return out

        response = {"translations": [one(t) for t in contents]}
        if glossary:
            terms = tuple(self.glossaries[glossary])
            response["glossaryTranslations"] = [one(t, terms) for t in contents]
        return response

    def sent_texts(self) -> list[str]:
        """Every text of every request answered 200, in arrival order."""
        return [t for r in self.answered() for t in r.body["contents"]]
