"""Batched generation with per-request settings and streaming.

A causal model decodes its requests in a `Batch`: one forward a step for every request in it, a request joining
between two steps and leaving when it ends (continuous batching). Each prompt is read alone (no padding: on a CPU
reading the prompts takes most of the time, and the batch then pays for their real tokens only) and its KV cache
left-padded into the batch's. With a `PrefixCache`, a prompt that starts like one read lately reads only the rest,
and one that teacher-forced scoring left there with its next-token scores is not read at all.
Encoder-decoders and sliding-window caches go through one transformers `generate` over left-padded prompts.

Each row keeps its own settings: `max_new_tokens`, stop strings and cancellation end that row alone, and a sampled
row draws from its own seeded generator at its own temperature and top-p, so a seeded request gets the same reply
whatever else shares its batch. New text reaches `on_text` as it is generated. A row may also carry banned token
n-grams and a least number of tokens (guarded decoding's retries, calltune.runtime.guardrails), and the end-of-call
marker: a stop string that ends the reply with finish_reason "end_of_call" (the customer hangs up).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import Cache, DynamicLayer

from calltune.runtime.guardrails import Guardrails, Tries
from calltune.runtime.sampling import Generation


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
    end_of_call: str = ""  # a stop string that ends the reply with finish_reason "end_of_call"
    banned: Mapping[tuple[int, ...], int] = field(default_factory=dict)  # token n-gram -> times it may occur
    min_tokens: int = 0  # the end of turn is not chosen before this many tokens


class _Row:
    """One request while it is generated: its own sampler (a seeded generator, temperature, top-p; greedy when the
    temperature is 0), the reply so far, stop strings, max_new_tokens, cancellation, and the streamed text (held back
    while it could still become a stop string or end in whitespace)."""

    def __init__(self, request: Request, tokenizer, eos: set[int], device):
        self.request, self.tokenizer, self.eos = request, tokenizer, eos
        self.generator = None if request.temperature <= 0 else torch.Generator(device=device).manual_seed(
            request.seed if request.seed is not None else int(torch.randint(1 << 62, ()).item()))
        self.tokens: list[int] = []
        self.text, self.sent = "", 0
        self.finish: str | None = None

    @property
    def constrained(self) -> bool:
        return bool(self.request.banned) or len(self.tokens) < self.request.min_tokens

    def _forbidden(self) -> list[int]:
        """The tokens this row may not take next: the last token of a banned n-gram whose start ends the reply so
        far (once it has occurred as often as allowed), and the end of turn before `min_tokens`."""
        out = list(self.eos) if len(self.tokens) < self.request.min_tokens else []
        for gram, allowed in self.request.banned.items():
            n = len(gram)
            if n > 1 and tuple(self.tokens[len(self.tokens) - n + 1:]) != gram[:-1]:
                continue
            if sum(tuple(self.tokens[i:i + n]) == gram for i in range(len(self.tokens) - n + 1)) >= allowed:
                out.append(gram[-1])
        return out

    def choose(self, scores: torch.Tensor) -> int:
        """The next token from this row's scores over the vocabulary."""
        if self.constrained and (forbidden := self._forbidden()):
            scores = scores.clone()
            scores[forbidden] = -torch.inf
        if self.generator is None:
            return int(scores.argmax())
        probs = torch.softmax(scores.float() / self.request.temperature, -1)
        if self.request.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= self.request.top_p  # the nucleus keeps the first token
            probs[order[outside]] = 0
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def add(self, token: int) -> bool:
        """Take the next token; True when the row has ended."""
        r = self.request
        self.tokens.append(token)
        if token in self.eos:
            self._end("stop")
            return True
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        stops = [(k, s) for s in (*r.stop, r.end_of_call) if s and (k := self.text.find(s)) >= 0]
        if stops:
            cut, stop = min(stops)
            self.text = self.text[:cut]
            self._end("end_of_call" if stop == r.end_of_call else "stop")
        elif len(self.tokens) >= r.max_new_tokens:
            self._end("length")
        elif r.cancelled and r.cancelled():
            self._end("cancelled")
        else:
            self._stream(hold=max((len(s) for s in (*r.stop, r.end_of_call)), default=1) - 1)
        return self.finish is not None

    def result(self) -> Generation:
        return Generation(self.text, len(self.request.prompt), len(self.tokens), self.finish or "length",
                          list(self.tokens))

    def _stream(self, hold: int) -> None:
        text, on_text = self.text, self.request.on_text
        if on_text is None:
            return
        end = len(text.rstrip()) if not text.endswith("\ufffd") else text.rfind("\ufffd")  # a partial character
        end = min(end, len(text) - hold)
        if end > self.sent:
            on_text(text[self.sent:end])
            self.sent = end

    def _end(self, reason: str) -> None:
        self.finish = reason
        self.text = self.text.strip()
        self._stream(hold=0)


