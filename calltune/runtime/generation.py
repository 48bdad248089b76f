"""Batched generation with per-request settings and streaming.

Many requests go through one `model.generate` call: prompts left-padded (every row's next token sits in the last
column), one KV cache. A causal model reads each prompt alone first (no padding) and the batch starts from those
caches, left-padded into one: on a CPU reading the prompts takes most of the time, and the batch then pays for
their real tokens only, not for the padding up to the longest (benchmarks/serve_throughput.py). With a
`PrefixCache`, a prompt that starts like one read lately reads only the rest.

Each row keeps its own settings: `max_new_tokens`, stop strings and cancellation end that row alone (a per-row
stopping criterion), and a sampled row draws from its own seeded generator at its own temperature and top-p (a
logits processor that leaves greedy rows untouched), so a seeded request gets the same reply whatever else shares
its batch. New text reaches `on_text` as it is generated.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer


@dataclass
class Request:
    prompt: list[int]
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # sampling only; None: drawn from torch's global generator (transformers.set_seed)
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None  # called with each new piece of the reply
    cancelled: Callable[[], bool] | None = None  # polled every step: True ends the row ("cancelled")


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string), "length" (max_new_tokens) or "cancelled"


class _Sampler(LogitsProcessor):
    """Samples the rows that ask for it; generate runs greedy, so a row left with one finite logit takes it."""

    def __init__(self, requests: list[Request], device):
        self.rows = [(i, r, torch.Generator(device=device).manual_seed(
            r.seed if r.seed is not None else int(torch.randint(1 << 62, ()).item())))
            for i, r in enumerate(requests) if r.temperature > 0]

    def __call__(self, input_ids, scores):
        for i, r, gen in self.rows:
            probs = torch.softmax(scores[i].float() / r.temperature, -1)
            if r.top_p < 1:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(-1) - sorted_probs >= r.top_p  # the nucleus keeps the first token
                probs[order[outside]] = 0
            token = torch.multinomial(probs, 1, generator=gen)
            scores[i] = torch.where(torch.arange(scores.shape[1], device=scores.device) == token, 0.0, -torch.inf)
        return scores


class _Rows(StoppingCriteria):
    """Per-row bookkeeping after each step: the reply so far, stop strings, max_new_tokens, cancellation, and the
    streamed text (held back while it could still become a stop string or end in whitespace)."""

    def __init__(self, requests: list[Request], tokenizer, eos: set[int]):
        self.requests, self.tokenizer, self.eos = requests, tokenizer, eos
        self.tokens: list[list[int]] = [[] for _ in requests]
        self.text = [""] * len(requests)
        self.sent = [0] * len(requests)
        self.finish: list[str | None] = [None] * len(requests)

    def __call__(self, input_ids, scores, **kwargs):
        last = input_ids[:, -1].tolist()
        for i, r in enumerate(self.requests):
            if self.finish[i]:
                continue
            self.tokens[i].append(last[i])
            if last[i] in self.eos:
                self._end(i, "stop")
                continue
            self.text[i] = self.tokenizer.decode(self.tokens[i], skip_special_tokens=True).lstrip()
            cut = min((k for k in (self.text[i].find(s) for s in r.stop if s) if k >= 0), default=-1)
            if cut >= 0:
                self.text[i] = self.text[i][:cut]
                self._end(i, "stop")
            elif len(self.tokens[i]) >= r.max_new_tokens:
                self._end(i, "length")
            elif r.cancelled and r.cancelled():
                self._end(i, "cancelled")
            else:
                self._stream(i, hold=max((len(s) for s in r.stop), default=1) - 1)
        return torch.tensor([f is not None for f in self.finish], device=input_ids.device)

    def _stream(self, i: int, hold: int) -> None:
        text, on_text = self.text[i], self.requests[i].on_text
        if on_text is None:
            return
        end = len(text.rstrip()) if not text.endswith("\ufffd") else text.rfind("\ufffd")  # a partial character
        end = min(end, len(text) - hold)
        if end > self.sent[i]:
            on_text(text[self.sent[i]:end])
            self.sent[i] = end

    def _end(self, i: int, reason: str) -> None:
        self.finish[i] = reason
        self.text[i] = self.text[i].strip()
        self._stream(i, hold=0)


class PrefixCache:
    """The KV cache of prompts read lately, for one model: a prompt that starts like one of them reads only the
    rest. The next turn of a chat, or of a simulated call, repeats the whole conversation so far. An entry that a
    newer prompt extends is dropped; past `max_tokens` in all, the least recently used go. One generation thread
    uses it at a time."""

    def __init__(self, max_tokens: int = 8192):
        self.max_tokens = max_tokens
        self.read_tokens = self.reused_tokens = 0  # prompt tokens read through the cache, and those it held already
        self._entries: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    def longest(self, tokens: tuple[int, ...]) -> tuple[int, list]:
        """(length, per-layer keys and values) of the longest cached start of `tokens`; (0, []) when none."""
        best, found = 0, None
        for key in self._entries:
            n = len(os.path.commonprefix([key, tokens]))
            if n > best:
                best, found = n, key
        if found is None:
            return 0, []
        self._entries.move_to_end(found)
        return best, self._entries[found]

    def add(self, tokens: tuple[int, ...], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for key in [k for k in self._entries if tokens[:len(k)] == k]:
            del self._entries[key]
        self._entries[tokens] = layers
        kept = sum(map(len, self._entries))
        while kept > self.max_tokens and len(self._entries) > 1:
            kept -= len(self._entries.popitem(last=False)[0])


def _read(model, tokens: list[int], prefixes: PrefixCache | None) -> DynamicCache:
    """The KV cache of `tokens` (one row, no padding), from the longest cached start on."""
    n, layers = prefixes.longest(tuple(tokens)) if prefixes is not None else (0, [])
    n = min(n, len(tokens))
    cache = DynamicCache([(k[:, :, :n], v[:, :, :n]) for k, v in layers]) if n else None
    if n < len(tokens):
        cache = model(input_ids=torch.tensor([tokens[n:]], device=model.device), cache=cache, use_cache=True,
                      logits_to_keep=1).cache
    if prefixes is not None:
        prefixes.read_tokens += len(tokens)
        prefixes.reused_tokens += n
    return cache


def _prefilled(model, requests: list[Request], width: int, prefixes: PrefixCache | None) -> DynamicCache | None:
    """The KV cache of every prompt but its last token, each read alone (or from `prefixes`), left-padded to
    `width - 1` positions; None where that does not apply (one request and no prefix cache, an encoder-decoder, a
    one-token prompt, a cache other than plain layers, such as sliding-window ones)."""
    if (len(requests) < 2 and prefixes is None) or model.config.is_encoder_decoder \
            or min(len(r.prompt) for r in requests) < 2:
        return None
    rows = []
    for r in requests:
        cache = _read(model, r.prompt[:-1], prefixes)
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        rows.append([(layer.keys, layer.values) for layer in cache.layers])
        if prefixes is not None:
            prefixes.add(tuple(r.prompt[:-1]), rows[-1])

    def padded(tensors):  # (1, heads, length, dim) each -> (rows, heads, width - 1, dim), padding on the left
        return torch.cat([torch.nn.functional.pad(t, (0, 0, width - 1 - t.shape[2], 0)) for t in tensors])

    return DynamicCache([(padded([row[i][0] for row in rows]), padded([row[i][1] for row in rows]))
                         for i in range(len(rows[0]))])


def generate(model, tokenizer, requests: list[Request], prefixes: PrefixCache | None = None) -> list[Generation]:
    """One batched `generate` over `requests`; their generations, in order. `prefixes`: the model's prefix cache,
    read and filled (None: every prompt is read in full)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(r.prompt) for r in requests)
    ids = torch.full((len(requests), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, r in enumerate(requests):  # left padding: generation continues from the last column of every row
        ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
        attention[i, width - len(r.prompt):] = 1
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
        else tokenizer.eos_token_id
    eos = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
    rows = _Rows(requests, tokenizer, eos)
    with torch.inference_mode():
        model.generate(input_ids=ids.to(model.device), attention_mask=attention.to(model.device),
                       cache=_prefilled(model, requests, width, prefixes),
                       max_new_tokens=max(r.max_new_tokens for r in requests), use_cache=True, do_sample=False,
                       temperature=None, top_p=None, top_k=None, eos_token_id=sorted(eos), pad_token_id=pad,
                       logits_processor=LogitsProcessorList([_Sampler(requests, model.device)]),
                       stopping_criteria=StoppingCriteriaList([rows]))
    return [Generation(rows.text[i], len(r.prompt), len(rows.tokens[i]), rows.finish[i] or "length")
            for i, r in enumerate(requests)]
