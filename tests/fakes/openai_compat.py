"""A fake OpenAI-compatible `POST /v1/chat/completions`, for tests that drive the real `openai` client.

Built on the loopback fake base (tests/fakes/__init__.py): the same fault injection (429, 500, HANG...), request
log and bounds. Requests are checked as the service checks them: a model, a non-empty list of messages with known
roles and string contents, temperature in 0..2, a positive max_tokens; with `api_key` set, the request must carry
`Authorization: Bearer <api_key>` (else 401).

What the "model" answers: the next of `replies` (in arrival order) while there are any, then `default_reply`:
for a prompt holding `Fact: TERM: DEFINITION`, the seller asks what the term stands for and the customer
answers with the definition; otherwise a copy of the first call excerpt in the prompt (a lazy model
that repeats its examples).
"""
from __future__ import annotations

import re
import threading
import time
from collections import deque

from . import ApiError, FakeGoogleApi

ROLES = {"system", "developer", "user", "assistant"}
_FACT = re.compile(r"^Fact: (?P<term>[^:\n]+): (?P<definition>.+)$", re.MULTILINE)
_EXCERPT = re.compile(r"Excerpts of real calls:\n\n(?P<first>.*?)\n\n---", re.DOTALL)


def default_reply(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    if fact := _FACT.search(prompt):
        return f"Seller: What does {fact['term']} stand for?\nCustomer: {fact['term']} is short for {fact['definition']}"
    excerpt = _EXCERPT.search(prompt)
    return excerpt["first"] if excerpt else "I cannot help with that."


class FakeOpenAI(FakeGoogleApi):
    routes = [("POST", r"/v1/chat/completions", "chat_completions")]

    def __init__(self, api_key: str | None = None, replies: list[str] = (), **kw):
        super().__init__(**kw)
        self.api_key = api_key
        self.replies = deque(replies)
        self._auth = threading.local()  # the Authorization header of the request this thread is serving

    def _handler_class(self):
        fake, base = self, super()._handler_class()

        class Handler(base):
            def _handle(self):
                fake._auth.value = self.headers.get("Authorization")
                super()._handle()

            do_GET = do_POST = _handle

        return Handler

    def chat_completions(self, match, body: dict) -> dict:
        if self.api_key is not None and getattr(self._auth, "value", None) != f"Bearer {self.api_key}":
            raise ApiError(401, "Incorrect API key provided")
        body = body or {}
        messages = body.get("messages")
        if not body.get("model"):
            raise ApiError(400, "you must provide a model parameter")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty array")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ApiError(400, f"invalid message {m!r}")
        if not 0 <= body.get("temperature", 1) <= 2:
            raise ApiError(400, "temperature must be between 0 and 2")
        if "max_tokens" in body and not (isinstance(body["max_tokens"], int) and body["max_tokens"] > 0):
            raise ApiError(400, "max_tokens must be a positive integer")
        with self._lock:
            text = self.replies.popleft() if self.replies else None
        text = default_reply(body) if text is None else text
        return {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def bodies(self) -> list[dict]:
        """The bodies of the requests answered 200, in arrival order."""
        return [r.body for r in self.answered()]
