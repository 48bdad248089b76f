"""Closed-loop simulation of whole calls: the seller's turns are replayed, and the model produces every customer
turn from the history it produced itself, not the real customer's.

Whole calls come from the test split's examples (examples.jsonl): a call's examples in turn order are its
seller/customer pairs, each example's prompt the seller turn and its target the real customer turn, and each
example's history the window that training and teacher-forced scoring saw. So the calls are exactly the held-out
calls, turn-split, merged and translated as the model was trained, with no other artifact to wire in. A call is
cut at the first gap (an example the sampler dropped as a duplicate, or the part of the boundary call that went
to no split): its turns after a gap would follow a history the split does not hold. A call whose first example is
not its opening keeps that example's real history in front (counted in the report as `calls_started_late`).

The model's context at turn k is the real example k with every customer turn of its history replaced by the
model's own earlier reply: the same window, chat rendering and max_seq_len trimming as teacher-forced scoring
(calltune.runtime.encoding). Generation is batched across calls: one batched generation per turn position
(calltune.evaluation.batch_infer.generate_batch) for every call still running. With `simulate.seller` set to openai or gemini,
that model writes every seller line after the real opening from the call's brief (the customer persona) and the
conversation so far, so the call is fully interactive; the call keeps the real call's number of turns.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby

from calltune.config import InferConfig, SimulateConfig

log = logging.getLogger(__name__)

SELLER_SYSTEM = ("You play the SELLER on a sales call, so that a customer simulator can be tested. Write only the "
                 "seller's next spoken line: one or two short sentences, no role label, no stage directions.")
SELLER_PROMPT = """The customer on this call: {persona}

The conversation so far:
{conversation}

The seller's next line:"""


@dataclass
class Call:
    """A held-out call: its examples in turn order (each holds the real seller prompt and customer target)."""
    call_id: str
    system: str
    examples: list[dict]
    started_late: bool = False  # the first example is not the call's opening: its real history leads the call

    @property
    def sellers(self) -> list[str]:
        return [e["prompt"] for e in self.examples]

    @property
    def customers(self) -> list[str]:
        return [e["target"] for e in self.examples]

    @property
    def ends(self) -> bool:
        """The real customer ended the call at its last turn here (the turn carries the end-of-call marker); False
        when the call was cut at a gap before its end, or the data has no marker."""
        return bool(self.examples and self.examples[-1].get("end_of_call"))


@dataclass
class Simulated:
    """One simulated call: the seller lines it heard and the customer turns the model produced, position by position;
    `hung_up`: the model ended the call after its last turn (finish_reason end_of_call), so the call stopped there."""
    call_id: str
    sellers: list[str]
    customers: list[str] = field(default_factory=list)
    hung_up: bool = False
    retries: list[int] = field(default_factory=list)  # guarded decoding's retries of each customer turn

    def as_dict(self) -> dict:
        return {"call_id": self.call_id, "hung_up": self.hung_up,
                "turns": [t for s, c in zip(self.sellers, self.customers)
                          for t in ({"role": "seller", "text": s}, {"role": "customer", "text": c})]}


def _follows(prev: dict, example: dict) -> bool:
    """`example` is the turn right after `prev`: its history ends with prev's seller prompt and customer target."""
    tail = [(t["role"], t["text"]) for t in example.get("history", [])[-2:]]
    return tail == [("seller", prev["prompt"]), ("customer", prev["target"])]


def calls_from_examples(examples, max_calls: int = 0) -> tuple[list[Call], dict]:
    """Whole calls from test examples (grouped by call_id, in turn order, cut at the first gap). Returns the calls
    (in the examples' order of first appearance) and counts for the report."""
    calls: list[Call] = []
    report = {"calls": 0, "turns": 0, "turns_cut_at_gaps": 0, "calls_started_late": 0}
    ordered = sorted(enumerate(examples), key=lambda ie: (ie[1]["call_id"], int(ie[1]["turn_index"])))
    first_seen = {}
    for i, e in enumerate(examples):
        first_seen.setdefault(e["call_id"], i)
    for call_id, group in groupby((e for _, e in ordered), key=lambda e: e["call_id"]):
        group = list(group)
        kept = [group[0]]
        for e in group[1:]:
            if not _follows(kept[-1], e):
                break
            kept.append(e)
        late = bool(group[0].get("history"))
        calls.append(Call(call_id, group[0].get("system", ""), kept, late))
        report["turns_cut_at_gaps"] += len(group) - len(kept)
    calls.sort(key=lambda c: first_seen[c.call_id])
    if max_calls:
        calls = calls[:max_calls]
    report.update(calls=len(calls), turns=sum(len(c.examples) for c in calls),
                  calls_started_late=sum(c.started_late for c in calls))
    return calls, report


