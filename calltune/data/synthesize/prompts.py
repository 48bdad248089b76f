"""Synthesize's prompts (module docstring of calltune.data.synthesize.job, point 1-2): seeded, so a rerun builds the same
ones; each request's SHA-256 over its canonical JSON keys the generation cache."""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from calltune.config import SynthesizeConfig
from calltune.conversation.render import dialogue
from calltune.conversation.schema import Example

INSTRUCTION = ("You write realistic sales phone calls between a seller and a customer, used as training data. "
               "Answer with the call only: one turn a line, each line starting with \"Seller:\" or \"Customer:\".")
LANGUAGES = {"en": "English", "pt": "Portuguese", "es": "Spanish"}


@dataclass(frozen=True)
class Prompt:
    number: int
    prompt_id: str  # mode:seed:number (facts: :term)
    system: str     # the system instruction of the synthetic call
    request: dict
    sha: str


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def read_facts(path: str | Path) -> list[tuple[str, str]]:
    """(acronym, definition) pairs from a JSON list in the acronym dataset's acronym.json format."""
    if not path:
        raise ValueError("synthesize.mode=facts needs synthesize.facts_file (a JSON list of {acronym, definition})")
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read facts file {path}: {exc}") from exc
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{\"acronym\", \"definition\"}} objects")
    facts = []
    for i, item in enumerate(items, 1):
        for key in ("acronym", "definition"):
            if not isinstance(item, dict) or not isinstance(item.get(key), str) or not item[key].strip():
                raise ValueError(f"{path}: item {i}: missing or empty field '{key}'")
        facts.append((item["acronym"].strip(), item["definition"].strip()))
    return facts


def _render(example: Example) -> str:
    return "\n".join(f"{role.capitalize()}: {text}" for role, text in dialogue(example))


def _request_seed(seed: int, number: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{number}".encode(), digest_size=4).digest(), "big") >> 1


def build_prompts(train: list[Example], cfg: SynthesizeConfig, seed: int) -> list[Prompt]:
    language = LANGUAGES.get(cfg.language, cfg.language)
    shape = "one turn a line, each line starting with \"Seller:\" or \"Customer:\"."
    facts = read_facts(cfg.facts_file) if cfg.mode == "facts" else []
    order = random.Random(f"{seed}:facts").sample(range(len(facts)), len(facts))
    prompts = []
    for number in range(cfg.conversations):
        rng = random.Random(f"{seed}:{number}")
        if cfg.mode == "style":
            shots = rng.sample(train, min(cfg.few_shot, len(train)))
            system = shots[0]["system"]
            brief = f"The customer follows this brief: {system}\n\n" if system else ""
            text = (f"{brief}Excerpts of real calls:\n\n" + "\n\n---\n\n".join(map(_render, shots)) +
                    f"\n\n---\n\nWrite one new call between a seller and this customer, in {language}, different "
                    f"from the excerpts: 4 to 8 turns, {shape}")
            prompt_id = f"style:{seed}:{number}"
        else:
            term, definition = facts[order[number % len(facts)]]
            system = rng.choice(train)["system"]
            text = (f"Fact: {term}: {definition}\n\nWrite one conversation, in {language}, in which the seller asks "
                    f"about {term} and the customer answers correctly from the fact: 2 to 6 turns, {shape}")
            prompt_id = f"facts:{seed}:{number}:{term}"
        request = {"messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text}],
                   "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": _request_seed(seed, number)}
        sha = hashlib.sha256(canonical(request).encode()).hexdigest()
        prompts.append(Prompt(number, prompt_id, system, request, sha))
    return prompts
