"""LLM-as-judge: persona fidelity and realism of generated customer replies, on an anchored 1-5 scale.

The judge sees the persona (the system instruction), the conversation and the reply, and answers one JSON
object with its rationale first and the two scores after it, so the scores follow from the reasoning. The
clients are synthesize's generators (calltune.backends.generators): any OpenAI-compatible chat completions API,
or Gemini on Vertex AI. Off unless judge.backend is set: no score is ever invented. A score that cannot be read
(no JSON, a missing key, a value outside 1-5) is counted per criterion and left out, never scored 0; a request
that fails after its retries is counted and left out too.
"""
from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from calltune.config import JudgeConfig
from calltune.evaluation import metrics

if TYPE_CHECKING:
    from calltune.backends.generator_base import Generator

log = logging.getLogger(__name__)

CRITERIA = ("persona_fidelity", "realism")

SYSTEM = ("You evaluate role-play practice for salespeople: a model plays the CUSTOMER on a sales call so that a "
          "seller can rehearse. You judge one customer reply at a time, strictly and consistently.")

PROMPT = """Persona the customer was asked to play:
{persona}

Conversation so far:
{conversation}

The customer's reply to judge:
{reply}

Score the reply on two criteria, each on this anchored scale.

persona_fidelity: does the reply stay in the persona, as the customer (not the seller, not an assistant)?
1 = breaks character: talks as an AI assistant or as the seller, or ignores the persona
2 = mostly out of character; the persona shows only in passing
3 = plays a customer, but a generic one; the persona's traits barely show
4 = in character, with small lapses
5 = fully in character: a customer with this persona would say exactly this kind of thing

realism: could a real customer say this on a phone call, at this point of the conversation?
1 = incoherent, empty, repetitive, or unrelated to the seller's last line
2 = on topic but plainly artificial (written style, lists, far too long)
3 = plausible but stilted or generic
4 = natural, with minor oddities
5 = indistinguishable from a real customer's spoken reply

Answer with one JSON object and nothing else, the rationale first:
{{"rationale": "<two or three sentences>", "persona_fidelity": <1-5>, "realism": <1-5>}}"""

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def build_request(row: dict, cfg: JudgeConfig, seed: int) -> dict:
    """The judge's chat request for one predictions row (calltune.evaluation.batch_infer)."""
    lines = row["instructions"].split("\n")
    persona = lines[0][len("system: "):] if lines[0].startswith("system: ") else "(none given)"
    conversation = "\n".join(lines[1:] if lines[0].startswith("system: ") else lines)
    content = PROMPT.format(persona=persona, conversation=conversation, reply=row["candidate_responses"] or "(empty)")
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}],
            "temperature": 0.0, "max_tokens": cfg.max_tokens, "seed": seed}


def answer_object(answer: str | None, *, rationale: bool = False) -> dict | None:
    """The one JSON object a judge answered (bare or in a ```json fence), or None. `rationale`: None too unless the
    object gives its reasons (a non-empty "rationale"): the prompts ask for them first, so the scores follow them.
    The one parser of judge answers: the reply judge, the call review and the whole-call judge all read through it."""
    text = (answer or "").strip().removeprefix("```json").removeprefix("```").removesuffix("```")
    match = _OBJECT.search(text)
    try:
        obj = json.loads(match.group(0)) if match else None
    except ValueError:
        return None
    if not isinstance(obj, dict) or (rationale and not str(obj.get("rationale") or "").strip()):
        return None
    return obj


def whole_number(value, low: int, high: int) -> int | None:
    """A score the judge gave: a whole number from `low` to `high` (digits in a string count), else None."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high else None


def parse(answer: str) -> dict[str, int | None]:
    """criterion -> score 1..5, or None where the answer gives none that can be read."""
    obj = answer_object(answer, rationale=True) or {}
    return {name: whole_number(obj.get(name), 1, 5) for name in CRITERIA}


@dataclass(frozen=True)
class Judge:
    """The configured judge: its settings and the generator (calltune.backends.generators) that answers for it."""
    cfg: JudgeConfig
    generator: Generator

    def close(self) -> None:
        self.generator.close()


def make_judge(cfg: JudgeConfig, state_dir=".") -> Judge | None:
    """The configured judge; None when judging is off."""
    if cfg.backend == "none":
        return None
    from calltune.backends.generators import make_generator

    return Judge(cfg, make_generator(cfg, state_dir))


def judge(rows: list[dict], judge: Judge, *, seed: int = 42, samples: int = 1000) -> dict:
    """Judge the first `judge.cfg.max_examples` rows. Returns per-criterion Estimates over the readable scores, the
    counts (requests, failed, unparseable per criterion) and every judgment (for the report)."""
    from calltune.backends.generators import GenerateError

    cfg, generator = judge.cfg, judge.generator
    rows = rows[:cfg.max_examples]

    def one(row: dict) -> tuple[str | None, str | None]:
        try:
            return generator.generate([build_request(row, cfg, seed)])[0], None
        except GenerateError as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max(1, min(cfg.max_concurrency, generator.concurrency))) as pool:
        answers = list(pool.map(one, rows))
    failed = [err for _, err in answers if err is not None]
    if rows and len(failed) == len(rows):
        raise RuntimeError(f"judge: every one of {len(rows)} requests failed; last error: {failed[-1]}")
    judgments = []
    for row, (answer, err) in zip(rows, answers):
        scores = parse(answer) if answer is not None else dict.fromkeys(CRITERIA)
        judgments.append({"example_id": row.get("example_id", ""), "answer": answer, "error": err, **scores})
    result: dict = {"requests": len(rows), "failed": len(failed),
                    "unparseable": {c: sum(1 for j in judgments if j["error"] is None and j[c] is None)
                                    for c in CRITERIA},
                    "judgments": judgments}
    for c in CRITERIA:
        result[c] = metrics.mean([j[c] for j in judgments if j[c] is not None], samples=samples, seed=seed)
    log.info("judge %s: %d replies, %d failed, unparseable %s", generator.name, len(rows), len(failed),
             result["unparseable"])
    return result