class PrefixCache:
    """The KV cache of prompts read lately, for one model: a prompt that starts like one of them reads only the
    rest. The next turn of a chat, or of a simulated call, repeats the whole conversation so far. An entry that a
    newer prompt extends is dropped; past `max_tokens` in all, the least recently used go. One generation thread
    uses it at a time."""

    def __init__(self, max_tokens: int = 8192):
        self.max_tokens = max_tokens
        self.read_tokens = self.reused_tokens = 0  # prompt tokens read through the cache, and those it held already
        self._entries: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._next: dict[tuple[int, ...], torch.Tensor] = {}  # an entry's next-token scores, when known

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

    def next_scores(self, tokens: tuple[int, ...]) -> torch.Tensor | None:
        """The scores of the token after `tokens`, when an entry of exactly these tokens came with them."""
        return self._next.get(tokens)

    def add(self, tokens: tuple[int, ...], layers: list[tuple[torch.Tensor, torch.Tensor]],
            next_scores: torch.Tensor | None = None) -> None:
        """`next_scores`: the scores of the token after `tokens` (a forward that read them computed them), so that
        a prompt of exactly these tokens is not read at all."""
        for key in [k for k in self._entries if tokens[:len(k)] == k]:
            del self._entries[key]
            self._next.pop(key, None)
        self._entries[tokens] = layers
        if next_scores is not None:
            self._next[tokens] = next_scores
        kept = sum(map(len, self._entries))
        while kept > self.max_tokens and len(self._entries) > 1:
            key = self._entries.popitem(last=False)[0]
            self._next.pop(key, None)
            kept -= len(key)


def _read(model, tokens: list[int], prefixes: PrefixCache | None) -> tuple[list, torch.Tensor]:
    """(per-layer keys and values, the next token's scores) of `tokens` (one row, no padding), read from the longest
    cached start on; the last token is read again for its scores unless the cache has them."""
    n, layers = prefixes.longest(tuple(tokens)) if prefixes is not None else (0, [])
    if n == len(tokens) and (scores := prefixes.next_scores(tuple(tokens))) is not None:
        prefixes.read_tokens += n
        prefixes.reused_tokens += n
        return layers, scores
    n = min(n, len(tokens) - 1)
    cache = DynamicCache([(k[:, :, :n], v[:, :, :n]) for k, v in layers]) if n else None
    out = model(input_ids=torch.tensor([tokens[n:]], device=model.device), cache=cache, use_cache=True,
                logits_to_keep=1)
    layers = [(layer.keys, layer.values) for layer in out.cache.layers]
    if prefixes is not None:
        prefixes.read_tokens += len(tokens)
        prefixes.reused_tokens += n
        prefixes.add(tuple(tokens), layers)
    return layers, out.logits[0, -1]


