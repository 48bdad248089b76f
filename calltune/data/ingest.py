"""Ingest: raw call data in any supported format -> calls.jsonl (schema.Call), bad rows -> quarantine.jsonl.

Formats (`data.format`, or "auto" to detect from the extension and the first record):
- seed_csv: the seed system's export, one call per row. `transcription` is a Python-literal list of
  {'message', 'role'} (parsed without eval); roles go through `data.role_map` (bot -> customer, user -> seller).
  call_id comes from `id`, else `meeting_id`, else the row number; `data.persona_fields` columns form the persona.
  A graded export's evaluation columns (grade, feedbacks, overview, positive, negative) go beside the call as
  `evaluation`; a row whose evaluation is unusable keeps its call and gets `evaluation_problem` (seed_csv.py).
- calls_jsonl: {"call_id", "turns": [{"role", "text"}], "persona"?, "system"?}, roles through `data.role_map`.
- qa_json: a JSON list of objects; `data.qa_input_key` is the seller's question, `data.qa_output_key` the
  customer's answer (a two-turn call).
- acronym: the shape of ../shared/data/acronym/*_dataset.json; conversation i of acronym A is call "A-i".
- messages (HF {"messages": [{role, content}]}) and vertex ({"systemInstruction"?, "contents": [{role, parts}]})
  JSONL: one call per line, user -> seller, assistant/model -> customer, the system message -> system.

Every text (persona values included) is repaired (mojibake, HTML entities). The system instruction is
`data.system_prompt` filled from the persona (missing fields blank) for seed_csv and calls_jsonl; the chat
formats keep their own; qa_json and acronym, which are not calls, get none.
Each input unit (CSV row, JSONL line, list item, acronym conversation) becomes exactly one call or one
quarantine row, so rows = calls + quarantined. Hostile rows are quarantined, never a traceback: a text longer than
`data.max_field_chars` (checked before a literal is parsed, so memory stays bounded), nesting too deep, a lone
surrogate (not Unicode). NUL and other control characters (but tab and newlines) are removed from every text.
A file that cannot be read at all (not UTF-8, CR-only line endings) is refused with one line naming file and row.
Row numbers are 1-based (CSV: data row; JSONL: line). The parsers, one module per file format, are in
calltune.data.formats; the process pool in calltune.core.parallel.
The JSON list formats are single documents and are read whole; every other format streams.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from tqdm import tqdm

from calltune.conversation.schema import Call
from calltune.core.io import atomic_open, dumps
from calltune.core.parallel import map_chunks
from calltune.data.formats import PARSERS
from calltune.data.formats.base import ROLES, ParseSettings, Reject
from calltune.data.formats.seed_csv import EVALUATION_COLUMNS, parse_transcript

__all__ = ["IngestError", "Quarantine", "Source", "bundled_sample_path", "check", "default_workers", "detect_format",
           "ingest", "iter_calls", "map_chunks", "parse_chunk", "parse_transcript", "resolve_input"]

if TYPE_CHECKING:
    from calltune.config import DataConfig

log = logging.getLogger(__name__)

_CONTROL = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])  # removed from texts
_SURROGATE = re.compile("[\ud800-\udfff]")
DETECT_LIMIT = 16 << 20        # bytes of the first record read to detect the format
RAW_LIMIT = 4000               # characters of a bad row kept in quarantine.jsonl
FIELD_LIMIT = 64 << 20         # longest CSV record (the csv module's default, 128 KiB, is too small)
PARALLEL_MIN_BYTES = 32 << 20  # below this, starting parser processes costs more than it saves
CHUNK_ROWS = 1000              # rows per chunk sent to a parser process


class IngestError(ValueError):
    pass


class Quarantine:
    """Context manager collecting rejected rows in quarantine.jsonl (written atomically on exit)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0
        self.by_reason: Counter = Counter()

    def __enter__(self) -> Quarantine:
        self._cm = atomic_open(self.path)
        self._fh = self._cm.__enter__()
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._cm.__exit__(*exc)

    def add(self, source: str, row: int, reason: str, raw: Any) -> None:
        raw = (raw if isinstance(raw, str) else _dumps_raw(raw))[:RAW_LIMIT]
        raw = raw.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate, kept visible as \udXXX
        self._fh.write(dumps({"source": source, "row": row, "reason": reason, "raw": raw}) + "\n")
        self.count += 1
        self.by_reason[reason] += 1


