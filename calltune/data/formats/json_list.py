"""The JSON list formats, read whole: qa_json (question/answer objects, a two-turn call each) and acronym (the
shape of ../shared/data/acronym/*_dataset.json; conversation i of acronym A is call "A-i")."""
from __future__ import annotations

from typing import Any

from calltune.conversation.schema import Call
from calltune.data.formats.base import CHAT_ROLES, ParseSettings, Reject, make_call, role_turns


def parse_qa_json(row: int, obj: Any, src: ParseSettings) -> Call:
    if not isinstance(obj, dict):
        raise Reject("unparseable transcript")
    for key in src.qa_keys:
        if not isinstance(obj.get(key), str):
            raise Reject(f"missing field '{key}'")
    q, a = src.qa_keys
    turns = role_turns([{"role": "seller", "text": obj[q]}, {"role": "customer", "text": obj[a]}],
                   {"seller": "seller", "customer": "customer"}, "role", "text")
    return make_call(obj.get("id") or f"row-{row}", row, {}, "", turns)


def parse_acronym(row: int, rec: Any, src: ParseSettings) -> Call:
    if not isinstance(rec, tuple):  # the whole entry, lacking a field
        missing = "acronym" if not isinstance(rec, dict) or "acronym" not in rec else "conversation"
        raise Reject(f"missing field '{missing}'")
    acronym, i, conversation = rec
    return make_call(f"{acronym}-{i}", row, {}, "", role_turns(conversation, CHAT_ROLES, "role", "content"))
