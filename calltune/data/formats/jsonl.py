"""The JSONL formats, one call per line: calls_jsonl ({"call_id", "turns", "persona"?, "system"?}), messages (HF
{"messages": [{role, content}]}) and vertex ({"systemInstruction"?, "contents": [{role, parts}]})."""
from __future__ import annotations

from typing import Any

from calltune.conversation.schema import Call
from calltune.core.text import repair_text
from calltune.data.formats.base import (
    CHAT_ROLES,
    ParseSettings,
    Reject,
    json_object,
    list_field,
    make_call,
    repair_field,
    role_turns,
)


def parse_calls_jsonl(row: int, line: str, src: ParseSettings) -> Call:
    obj = json_object(line)
    if "turns" not in obj:
        raise Reject("missing field 'turns'")
    turns = role_turns(obj["turns"], src.role_map, "role", "text")
    persona = obj.get("persona") or {}
    if not isinstance(persona, dict):
        raise Reject("unparseable transcript")
    persona = {str(k): repair_field(str(v)) for k, v in persona.items()}
    system = repair_text(obj["system"]) if isinstance(obj.get("system"), str) else src.system(persona)
    return make_call(obj.get("call_id") or f"row-{row}", row, persona, system, turns)


def parse_messages(row: int, line: str, src: ParseSettings) -> Call:
    obj = json_object(line)
    messages = list_field(obj, "messages")
    is_system = [isinstance(m, dict) and m.get("role") == "system" for m in messages]
    turns = role_turns([m for m, s in zip(messages, is_system) if not s], CHAT_ROLES, "role", "content")
    text = " ".join(m["content"] for m, s in zip(messages, is_system) if s and isinstance(m.get("content"), str))
    return make_call(obj.get("id") or f"row-{row}", row, {}, repair_text(text), turns)


def _parts_text(content: Any) -> str:
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        raise Reject("unparseable transcript")
    return "".join(p["text"] for p in content["parts"] if isinstance(p, dict) and isinstance(p.get("text"), str))


def parse_vertex(row: int, line: str, src: ParseSettings) -> Call:
    obj = json_object(line)
    contents = list_field(obj, "contents")
    items = [{"role": c.get("role"), "text": _parts_text(c)} if isinstance(c, dict) else c for c in contents]
    turns = role_turns(items, CHAT_ROLES, "role", "text")
    system = _parts_text(obj["systemInstruction"]) if obj.get("systemInstruction") else ""
    return make_call(obj.get("id") or f"row-{row}", row, {}, repair_text(system), turns)