def _dumps_raw(raw: Any) -> str:
    try:
        return dumps(raw)
    except (ValueError, RecursionError):  # nested too deeply to write back: its start is enough to find it
        return repr(raw)[:RAW_LIMIT]


def bundled_sample_path() -> Path:
    return Path(str(resources.files("calltune.data").joinpath("bundled", "sample_calls_pt.csv")))


def resolve_input(s: str | Path) -> Path:
    """"" -> the bundled sample; gs://bucket/x -> /gcs/bucket/x (the Vertex GCS FUSE mount); else the path."""
    s = str(s)
    if not s:
        path = bundled_sample_path()
    elif s.startswith("gs://"):
        path = Path("/gcs") / s[len("gs://"):]
    else:
        path = Path(s).expanduser()
    if not path.is_file():
        hint = " (gs:// inputs are read through the /gcs FUSE mount, available on Vertex AI)" if s.startswith("gs://") else ""
        raise IngestError(f"input file not found: {path}{hint}")
    return path


def detect_format(path: str | Path) -> str:
    """seed_csv for .csv; otherwise from the first record: a JSON list (acronym or qa_json) or a JSONL object."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return "seed_csv"
    with open(path, "rb") as fh:
        row, first = 0, b""
        while not first.strip() and (line := fh.readline(DETECT_LIMIT)):
            row, first = row + 1, line
    try:
        first = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: row {row} is not UTF-8 text ({exc.reason}; a binary file?); give a CSV, JSON or "
                          f"JSONL file saved as UTF-8") from None
    head = first.lstrip()[:1]
    if head == "[":
        items = _load_json_list(path)
        first_item = items[0] if items and isinstance(items[0], dict) else {}
        return "acronym" if {"acronym", "conversation"} <= first_item.keys() else "qa_json"
    if head == "{":
        try:
            keys = json.loads(first).keys()
        except (json.JSONDecodeError, AttributeError, RecursionError) as exc:
            raise IngestError(f"{path}: cannot detect the format, the first line is not a JSON object; set data.format") from exc
        for key, fmt in (("messages", "messages"), ("contents", "vertex"), ("turns", "calls_jsonl")):
            if key in keys:
                return fmt
        raise IngestError(f"{path}: cannot detect the format from the first record's keys {sorted(keys)}; set data.format")
    if "transcription" in first:
        return "seed_csv"
    raise IngestError(f"{path}: cannot detect the format (empty file, or neither CSV nor JSON); set data.format")


# ---------------------------------------------------------------- the input: format, settings, chunks

class Source(ParseSettings):
    """An input file opened for reading: its format, what the parsers need from the config and, for CSV,
    the columns. Small and picklable: it travels to the parser processes."""

    def __init__(self, path: str | Path, cfg: DataConfig):
        super().__init__(cfg)
        self.path = Path(path)
        self.fmt = detect_format(self.path) if cfg.format == "auto" else cfg.format
        if self.fmt not in PARSERS:
            raise IngestError(f"unknown data.format {self.fmt!r}")
        bad = {k: v for k, v in self.role_map.items() if v not in ROLES}
        if bad:
            raise IngestError(f"data.role_map maps {bad} to roles other than {ROLES}")
        try:
            self.system({})
        except (ValueError, IndexError, KeyError, AttributeError) as exc:
            raise IngestError(f"data.system_prompt is not a valid template ({exc!r}): {self.system_prompt!r}") from exc
        self.columns: list[tuple[int, str]] = []  # seed_csv: (index, name) of the columns a call needs
        self.data_offset = 0
        if self.fmt == "seed_csv":
            with open(self.path, "rb") as fh:
                first = _csv_record(fh, self.path, 0)
                self.data_offset = fh.tell()
            if b"\r" in first.rstrip(b"\r\n"):
                raise IngestError(f"{self.path}: row 0 (the header) holds a bare carriage return: CR-only line endings "
                                  f"(old Mac) or a broken header; save the file with LF or CRLF line endings")
            try:
                header = next(csv.reader([first.decode("utf-8-sig", "replace")]), [])
            except csv.Error as exc:
                raise IngestError(f"{self.path}: row 0 (the header): malformed CSV ({exc})") from None
            if "transcription" not in header:
                raise IngestError(f"{self.path}: no 'transcription' column (columns: {header})")
            wanted = {"transcription", "id", "meeting_id", *self.persona_fields, *EVALUATION_COLUMNS}
            self.columns = [(i, name) for i, name in enumerate(header) if name in wanted]
            self.evaluation = bool({"grade", "feedbacks"} & set(header))

    def chunks(self) -> Iterator[tuple[int, Any]]:
        """(first row number, payload) for every CHUNK_ROWS rows, read in the parent process. The streaming
        formats travel as the raw bytes of whole records: cheap to read and send, decoded by the parser."""
        if self.fmt in ("qa_json", "acronym"):
            records = _json_records(self.path, self.fmt)
            while chunk := list(islice(records, CHUNK_ROWS)):
                yield chunk[0][0], chunk
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.data_offset)
            row = 1
            while True:
                payload = b"".join(_csv_record(fh, self.path, row + i) if self.fmt == "seed_csv" else fh.readline()
                                   for i in range(CHUNK_ROWS))
                if not payload:
                    return
                yield row, payload
                row += CHUNK_ROWS


def _csv_record(fh: BinaryIO, path: Path, row: int) -> bytes:
    """One CSV record as bytes: lines up to one that closes every quote opened (a quote inside a field
    is doubled, so an even count closes them all); b"" at the end of the file."""
    record = line = fh.readline()
    while line and record.count(b'"') % 2:
        if len(record) > FIELD_LIMIT:
            raise IngestError(f"{path}: row {row}: a quoted field runs past {FIELD_LIMIT >> 20} MiB (an unclosed quote?)")
        line = fh.readline()
        record += line
    return record


def _load_json_list(path: Path) -> list:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise IngestError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from exc
    except RecursionError:
        raise IngestError(f"{path}: JSON nested too deeply to read (thousands of levels); not a list of records") from None
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not UTF-8 text at byte {exc.start} ({exc.reason}); save it as UTF-8") from None
    if not isinstance(data, list):
        raise IngestError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return data


def _json_records(path: Path, fmt: str) -> Iterator[tuple[int, Any]]:
    items = enumerate(_load_json_list(path), 1)
    if fmt == "qa_json":
        yield from items
        return
    for row, item in items:  # acronym: one record per conversation
        if not isinstance(item, dict) or not {"acronym", "conversation"} <= item.keys():
            yield row, item  # rejected by the parser as a missing field
            continue
        conversations = item["conversation"] if isinstance(item["conversation"], list) else [None]
        for i, conversation in enumerate(conversations, 1):
            yield row, (item["acronym"], i, conversation)


# ---------------------------------------------------------------- parsing a chunk (in the parser processes)

def _decode(src: Source, first_row: int, payload: bytes) -> str:
    try:
        return payload.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = first_row + payload.count(b"\n", 0, exc.start)
        raise IngestError(f"{src.path}: row {row} is not UTF-8 text ({exc.reason}); re-export the file as UTF-8") from None


def _records(src: Source, first_row: int, payload: Any) -> Iterator[tuple[int, Any]]:
    """(1-based row number, raw record) for every input unit of a chunk."""
    if src.fmt in ("qa_json", "acronym"):
        yield from payload
        return
    text = _decode(src, first_row, payload)
    if src.fmt != "seed_csv":
        for row, line in enumerate(text.split("\n"), first_row):
            if line.strip():
                yield row, line
        return
    csv.field_size_limit(FIELD_LIMIT)
    row = first_row
    try:
        for row, values in enumerate(csv.reader(io.StringIO(text)), first_row):
            if values:
                yield row, {name: values[i] for i, name in src.columns if i < len(values)}
    except csv.Error as exc:
        raise IngestError(f"{src.path}: row {row}: malformed CSV ({exc})") from None


def parse_chunk(src: Source, chunk: tuple[int, Any]) -> tuple[list[Call], list[tuple[int, str, Any]]]:
    """A chunk of Source.chunks -> its calls, and its rejected rows as (row, reason, raw record)."""
    parse = PARSERS[src.fmt]
    calls, rejects = [], []
    for row, rec in _records(src, *chunk):
        try:
            calls.append(_clean(parse(row, rec, src), src.max_field_chars))
        except Reject as exc:
            rejects.append((row, str(exc), rec))
    return calls, rejects


def _clean_text(text: str, name: str, limit: int) -> str:
    if len(text) > limit:
        raise Reject(f"{name} of {len(text)} characters, over data.max_field_chars={limit}")
    if _SURROGATE.search(text):
        raise Reject(f"{name} holds a lone surrogate (\\ud800-\\udfff): not valid Unicode text")
    return text.translate(_CONTROL)


def _clean(call: Call, limit: int) -> Call:
    """The call with NUL and control characters removed from its texts; Reject for a text too long or not Unicode."""
    call["turns"] = [{**t, "text": _clean_text(t["text"], f"turn {i} text", limit)} for i, t in enumerate(call["turns"], 1)]
    call["system"] = _clean_text(call["system"], "system", limit)
    call["persona"] = {_clean_text(k, "persona key", limit): _clean_text(v, f"persona {k!r}", limit)
                       for k, v in call["persona"].items()}
    call["call_id"] = _clean_text(call["call_id"], "call_id", limit)
    if "evaluation" in call:  # a bad evaluation leaves the call usable for training: the coach counts the problem
        try:
            call["evaluation"] = _clean_evaluation(call["evaluation"], limit)
        except Reject as exc:
            del call["evaluation"]
            call["evaluation_problem"] = str(exc)
    return call


def _clean_evaluation(evaluation: dict, limit: int) -> dict:
    def clean(text: str, name: str) -> str:
        return _clean_text(text, f"evaluation {name}", limit)

    return {**evaluation, **{k: clean(evaluation[k], k) for k in ("overview", "positive", "negative")},
            "feedbacks": [{"title": clean(f["title"], "criterion title"), "summary": clean(f["summary"], "summary"),
                           "checklist": [{"type": clean(c["type"], "checklist item"), "status": c["status"]}
                                         for c in f["checklist"]]} for f in evaluation["feedbacks"]]}


def default_workers(path: str | Path) -> int:
    """All CPUs for a large file; one (no process start-up) for a small one."""
    return (os.cpu_count() or 1) if Path(path).stat().st_size >= PARALLEL_MIN_BYTES else 1


def iter_calls(path: str | Path, cfg: DataConfig, quarantine: Quarantine, *,
               workers: int | None = None, stats: dict | None = None) -> Iterator[Call]:
    """Stream the file's calls, in order; rejected rows go to `quarantine`.

    workers: parser processes (None: default_workers). `stats`, if given, gets "format" and the running "rows".
    """
    src = Source(path, cfg)
    workers = default_workers(src.path) if workers is None else workers
    stats = {} if stats is None else stats
    stats.update(format=src.fmt, rows=0)
    log.info("ingest %s as %s (%d parser process%s)", src.path, src.fmt, workers, "es" if workers > 1 else "")
    for calls, rejects in map_chunks(parse_chunk, src, src.chunks(), workers):
        stats["rows"] += len(calls) + len(rejects)
        for reject in rejects:
            quarantine.add(str(src.path), *reject)
        yield from calls


def check(path: str | Path, rows: int, calls: int, quarantine: Quarantine, max_bad_fraction: float) -> None:
    """Raise IngestError when nothing usable is left or too large a share of rows was quarantined."""
    reasons = ", ".join(f"{r}: {n}" for r, n in quarantine.by_reason.most_common()) or "none"
    where = f"see {quarantine.path}"
    if calls == 0:
        raise IngestError(f"{path}: no usable call in {rows} rows (quarantined by reason: {reasons}; {where})")
    if rows and quarantine.count / rows > max_bad_fraction:
        raise IngestError(f"{path}: {quarantine.count} of {rows} rows quarantined ({quarantine.count / rows:.1%}), "
                          f"more than data.max_bad_fraction={max_bad_fraction:g} (by reason: {reasons}; {where})")


def ingest(input_path: str | Path, calls_out: str | Path, quarantine_out: str | Path, cfg: DataConfig) -> dict:
    """Input file -> calls.jsonl + quarantine.jsonl; returns the report (raises IngestError, see check)."""
    path = resolve_input(input_path)
    stats: dict = {}
    calls = 0
    with atomic_open(calls_out) as fh:
        with Quarantine(quarantine_out) as quarantine:
            for call in tqdm(iter_calls(path, cfg, quarantine, stats=stats), desc="ingest", unit=" calls",
                             file=sys.stderr, disable=None, mininterval=2):
                fh.write(dumps(call) + "\n")
                calls += 1
        check(path, stats["rows"], calls, quarantine, cfg.max_bad_fraction)  # quarantine kept, calls not
    return {"input": str(path), "format": stats["format"], "rows": stats["rows"], "calls": calls,
            "quarantined": quarantine.count, "by_reason": dict(quarantine.by_reason)}