def context(call: Call, k: int, sellers: list[str], customers: list[str]) -> dict:
    """Example k of the call as the model meets it in the closed loop: the real example's window, with the seller
    lines it heard and its own earlier replies in place of the real ones (real turns before the call's first
    example stay)."""
    example = call.examples[k]
    history = [dict(t) for t in example.get("history", [])]
    # The history ends with the pairs of turns k-1, k-2, ...: (seller, customer) per earlier position.
    for back in range(1, min(k, len(history) // 2) + 1):
        history[-2 * back]["text"] = sellers[k - back]
        history[-2 * back + 1]["text"] = customers[k - back]
    return {**example, "history": history, "prompt": sellers[k]}


def local_replier(model, tokenizer, cfg: InferConfig, max_len: int, decoding=None):
    """Replies (Generations) of a loaded local model to a list of examples, as batch inference makes them (same
    encoding, one `generate_batch` call for the list); `decoding`: batch_infer.Decoding (None: plain greedy or
    sampled replies, no end-of-call marker, no guardrails)."""
    from calltune.evaluation.batch_infer import Decoding, generate_batch, prompt_ids
    from calltune.runtime.encoding import encoder
    from calltune.runtime.generation import PrefixCache
    from calltune.runtime.sampling import Generation

    encode = encoder(model.config.is_encoder_decoder)
    prefixes = PrefixCache()  # turn k+1 of a call repeats turn k's conversation: only the new lines are read

    def reply(examples: list[dict], earlier: list[list[str]] | None = None) -> list[Generation]:
        encoded = [encode(e, tokenizer, max_len) for e in examples]
        todo = [i for i, r in enumerate(encoded) if r is not None]  # None: the real reply alone exceeds max_len
        replies = generate_batch(model, tokenizer, prompt_ids([encoded[i] for i in todo]), cfg, prefixes,
                                 decoding or Decoding(), [earlier[i] for i in todo] if earlier else None) \
            if todo else []
        out = [Generation("", 0, 0, "stop")] * len(examples)
        for i, r in zip(todo, replies):
            out[i] = r
        return out

    return reply


def vertex_replier(resource: str, cfg: InferConfig):
    """Replies of a Vertex AI endpoint or tuned Gemini model, `cfg.max_concurrency` requests at once (the
    responder batch inference uses)."""
    from calltune.runtime.responders import GeminiResponder
    from calltune.runtime.sampling import Sampling

    responder = GeminiResponder(resource, cfg.vertex_base_url, max_concurrency=cfg.max_concurrency)
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p)

    def reply(examples: list[dict], earlier: list[list[str]] | None = None) -> list:
        return [f.result() for f in [responder.start(e, sampling) for e in examples]]

    return reply


def make_seller(cfg: SimulateConfig, state_dir="."):
    """A generator (calltune.backends.generators) that plays the seller; None when the real seller is replayed."""
    if cfg.seller == "replay":
        return None
    from calltune.backends.generators import make_generator

    return make_generator(cfg.seller_settings(), state_dir)


def _seller_request(call: Call, sellers: list[str], customers: list[str], cfg: SimulateConfig, seed: int) -> dict:
    lines = [f"{role}: {text}" for s, c in zip(sellers, customers) for role, text in (("seller", s), ("customer", c))]
    content = SELLER_PROMPT.format(persona=call.system or "(not given)", conversation="\n".join(lines))
    return {"messages": [{"role": "system", "content": SELLER_SYSTEM}, {"role": "user", "content": content}],
            "temperature": 0.0, "max_tokens": cfg.seller_max_tokens, "seed": seed}


def _seller_line(text: str) -> str:
    text = text.strip().strip('"')
    for label in ("seller:", "Seller:", "SELLER:"):
        text = text.removeprefix(label).strip()
    return text


def simulate(calls: list[Call], reply, *, seller=None, cfg: SimulateConfig | None = None, seed: int = 42,
             batched: bool = True, first: dict[str, tuple[str, str, int]] | None = None) -> list[Simulated]:
    """Closed-loop simulation of `calls`. `reply(examples, earlier) -> generations` answers a list of contexts
    (local_replier or vertex_replier; `earlier`: each call's customer turns so far, for guarded decoding); `seller`:
    a generator playing the seller (make_seller), None to replay the real seller. A call whose customer ends it
    (finish_reason end_of_call) stops there. batched: one `reply` call per turn position across every call still
    running; False: one call at a time (the baseline of benchmarks/simulate_throughput.py). `first`: example_id ->
    (reply, finish_reason, guarded decoding's retries) of the model to that example already made with the same
    decoding (greedy batch inference); a call's first turn is its first real example unchanged, so such a reply is
    taken instead of generated again."""
    cfg = cfg or SimulateConfig()
    sims = [Simulated(c.call_id, []) for c in calls]
    started = time.monotonic()

    def next_sellers(active: list[int], k: int) -> None:
        if seller is None or k == 0:  # the real opening line starts every call
            for i in active:
                sims[i].sellers.append(calls[i].sellers[k])
            return
        requests = [_seller_request(calls[i], sims[i].sellers, sims[i].customers, cfg, seed) for i in active]
        with ThreadPoolExecutor(max(1, seller.concurrency)) as pool:
            lines = list(pool.map(lambda r: seller.generate([r])[0], requests))
        for i, line in zip(active, lines):
            sims[i].sellers.append(_seller_line(line))

    groups = ([list(range(len(calls)))] if batched else [[i] for i in range(len(calls))])
    for group in groups:
        for k in range(max((len(calls[i].examples) for i in group), default=0)):
            active = [i for i in group if k < len(calls[i].examples) and not sims[i].hung_up]
            if not active:
                break
            next_sellers(active, k)
            known = {i: first[calls[i].examples[0]["example_id"]] for i in active
                     if k == 0 and first and calls[i].examples[0].get("example_id") in first}
            todo = [i for i in active if i not in known]
            replies = dict(zip(todo, reply([context(calls[i], k, sims[i].sellers, sims[i].customers) for i in todo],
                                           [list(sims[i].customers) for i in todo]) if todo else []))
            for i in active:
                text, finish, retries = known[i] if i in known else (
                    replies[i].text, replies[i].finish_reason, getattr(replies[i].guard, "retries", 0))
                sims[i].customers.append(text)
                sims[i].retries.append(retries)
                sims[i].hung_up = finish == "end_of_call"
            if batched:
                log.info("simulated turn %d: %d calls still running (%.1f s)", k + 1, len(active),
                         time.monotonic() - started)
    return sims


def whole_calls(name: str, calls: list[Call], reply, cfg: SimulateConfig, *, seller=None, seed: int = 42,
                first=None, unguarded=None, greedy: bool = False, split=None) -> dict:
    """What evaluation records of a model's whole calls: "simulated" (`simulate` with `reply`); with `unguarded` (the
    same model's reply function without guarded decoding), "simulated_unguarded"; and when `cfg.adversarial` asks
    for this model, "adversarial": the suite's contexts (calltune.evaluation.adversarial, windowed with `split`)
    and the model's replies to them. `greedy` (with the real seller replayed): a call in which guarded decoding
    retried nothing is the same without it, so only the others are played again."""
    from calltune.config import SplitConfig
    from calltune.evaluation import adversarial

    log.info("simulating %d whole test calls with %s", len(calls), name)
    out = {"simulated": simulate(calls, reply, seller=seller, cfg=cfg, seed=seed, first=first)}
    if unguarded is not None:
        same = greedy and seller is None
        again = [i for i, s in enumerate(out["simulated"]) if not same or any(s.retries)]
        log.info("simulating %d of them again with %s without guarded decoding", len(again), name)
        replayed = dict(zip(again, simulate([calls[i] for i in again], unguarded, seller=seller, cfg=cfg, seed=seed)))
        out["simulated_unguarded"] = [replayed.get(i, s) for i, s in enumerate(out["simulated"])]
    if cfg.adversarial == "all" or (cfg.adversarial == "tuned" and name == "tuned"):
        ctxs = adversarial.contexts(calls, split or SplitConfig(), seed)
        log.info("%s answers %d seller lines that try to break its role", name, len(ctxs))
        replies = reply([c["example"] for c in ctxs], [c["earlier"] for c in ctxs]) if ctxs else []
        out["adversarial"] = (ctxs, [r.text for r in replies])
    return out
