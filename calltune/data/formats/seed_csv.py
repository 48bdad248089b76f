"""seed_csv: the seed system's export, one call per row. `transcription` is a Python-literal list of
{'message', 'role'} (parsed without eval); call_id from `id`, else `meeting_id`, else the row number."""
from __future__ import annotations

import ast
import re
from typing import Any

from calltune.conversation.schema import Call
from calltune.data.formats.base import (
    ParseSettings,
    Reject,
    make_call,
    repair_field,
    role_turns,
)

# Python's repr of the export's list: [{'message': '...', 'role': 'bot'}, ...]. Matched exactly, it is read
# several times faster than ast.literal_eval (the main cost of ingest); anything else goes to literal_eval.
_PYSTR = r"""'[^'\\\n]*(?:\\.[^'\\\n]*)*'|"[^"\\\n]*(?:\\.[^"\\\n]*)*\""""
# group 1: a message in plain quotes, taken as is; group 2: any other string literal; group 3: the role
_ITEM = re.compile(rf"\{{'message': (?:'([^'\\\n]*)'|({_PYSTR})), 'role': '(\w+)'\}}")


def parse_transcript(text: str, max_chars: int | None = None) -> Any:
    """The Python literal in `transcription`, read without eval; raises ValueError/SyntaxError if not a literal.
    A literal outside the fast path longer than `max_chars` is refused before parsing: literal_eval takes about
    180 times the text in memory."""
    out, pos, end = [], 1, len(text) - 1
    if text[:1] == "[" and text[end:] == "]":
        while m := _ITEM.match(text, pos):
            message = m[1]
            out.append({"message": ast.literal_eval(m[2]) if message is None else message, "role": m[3]})
            pos = m.end()
            if pos == end:
                return out
            if not text.startswith(", ", pos):
                break
            pos += 2
    if max_chars is not None and len(text) > max_chars:
        raise Reject(f"transcript literal of {len(text)} characters, over data.max_field_chars={max_chars}")
    return ast.literal_eval(text)


def parse_seed_csv(row: int, rec: dict[str, str], src: ParseSettings) -> Call:
    text = rec.get("transcription")
    if text is None or not text.strip():
        raise Reject("missing field 'transcription'")
    try:
        items = parse_transcript(text, src.max_field_chars)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise Reject("unparseable transcript") from None
    turns = role_turns(items, src.role_map, "role", "message")
    persona = {f: repair_field(rec[f]) for f in src.persona_fields if rec.get(f)}
    call_id = rec.get("id") or rec.get("meeting_id") or f"row-{row}"
    return make_call(call_id, row, persona, src.system(persona), turns)
