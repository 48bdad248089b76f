"""The input formats' parsers: one record (a CSV row, a JSONL line, a JSON list item) -> one call, or Reject."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from calltune.conversation.schema import Call
from calltune.data.formats.base import ParseSettings
from calltune.data.formats.json_list import parse_acronym, parse_qa_json
from calltune.data.formats.jsonl import parse_calls_jsonl, parse_messages, parse_vertex
from calltune.data.formats.seed_csv import parse_seed_csv

PARSERS: dict[str, Callable[[int, Any, ParseSettings], Call]] = {
    "seed_csv": parse_seed_csv, "calls_jsonl": parse_calls_jsonl, "messages": parse_messages,
    "vertex": parse_vertex, "qa_json": parse_qa_json, "acronym": parse_acronym}
