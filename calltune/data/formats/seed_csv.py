"""seed_csv: the seed system's export, one call per row. `transcription` is a Python-literal list of
{'message', 'role'} (parsed without eval); call_id from `id`, else `meeting_id`, else the row number.

A graded export also carries the company's grading of each call (EVALUATION_COLUMNS): `grade` (0-10), `feedbacks`
(one {title, summary, checklist: [{type, status}]} per criterion of its scorecard) and `overview`, `positive`,
`negative` ({title, summary}). They are kept beside the call as `evaluation`, texts repaired like the turns. A row
whose evaluation cannot be used (missing, unreadable, out of range) is still a call for training: it gets
`evaluation_problem` instead, naming the field, and the coach counts it."""
from __future__ import annotations

import ast
import re
from typing import Any

from calltune.conversation.schema import Call, Evaluation, Feedback
from calltune.data.formats.base import ParseSettings, Reject, make_call, repair_field, role_turns

# Python's repr of the export's list: [{'message': '...', 'role': 'bot'}, ...]. Matched exactly, it is read
# several times faster than ast.literal_eval (the main cost of ingest); anything else goes to literal_eval.
_PYSTR = r"""'[^'\\\n]*(?:\\.[^'\\\n]*)*'|"[^"\\\n]*(?:\\.[^"\\\n]*)*\""""
# group 1: a message in plain quotes, taken as is; group 2: any other string literal; group 3: the role
_ITEM = re.compile(rf"\{{'message': (?:'([^'\\\n]*)'|({_PYSTR})), 'role': '(\w+)'\}}")
EVALUATION_COLUMNS = ("grade", "feedbacks", "overview", "positive", "negative")
SUMMARIES = ("overview", "positive", "negative")
GRADE_RANGE = (0, 10)


class EvaluationProblem(ValueError):
    """Why a row's evaluation columns cannot be used (the row itself still can)."""


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


def _literal(rec: dict[str, str], name: str, max_chars: int) -> Any:
    text = (rec.get(name) or "").strip()
    if not text:
        raise EvaluationProblem(f"{name}: missing")
    if len(text) > max_chars:  # literal_eval takes far more memory than the text
        raise EvaluationProblem(f"{name}: {len(text)} characters, over data.max_field_chars={max_chars}")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise EvaluationProblem(f"{name}: unreadable (not a literal)") from None


def _text(obj: dict, key: str, where: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise EvaluationProblem(f"{where}: {key} is not text")
    return repair_field(value)


def _grade(rec: dict[str, str]) -> float:
    text = (rec.get("grade") or "").strip()
    if not text:
        raise EvaluationProblem("grade: missing")
    try:
        grade = float(text.replace(",", "."))
    except ValueError:
        raise EvaluationProblem(f"grade: unreadable ({text[:20]!r})") from None
    low, high = GRADE_RANGE
    if not low <= grade <= high:  # NaN fails too
        raise EvaluationProblem(f"grade: {text[:20]} out of range {low}-{high}")
    return int(grade) if grade.is_integer() else grade


def _feedbacks(rec: dict[str, str], max_chars: int) -> list[Feedback]:
    items = _literal(rec, "feedbacks", max_chars)
    if not isinstance(items, list) or not all(isinstance(c, dict) for c in items):
        raise EvaluationProblem("feedbacks: unreadable (not a list of criteria)")
    out: list[Feedback] = []
    for i, criterion in enumerate(items, 1):
        where = f"feedbacks: criterion {i}"
        checklist = criterion.get("checklist", [])
        if not isinstance(checklist, list) or not all(isinstance(c, dict) and isinstance(c.get("status"), bool)
                                                      for c in checklist):
            raise EvaluationProblem(f"{where}: checklist is not a list of {{type, status: True/False}}")
        title = _text(criterion, "title", where)
        if not title:
            raise EvaluationProblem(f"{where}: no title")
        out.append({"title": title, "summary": _text(criterion, "summary", where),
                    "checklist": [{"type": _text(c, "type", where), "status": c["status"]} for c in checklist]})
    return out


def _summary(rec: dict[str, str], name: str, max_chars: int) -> str:
    if not (rec.get(name) or "").strip():
        return ""  # the grade and the criteria are what the coach learns from; these only illustrate
    obj = _literal(rec, name, max_chars)
    if not isinstance(obj, dict):
        raise EvaluationProblem(f"{name}: unreadable (not a {{title, summary}} object)")
    return _text(obj, "summary", name)


def parse_evaluation(rec: dict[str, str], max_chars: int) -> Evaluation:
    """The row's evaluation columns; EvaluationProblem names the first that cannot be used."""
    return {"grade": _grade(rec), **{k: _summary(rec, k, max_chars) for k in SUMMARIES},
            "feedbacks": _feedbacks(rec, max_chars)}


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
    call = make_call(call_id, row, persona, src.system(persona), turns)
    if src.evaluation:
        try:
            call["evaluation"] = parse_evaluation(rec, src.max_field_chars)
        except EvaluationProblem as exc:
            call["evaluation_problem"] = str(exc)
    return call