def _eos(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
        else tokenizer.eos_token_id
    return {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}


class _Layer(DynamicLayer):
    """A layer's keys and values as views of buffers with room for the batch's remaining tokens: a step writes its
    column in place, where DynamicLayer copies the whole cache (torch.cat took a third of a 32-row step on a CPU)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.buffers = keys, values
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        keys, values = self.buffers
        if end > keys.shape[-2]:  # out of room (Batch makes room for every row's last token): copy after all
            return super().update(key_states, value_states)
        keys[:, :, start:end], values[:, :, start:end] = key_states, value_states
        self.keys, self.values = keys[:, :, :end], values[:, :, :end]
        return self.keys, self.values


class Batch:
    """Requests decoded together, one token a step for all (continuous batching). A request joins between two
    steps: its prompt is read alone (through the prefix cache), so the batch pays for no padding while reading,
    and its KV cache is left-padded into the batch's: written into the place of a request that ended, or the cache
    is copied anew without the ended rows. A request that ends is answered at once; its row stays until another
    takes its place or half the rows have ended. For causal models whose KV cache is plain per-layer keys and
    values (`Batch.fits`); `generate` takes transformers' generate for the others."""

    def __init__(self, model, tokenizer, prefixes: PrefixCache | None = None):
        self.model, self.tokenizer, self.prefixes = model, tokenizer, prefixes
        self.eos = _eos(model, tokenizer)
        self.rows: list[_Row | None] = []  # None: ended, its row not dropped yet
        self.cache: Cache | None = None  # (rows, heads, width, dim) a layer, left-padded
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=model.device)  # 1 on each row's real positions
        self.positions: list[int] = []  # each row's position of the token it feeds next

    @staticmethod
    def fits(model) -> bool:
        return not model.config.is_encoder_decoder and all(
            type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)

    def __len__(self) -> int:
        return sum(row is not None for row in self.rows)

    def add(self, requests: list[Request]) -> list[tuple[Request, Generation]]:
        """Read each prompt and choose its first token; the requests that ended there (one token asked for, the end
        of turn at once) come back now, the others join the batch."""
        ended, joining = [], []
        with torch.inference_mode():
            for request in requests:
                row = _Row(request, self.tokenizer, self.eos, self.model.device)
                layers, scores = _read(self.model, request.prompt, self.prefixes)
                if row.add(row.choose(scores)):
                    ended.append((request, row.result()))
                else:
                    joining.append((row, layers))
            if joining:
                free = [i for i, row in enumerate(self.rows) if row is None]
                if len(free) >= len(joining) and all(self._room_for(row, layers) for row, layers in joining):
                    self._fill(free, joining)
                else:
                    self._rebuild(joining)
        return ended

    def step(self) -> list[tuple[Request, Generation]]:
        """One token for every row; the requests that ended."""
        device = self.model.device
        with torch.inference_mode():
            self.mask = torch.nn.functional.pad(self.mask, (0, 1), value=1)
            out = self.model(input_ids=torch.tensor([[row.tokens[-1] if row else 0] for row in self.rows],
                                                    device=device),
                             attention_mask=self.mask, cache=self.cache, use_cache=True, logits_to_keep=1,
                             position_ids=torch.tensor(self.positions, device=device)[:, None])
            scores = out.logits[:, -1]
            greedy = scores.argmax(-1).tolist()
            self.positions = [p + 1 for p in self.positions]
            ended = []
            for i, row in enumerate(self.rows):
                if row is not None and row.add(greedy[i] if row.generator is None and not row.constrained
                                               else row.choose(scores[i])):
                    ended.append((row.request, row.result()))
                    self.rows[i] = None
            if ended and len(self) <= len(self.rows) // 2:
                self._rebuild([])
        return ended

    def _room_for(self, row: _Row, layers: list) -> bool:
        """Whether a joining row fits into an ended row's place as the batch is: its prompt within the batch's
        width, its reply within the buffers' room."""
        width, capacity = self.mask.shape[1], self.cache.layers[0].buffers[0].shape[2]
        return layers[0][0].shape[2] <= width and width + row.request.max_new_tokens <= capacity

    def _fill(self, free: list[int], joining: list[tuple[_Row, list]]) -> None:
        """The joining rows in ended rows' places, written into the buffers where they are: no copy of the others.
        What the ended row left on the left is masked out."""
        width = self.mask.shape[1]
        for slot, (row, layers) in zip(free, joining):
            n = layers[0][0].shape[2]
            for layer, (keys, values) in zip(self.cache.layers, layers):
                layer.buffers[0][slot, :, width - n:width] = keys[0]
                layer.buffers[1][slot, :, width - n:width] = values[0]
            self.mask[slot] = 0
            self.mask[slot, width - n:] = 1
            self.rows[slot], self.positions[slot] = row, len(row.request.prompt)

    def _rebuild(self, joining: list[tuple[_Row, list]]) -> None:
        """The batch's cache anew (the one place it is copied): the rows still running and the `joining` ones,
        right-aligned, without the left columns that are padding in all of them."""
        device = self.model.device
        kept = [i for i, row in enumerate(self.rows) if row is not None]
        rows = [self.rows[i] for i in kept] + [row for row, _ in joining]
        positions = [self.positions[i] for i in kept] + [len(row.request.prompt) for row, _ in joining]
        if not rows:
            self.rows, self.positions, self.cache, self.mask = [], [], None, self.mask[:0, :0]
            return
        index = torch.tensor(kept, dtype=torch.long, device=device)
        old_mask = self.mask[index]
        first = int(old_mask.any(0).long().argmax()) if kept else 0
        old_mask, old_width = old_mask[:, first:], (self.mask.shape[1] - first if kept else 0)
        lengths = [layers[0][0].shape[2] for _, layers in joining]
        width = max([old_width, *lengths])
        # room for every row's last token, and as much again for rows that take ended rows' places (`_fill`)
        room = max(row.request.max_new_tokens - len(row.tokens) for row in rows) + max(
            row.request.max_new_tokens for row in rows)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        if kept:
            mask[:len(kept), width - old_width:] = old_mask
        for j, n in enumerate(lengths):
            mask[len(kept) + j, width - n:] = 1
        old = [(layer.keys, layer.values) for layer in self.cache.layers] if kept else []
        layers = []
        for i in range(len(old or joining[0][1])):
            pair = []
            for kv in (0, 1):
                sample = (old or joining[0][1])[i][kv]
                buffer = sample.new_zeros((len(rows), sample.shape[1], width + room, sample.shape[3]))
                if kept:
                    buffer[:len(kept), :, width - old_width:width] = old[i][kv][index, :, first:]
                for j, (_, joined) in enumerate(joining):
                    buffer[len(kept) + j, :, width - lengths[j]:width] = joined[i][kv][0]
                pair.append(buffer)
            layers.append(_Layer(*pair, width))
        self.rows, self.positions, self.mask, self.cache = rows, positions, mask, Cache(layers=layers)


