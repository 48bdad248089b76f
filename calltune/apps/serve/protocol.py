"""The wire schema of `calltune serve`: OpenAI's chat completion request (the fields honoured), its errors and the
pieces of its answers. No FastAPI app and no model here: `chat` serves requests, `app` routes them."""
from __future__ import annotations

import json
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error answered in OpenAI's shape, {"error": {"message", "type", "param", "code"}}: every route of the app,
    the practice page's included, raises this one."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param, self.headers = \
            status, message, kind, code, param, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat completion request that the server honours; other fields are ignored."""
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1


def model_id(secret_id: str, version: int) -> str:
    """How the API names a served version: `<secret>/versions/<n>`."""
    return f"{secret_id}/versions/{version}"


def model_object(name: str, root: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "calltune", "root": root}


def finish(result) -> dict:
    """A choice's end: OpenAI's `finish_reason` (a customer hanging up is a "stop"), and the extension field
    `stop_reason`, "end_of_call" when the customer ended the call (the reply said the end-of-call marker the model
    learned), else null. vLLM's OpenAI server has a `stop_reason` field in the same place."""
    ended = result.finish_reason == "end_of_call"
    return {"finish_reason": "stop" if ended else result.finish_reason, "stop_reason": "end_of_call" if ended else None}


def usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def sse(payload: dict | str) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
