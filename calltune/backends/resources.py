"""Google Cloud resource names, `projects/P/locations/L/<collection>/<id>`, parsed in one place.

A secret's payload, `evaluate.model`, a Gemini model id and a Cloud Translation glossary may all be such a name; every
module that asks "is this a Vertex AI model, and in which project and location?" asks `ResourceName`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

_NAME = re.compile(r"projects/(?P<project>[^/\s]+)/locations/(?P<location>[^/\s]+)/(?P<collection>[^/\s]+)/(?P<id>[^/\s]+)")
MODEL_COLLECTIONS = ("endpoints", "models")  # what answers a Vertex AI generateContent or chat request


@dataclass(frozen=True)
class ResourceName:
    project: str
    location: str
    collection: str  # endpoints, models, tensorboards, glossaries, ...
    id: str

    @classmethod
    def parse(cls, text: str | os.PathLike | None, *collections: str) -> ResourceName | None:
        """The name `text` spells, in one of `collections` when any are given; None when it is no such name."""
        match = _NAME.fullmatch(os.fspath(text) if text else "")
        if not match or (collections and match["collection"] not in collections):
            return None
        return cls(match["project"], match["location"], match["collection"], match["id"])

    def __str__(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/{self.collection}/{self.id}"


def resource_id(text: str) -> str:
    """The last part of a resource name (E of projects/P/locations/L/endpoints/E), for short messages; any other
    text as it is."""
    name = ResourceName.parse(text)
    return name.id if name else text


def vertex_model(text: str | os.PathLike | None) -> ResourceName | None:
    """The Vertex AI endpoint or model `text` names (a tuned Gemini, a deployed open model), else None."""
    return ResourceName.parse(text, *MODEL_COLLECTIONS)


def is_vertex_model(text: str | os.PathLike | None) -> bool:
    return vertex_model(text) is not None


def spelled_as_resource(text: str | None) -> bool:
    """Whether `text` starts as a resource name does, whole or not: such a text is never a file path, and a
    malformed one gets an error that says which form it must take."""
    return str(text or "").startswith("projects/")
