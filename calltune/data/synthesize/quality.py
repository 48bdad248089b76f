"""Synthesize's quality filter (module docstring of calltune.data.synthesize.job, point 3): an answer's turns, and the first
problem that rejects its conversation (unparseable, role_order, length, language)."""
from __future__ import annotations

import re

from calltune.config import SynthesizeConfig
from calltune.conversation.schema import Turn
from calltune.core.text import repair_text

QUALITY_REASONS = ("unparseable", "role_order", "length", "language")
_STOPWORDS = {
    "en": set("the and is are you your to of it that this for in on with have what can not my we will be i".split()),
    "pt": set("o os as de da do que não é um uma para com você eu isso mas se por no na muito tem está sim são".split()),
    "es": set("el la los las de del que no es un una para con usted yo eso pero si por en muy tiene está sí son".split()),
}
# A "Seller:"/"Customer:" line, forgiving the decorations models add: "**Seller:**", "1. Customer:", "- Seller -:"
_TURN = re.compile(r"^[\W\d_]*(seller|customer)[^\w:]*:(.*)$", re.IGNORECASE)
_SEPARATOR = re.compile(r"^\s*([-=*_#~])\1{2,}\s*$")


def parse_conversation(text: str) -> list[Turn]:
    """The "Seller:"/"Customer:" turns of an answer; an untagged line continues the turn before it. Text before the
    first tagged line (a preamble) is dropped, and so is everything from a separator line such as "---" on (the
    prompt separates its excerpts with one: what follows is commentary or another call)."""
    turns: list[Turn] = []
    for line in text.splitlines():
        if turns and _SEPARATOR.match(line):
            break
        match = _TURN.match(line)
        if match:
            turns.append({"role": match[1].lower(), "text": match[2]})
        elif turns and line.strip():
            turns[-1]["text"] += " " + line
    for turn in turns:
        turn["text"] = repair_text(turn["text"].strip(" *_\"\t"))
    return turns


def wrong_language(text: str, language: str) -> bool:
    if language not in _STOPWORDS:
        return False
    words = re.findall(r"\w+", text.casefold())
    if len(words) < 6:  # too short to tell
        return False
    hits = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    best = max(hits.values())
    return best >= 2 and hits[language] < best


def quality_problem(turns: list[Turn], cfg: SynthesizeConfig) -> str | None:
    if not turns:
        return "unparseable"
    roles = [t["role"] for t in turns]
    if any(a == b for a, b in zip(roles, roles[1:])) or ("seller", "customer") not in set(zip(roles, roles[1:])):
        return "role_order"
    if any(not cfg.min_chars <= len(t["text"]) <= cfg.max_chars for t in turns):
        return "length"
    if wrong_language(" ".join(t["text"] for t in turns), cfg.language):
        return "language"
    return None
