"""A local model folder as a responder (`LocalResponder`), batched: the one responder that needs torch, in a module
of its own so that serving a remote model never imports it (calltune.apps.serve.watcher.load_responder imports it
only for a file:// model).

A local model's requests wait in a queue, and one worker thread decodes them together
(`calltune.runtime.generation.Batch`), one token a step for all: a request that comes while others are being generated
joins at the next step, and one that ends is answered at once. Once the model is idle, the first request waits
`batch_wait_s` for company.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from calltune.config import SplitConfig
from calltune.conversation.schema import Example
from calltune.runtime.encoding import prompt_tokens
from calltune.runtime.generation import Batch, PrefixCache, Request, generate
from calltune.runtime.guardrails import Guardrails, Tries
from calltune.runtime.loading import load_model, read_model_card
from calltune.runtime.responders import card_split, earlier_turns
from calltune.runtime.sampling import Generation, Sampling

log = logging.getLogger(__name__)


class _Guarded:
    """A request's future while guarded decoding tries it (calltune.runtime.guardrails): each try's end comes here
    (the worker calls `set_result`), and a try that breaks a rule queues the next one instead of answering. A
    streamed reply's pieces are held until a try passes, then sent as they were generated."""

    def __init__(self, responder: LocalResponder, future: Future, on_text, earlier: list[str]):
        self.responder, self.future, self.on_text, self.earlier = responder, future, on_text, earlier
        self.pieces: list[list[str]] = []
        self.started = False

    def request(self, request: Request) -> Request:
        """The try's request, its pieces kept aside."""
        pieces: list[str] = []
        self.pieces.append(pieces)
        self.current = replace(request, on_text=pieces.append if self.on_text else None)
        return self.current

    def set_running_or_notify_cancel(self) -> bool:
        if self.started:  # a retry of a running request
            return True
        self.started = True
        return self.future.set_running_or_notify_cancel()

    def set_exception(self, exc: BaseException) -> None:
        self.future.set_exception(exc)

    def set_result(self, generation: Generation) -> None:
        outcome = self.responder.tries.settle(id(self), self.current, generation, self.earlier)
        if isinstance(outcome, Generation):
            if outcome.guard.retries:
                self.responder.retries += outcome.guard.retries
                log.info("guarded decoding: %d retries (%s), %s", outcome.guard.retries,
                         "; ".join(",".join(b) for b in outcome.guard.broken if b),
                         "passed" if outcome.guard.passed else "kept the try breaking the fewest rules")
            for piece in self.pieces[outcome.guard.kept] if self.on_text else ():
                self.on_text(piece)
            self.future.set_result(outcome)
        else:
            self.responder._queue.put((self.request(outcome), self))


class LocalResponder:
    """A local model folder. `split`: the windowing used when the model card does not record it (older models).
    `guardrails`: guarded decoding with the rules the model card records (False: replies as generated)."""

    def __init__(self, model_dir: Path, split: SplitConfig | None = None, max_batch: int = 16,
                 max_prompt_tokens: int = 0, batch_wait_s: float = 0.0, guardrails: bool = True):
        self.model, self.tokenizer = load_model(model_dir)
        card = read_model_card(model_dir) or {}
        self.system = card.get("system_prompt", "")
        rails = Guardrails.from_card(card, guardrails)
        self.tries = Tries(rails, self.tokenizer) if rails is not None else None
        self.retries = 0  # guarded decoding's retries so far, for the log
        self.split = card_split(card, split)
        if card and "split" not in card:
            log.warning("%s: the model card does not record its split settings; windowing with history_turns=%d",
                        Path(model_dir).name, self.split.history_turns)
        config = self.model.config
        self.encoder_decoder = bool(config.is_encoder_decoder)
        self.context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) \
            or min(self.tokenizer.model_max_length, 1 << 16)
        self.max_prompt_tokens = max_prompt_tokens or self.context
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self.prefixes = PrefixCache()  # a chat's next turn reads only what the conversation added
        self._closed = False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run, name="calltune-generate", daemon=True)
        self._worker.start()

    def prompt(self, example: Example, max_tokens: int) -> list[int]:
        """The prompt tokens; the oldest history goes first when the prompt and `max_tokens` exceed the context
        (PromptTooLong when even no history is too long)."""
        room = self.context - max_tokens if not self.encoder_decoder else self.context
        return prompt_tokens(example, self.tokenizer, self.encoder_decoder, min(room, self.max_prompt_tokens))

    def start(self, example: Example, sampling: Sampling, on_text=None, cancelled=None,
              earlier: list[str] | None = None) -> Future[Generation]:
        """The reply's future. `earlier`: the customer's own earlier turns of the call, which guarded decoding checks
        the reply against (None: those in the example's window)."""
        request = Request(self.prompt(example, sampling.max_tokens), sampling.max_tokens, sampling.temperature,
                          sampling.top_p, sampling.seed, sampling.stop, on_text, cancelled,
                          end_of_call=self.split.end_of_call)
        future: Future[Generation] = Future()
        if self.tries is None:
            self._queue.put((request, future))
        else:
            guarded = _Guarded(self, future, on_text, earlier_turns(example) if earlier is None else earlier)
            self._queue.put((guarded.request(request), guarded))
        return future

    def close(self) -> None:
        """Let the worker stop once no request has come for a second: the requests already queued (and any a
        request handler that picked this model just before it was replaced sends now) are still answered."""
        self._closed = True
        self._queue.put(None)  # wakes the worker

    def _run(self) -> None:
        batch = Batch(self.model, self.tokenizer, self.prefixes) if Batch.fits(self.model) else None
        running: dict[int, Future] = {}  # id(request) -> its future, for the requests in `batch`
        while True:
            items = self._waiting(idle=not running, room=self.max_batch - len(running))
            if items is None:
                return
            if not items and not running:
                continue
            if items:
                log.debug("%d requests join, %d generating together", len(items), len(running) + len(items))
            running.update((id(r), f) for r, f in items)
            try:
                if batch is None:  # a model Batch does not fit: one generate call for the requests taken together
                    requests = [r for r, _ in items]
                    ended = list(zip(requests, generate(self.model, self.tokenizer, requests, self.prefixes)))
                else:
                    ended = batch.add([r for r, _ in items])
                    if batch:
                        ended += batch.step()
            except Exception as exc:  # every request in flight gets the error, the worker goes on
                log.exception("generation failed for %d requests", len(running))
                for future in running.values():
                    future.set_exception(exc)
                running.clear()
                batch = Batch(self.model, self.tokenizer, self.prefixes) if batch is not None else None
                continue
            for request, generation in ended:
                running.pop(id(request)).set_result(generation)

    def _waiting(self, idle: bool, room: int) -> list | None:
        """The requests to start now, at most `room`. Idle: wait for one (None once closed and no request came for
        a second), then up to `batch_wait_s` for company. Busy: only those already waiting, so the batch's next
        step is not held up."""
        taken: list = []
        until = None
        while len(taken) < room:
            try:
                if idle and not taken:
                    item = self._queue.get(timeout=1.0 if self._closed else None)
                else:
                    until = until or time.monotonic() + (self.batch_wait_s if idle else 0.0)
                    remaining = until - time.monotonic()
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None if idle and not taken else taken
            if item is None:  # close()'s wake-up
                continue
            request, future = item
            if request.cancelled and request.cancelled():  # gave up while waiting
                future.set_result(Generation("", len(request.prompt), 0, "cancelled"))
            elif future.set_running_or_notify_cancel():
                taken.append(item)
        return taken
