"""What answers a conversation as the customer: the interface (`Responder`), and the responders of remote models,
a Vertex AI endpoint or tuned Gemini. A local model folder answers through `calltune.runtime.local_responder`, the
one that needs torch, kept out of this module so that serving a remote model imports no torch.

Every responder takes a windowed example (`window`: the split settings the model was trained with, from its model
card) and a `Sampling`, and returns a `Generation` through a Future, so the server, the REPL and batch inference treat
them alike.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol

from calltune.backends.genai import to_contents, vertex_client
from calltune.backends.resources import vertex_model
from calltune.config import SplitConfig
from calltune.conversation.render import to_messages
from calltune.conversation.schema import Example, Turn
from calltune.runtime.encoding import window
from calltune.runtime.sampling import Generation, Sampling

log = logging.getLogger(__name__)


class Responder(Protocol):
    system: str  # the persona used when a conversation brings none
    split: SplitConfig  # how conversations are windowed

    def start(self, example: Example, sampling: Sampling, on_text: Callable[[str], None] | None = None,
              cancelled: Callable[[], bool] | None = None, earlier: list[str] | None = None) -> Future[Generation]: ...

    def close(self) -> None: ...


def conversation(responder: Responder, system: str | None, turns: list[Turn]) -> Example:
    """The responder's windowed example for the customer's next line after `turns` (ending with the seller's line;
    empty: the customer answers the phone). `system` None: the responder's own persona."""
    return window(responder.system if system is None else system, turns, responder.split)


def reply(responder: Responder, example: Example, sampling: Sampling | None = None) -> Generation:
    return responder.start(example, sampling or Sampling()).result()


def end_of_call(generation: Generation, marker: str) -> Generation:
    """A remote model's reply with the end-of-call marker cut off (finish_reason end_of_call): a service's stop
    sequences do not say which one matched, and the model ends its turn right after the marker anyway."""
    cut = generation.text.find(marker) if marker else -1
    if cut < 0:
        return generation
    return replace(generation, text=generation.text[:cut].strip(), finish_reason="end_of_call")


def earlier_turns(example: Example) -> list[str]:
    """The customer's own earlier turns an example's window holds (what guarded decoding checks a reply against
    when the caller has no longer record of the call)."""
    return [t["text"] for t in example.get("history", []) if t["role"] == "customer"]


def card_split(card: dict | None, fallback: SplitConfig | None = None) -> SplitConfig:
    """The windowing a model was trained with (its card), `fallback` for models whose card does not record it (and
    plain models). Only a card that records an end-of-call marker gives one: a model tuned before the marker
    existed, or never tuned here, did not learn it."""
    if card and "split" in card:
        return SplitConfig(**{"end_of_call": "", **card["split"]})
    return (fallback or SplitConfig()).model_copy(update={"end_of_call": ""})


class GeminiResponder:
    """A Vertex AI endpoint or tuned Gemini model, through google-genai (Vertex mode); requests run in parallel
    threads (the endpoint batches on its side)."""

    system = ""

    def __init__(self, resource: str, base_url: str = "", split: SplitConfig | None = None, max_concurrency: int = 8):
        from google.genai import types

        name = vertex_model(resource)
        if name is None:
            raise ValueError("the endpoint is not a Vertex AI endpoint or model resource name")
        self.resource, self.split, self._types = resource, split or SplitConfig(), types
        self._client = vertex_client(name.project, name.location, base_url, timeout=120_000,
                                     retry_options=types.HttpRetryOptions(attempts=5))
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="calltune-vertex")

    def start(self, example: Example, sampling: Sampling, on_text=None, cancelled=None,
              earlier=None) -> Future[Generation]:
        return self._pool.submit(self._generate, example, sampling, on_text, cancelled)

    def _generate(self, example: Example, sampling: Sampling, on_text, cancelled) -> Generation:
        """Whole, or streamed when the caller takes the text as it comes; a request cancelled while it waited for a
        thread is never sent, and a streamed one stops reading at the next piece (google-genai cannot abort a
        whole answer in flight)."""
        if cancelled and cancelled():
            return Generation("", 0, 0, "cancelled")
        system, contents = to_contents(to_messages({**example, "target": ""})["messages"][:-1])
        extra = {"top_p": sampling.top_p} if sampling.top_p < 1 else {}
        extra |= {"seed": sampling.seed} if sampling.seed is not None else {}
        extra |= {"stop_sequences": list(sampling.stop)} if sampling.stop else {}
        request = dict(model=self.resource, contents=contents, config=self._types.GenerateContentConfig(
            system_instruction=system, max_output_tokens=sampling.max_tokens, temperature=sampling.temperature,
            **extra))
        if on_text is None:
            responses = [self._client.models.generate_content(**request)]
        else:
            responses = self._client.models.generate_content_stream(**request)
        text, usage, finish = "", None, ""
        for response in responses:
            if cancelled and cancelled():
                return Generation(text.strip(), 0, 0, "cancelled")
            piece = response.text or ""
            if on_text and piece:
                on_text(piece)
            text += piece
            usage = response.usage_metadata or usage
            if response.candidates and getattr(response.candidates[0], "finish_reason", None):
                finish = str(response.candidates[0].finish_reason)
        return end_of_call(Generation(text.strip(), (usage and usage.prompt_token_count) or 0,
                                      (usage and usage.candidates_token_count) or 0,
                                      "length" if "MAX_TOKENS" in finish else "stop"), self.split.end_of_call)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


class EndpointResponder:
    """A model served on a Vertex AI endpoint by the vLLM container (deploy.target=vertex-endpoint), through its
    OpenAI-compatible chat completions (calltune.backends.vertex_endpoint.EndpointChat); requests run in parallel
    threads (vLLM batches them on its side), streamed when the caller wants the text as it comes."""

    system = ""

    def __init__(self, endpoint: str, base_url: str = "", split: SplitConfig | None = None, max_concurrency: int = 8,
                 chat=None):
        from calltune.backends.vertex_endpoint import EndpointChat

        self.split = split or SplitConfig()
        self._chat = chat or EndpointChat(endpoint, api_endpoint=base_url)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="calltune-endpoint")

    def start(self, example: Example, sampling: Sampling, on_text=None, cancelled=None,
              earlier=None) -> Future[Generation]:
        return self._pool.submit(self._generate, example, sampling, on_text, cancelled)

    def _generate(self, example: Example, sampling: Sampling, on_text, cancelled) -> Generation:
        messages = to_messages({**example, "target": ""})["messages"][:-1]
        settings = dict(max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                        seed=sampling.seed, stop=list(sampling.stop) or None)
        if on_text is None:
            out = self._chat.complete(messages, **settings)
            usage = out.usage
            return end_of_call(Generation((out.choices[0].message.content or "").strip(),
                                          usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0,
                                          "length" if out.choices[0].finish_reason == "length" else "stop"),
                               self.split.end_of_call)
        text, finish, usage = "", "stop", None
        for chunk in self._chat.complete(messages, stream=True, **settings):
            usage = chunk.usage or usage
            if cancelled and cancelled():
                finish = "cancelled"
                break
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                on_text(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason == "length":
                finish = "length"
        # stripped as every other path strips it: a reply never depends on the mode
        return end_of_call(Generation(text.strip(), usage.prompt_tokens if usage else 0,
                                      usage.completion_tokens if usage else 0, finish), self.split.end_of_call)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
