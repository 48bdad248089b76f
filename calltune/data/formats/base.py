"""What every input format's parser shares: the parse settings taken from DataConfig, the row rejection, turns
through a role map, the call record."""
from __future__ import annotations

import json
import re
import string
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from calltune.conversation.schema import Call
from calltune.core.text import repair_text

if TYPE_CHECKING:  # the parser processes need no pydantic
    from calltune.config import DataConfig

ROLES = ("seller", "customer")
CHAT_ROLES = {"user": "seller", "assistant": "customer", "model": "customer"}


class Reject(Exception):
    """A bad row: its reason goes to quarantine.jsonl."""


class ParseSettings:
    """What the parsers need from the config. Small and picklable: it travels to the parser processes."""

    def __init__(self, cfg: DataConfig):
        self.role_map = dict(cfg.role_map)
        self.persona_fields = list(cfg.persona_fields)
        self.system_prompt = cfg.system_prompt
        self.qa_keys = (cfg.qa_input_key, cfg.qa_output_key)
        self.max_field_chars = cfg.max_field_chars
        self.evaluation = False  # seed_csv: the header has evaluation columns (calltune.data.ingest.Source sets it)

    def system(self, persona: dict[str, str]) -> str:
        return render_system(self.system_prompt, tuple(persona.items()))


class _Blank(dict):
    def __missing__(self, key):
        return ""


# Personas repeat across calls (a few characters, a few meeting types): render and repair each once.
@lru_cache(maxsize=4096)
def render_system(template: str, persona: tuple[tuple[str, str], ...]) -> str:
    return " ".join(template.format_map(_Blank(persona)).split())


def template_fields(template: str) -> list[str]:
    """The {field} names of a system prompt template, in order of first use."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return list(dict.fromkeys(names))


def _pattern(template: str) -> re.Pattern:
    # ingest renders with str.format_map and then collapses whitespace; literal text matches with any spacing.
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts += [r"\s*" if chunk.isspace() else re.escape(chunk) for chunk in re.split(r"(\s+)", literal) if chunk]
        if name:
            parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
            seen.add(name)
    return re.compile(r"\s*" + "".join(parts) + r"\s*", re.DOTALL)


def persona_fields(template: str, system: str) -> dict[str, str]:
    """The persona fields a system instruction was rendered from, or {} when the template does not produce it."""
    try:
        match = _pattern(template).fullmatch(system)
    except (re.error, ValueError):
        return {}
    return {k: v.strip() for k, v in match.groupdict().items()} if match else {}


repair_field = lru_cache(maxsize=4096)(repair_text)


def role_turns(items: Any, role_map: dict[str, str], role_key: str, text_key: str) -> list[dict]:
    if not isinstance(items, list):
        raise Reject("unparseable transcript")
    turns, usable = [], False
    for item in items:
        try:
            role, text = item[role_key], item[text_key]
        except KeyError as exc:
            raise Reject(f"missing field '{exc.args[0]}'") from None
        except (TypeError, IndexError):  # not a mapping
            raise Reject("unparseable transcript") from None
        mapped = role_map.get(role) if isinstance(role, str) else None
        if mapped is None:
            raise Reject(f"unknown role {role!r}")
        if not isinstance(text, str):
            raise Reject("unparseable transcript")
        text = repair_text(text)
        usable = usable or (mapped == "customer" and text != "")
        turns.append({"role": mapped, "text": text})
    if not usable:
        raise Reject("no usable turn")
    return turns


def make_call(call_id: Any, row: int, persona: dict, system: str, turns: list[dict]) -> Call:
    return {"call_id": str(call_id), "source_row": row, "persona": persona, "system": system, "turns": turns}


def json_object(line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        raise Reject("bad JSON line") from None
    except RecursionError:
        raise Reject("bad JSON line (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise Reject("bad JSON line")
    return obj


def list_field(obj: dict, key: str) -> list:
    if key not in obj:
        raise Reject(f"missing field '{key}'")
    if not isinstance(obj[key], list):
        raise Reject("unparseable transcript")
    return obj[key]