def stream(model, tokenizer, requests: list[Request], size: int, prefixes: PrefixCache | None = None, *,
           rails: Guardrails | None = None,
           earlier: Sequence[Sequence[str]] | None = None) -> Iterator[tuple[int, Generation]]:
    """(index, generation) of each of `requests` as it ends, at most `size` generated at once: the next starts as
    soon as one ends, so no request waits for the longest of a group (`Batch`). The models Batch does not fit go
    `size` at a time. `prefixes`: the model's prefix cache, read and filled (None: every prompt is read in full).
    `rails`: guarded decoding (calltune.runtime.guardrails): a reply that breaks a rule is generated again, given
    `earlier[i]`, the customer's own earlier turns of request i's call."""
    size = max(size, 1)
    tries = Tries(rails, tokenizer) if rails is not None else None
    pending = list(enumerate(requests))[::-1]

    def settle(i: int, request: Request, generation: Generation) -> Iterator[tuple[int, Generation]]:
        outcome = generation if tries is None else tries.settle(i, request, generation, earlier[i] if earlier else ())
        if isinstance(outcome, Generation):
            yield i, outcome
        else:  # taken next
            pending.append((i, outcome))

    if not Batch.fits(model):
        while pending:
            group = [pending.pop() for _ in range(min(size, len(pending)))]
            for (i, request), generation in zip(group, _generate_padded(model, tokenizer, [r for _, r in group])):
                yield from settle(i, request, generation)
        return
    batch, index = Batch(model, tokenizer, prefixes), {}
    while pending or batch:
        taken = [pending.pop() for _ in range(min(size - len(batch), len(pending)))]
        index.update((id(request), i) for i, request in taken)
        ended = batch.add([request for _, request in taken])
        if batch:
            ended += batch.step()
        for request, generation in ended:
            yield from settle(index.pop(id(request)), request, generation)


def generate(model, tokenizer, requests: list[Request], prefixes: PrefixCache | None = None, *,
             rails: Guardrails | None = None, earlier: Sequence[Sequence[str]] | None = None) -> list[Generation]:
    """`requests` generated together (guarded by `rails`, see `stream`); their generations, in order."""
    results = dict(stream(model, tokenizer, requests, len(requests), prefixes, rails=rails, earlier=earlier))
    return [results[i] for i in range(len(requests))]


class _Sample(LogitsProcessor):
    """Samples the rows that ask for it, and chooses for the rows with banned n-grams; generate runs greedy, so a
    row left with one finite logit takes it."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids, scores):
        for i, row in enumerate(self.rows):
            if (row.generator is not None or row.constrained) and row.finish is None:
                token = row.choose(scores[i])
                scores[i] = torch.where(torch.arange(scores.shape[1], device=scores.device) == token, 0.0, -torch.inf)
        return scores


class _Ended(StoppingCriteria):
    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if row.finish is None:
                row.add(token)
        return torch.tensor([row.finish is not None for row in self.rows], device=input_ids.device)


def _generate_padded(model, tokenizer, requests: list[Request]) -> list[Generation]:
    """One transformers `generate` over `requests`, prompts left-padded (every row's next token in the last
    column), for the models `Batch` does not fit: encoder-decoders, sliding-window caches."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(r.prompt) for r in requests)
    ids = torch.full((len(requests), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, r in enumerate(requests):
        ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
        attention[i, width - len(r.prompt):] = 1
    eos = _eos(model, tokenizer)
    rows = [_Row(r, tokenizer, eos, model.device) for r in requests]
    with torch.inference_mode():
        model.generate(input_ids=ids.to(model.device), attention_mask=attention.to(model.device),
                       max_new_tokens=max(r.max_new_tokens for r in requests), use_cache=True, do_sample=False,
                       temperature=None, top_p=None, top_k=None, eos_token_id=sorted(eos), pad_token_id=pad,
                       logits_processor=LogitsProcessorList([_Sample(rows)]),
                       stopping_criteria=StoppingCriteriaList([_Ended(rows)]))
    return [row.result() for row in rows]
