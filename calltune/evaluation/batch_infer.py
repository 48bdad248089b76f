"""Batch inference: the customer's reply to every test prompt, as a predictions table (Parquet and JSONL).

A local model generates with continuous batching (calltune.runtime.generation), greedy when `temperature` is 0,
else seeded sampling. The prompt is exactly the context teacher-forced scoring uses (`calltune.runtime.encoding`:
same chat rendering, same history trimming to max_seq_len), so both metrics see the same examples. Asked to
(`score_batch_size`), it scores the examples teacher-forced first and replies from the prompts that pass read,
without reading them again; the scores go beside the table (teacher_forced.json), where evaluate takes them for the
same weights. A Vertex AI endpoint or tuned Gemini model (`projects/P/locations/L/endpoints/E`) answers through
google-genai.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from calltune.backends.resources import is_vertex_model
from calltune.config import InferConfig, TuneConfig
from calltune.core.io import atomic_open, read_jsonl, write_json, write_jsonl
from calltune.runtime.encoding import encode_file, encoder, instructions, prompt_ids
from calltune.runtime.generation import Batch, PrefixCache, Request, stream
from calltune.runtime.guardrails import Guardrails
from calltune.runtime.loading import load_model, model_sha, model_source, read_model_card
from calltune.runtime.responders import GeminiResponder, card_split, earlier_turns
from calltune.runtime.sampling import Generation, Sampling
from calltune.runtime.scoring import score

log = logging.getLogger(__name__)

SCORES = "teacher_forced.json"  # beside a local model's predictions: its teacher-forced scores, for evaluate
COLUMNS = ("instructions", "target_responses", "candidate_responses", "model_id", "model_sha",
           "call_id", "turn_index", "example_id", "finish_reason", "retries")



@dataclass(frozen=True)
class Decoding:
    """How a local model's replies are made beyond InferConfig: the end-of-call marker it learned, and guarded
    decoding's rules (calltune.runtime.guardrails; None: off). `for_model` reads both from the model card."""
    end_of_call: str = ""
    rails: Guardrails | None = None

    @classmethod
    def for_model(cls, card: dict | None, cfg: InferConfig, guardrails: bool | None = None) -> Decoding:
        """`guardrails` None: as `cfg.guardrails` says."""
        return cls(card_split(card).end_of_call, Guardrails.from_card(card, cfg.guardrails if guardrails is None
                                                                        else guardrails))


def generate_batch(model, tokenizer, prompts: list[list[int]], cfg: InferConfig,
                   prefixes: PrefixCache | None = None, decoding: Decoding = Decoding(),
                   earlier: list[list[str]] | None = None) -> list[Generation]:
    """Replies to already-tokenized prompts, in the prompts' order, `cfg.batch_size` generated at once (the next
    starts as soon as one ends). Sampled rows draw their seeds from torch's global generator, so
    `transformers.set_seed` makes them reproducible. Longest first, through a prefix cache (`prefixes`, or one for
    this call): a call's earlier turns start like its later ones. `earlier[i]`: the customer's own earlier turns of
    prompt i's call, which guarded decoding checks reply i against."""
    prefixes = prefixes if prefixes is not None else PrefixCache()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    requests = [Request(prompts[i], cfg.max_new_tokens, cfg.temperature, cfg.top_p, end_of_call=decoding.end_of_call)
                for i in order]
    replies: list[Generation] = [Generation("", 0, 0, "stop")] * len(prompts)
    started = time.monotonic()
    for done, (i, generation) in enumerate(stream(model, tokenizer, requests, cfg.batch_size, prefixes,
                                                  rails=decoding.rails,
                                                  earlier=[earlier[j] for j in order] if earlier else None), 1):
        replies[order[i]] = generation
        if done % cfg.batch_size == 0 or done == len(order):
            log.info("generated %d/%d replies (%.2f replies/s)", done, len(order),
                     done / max(time.monotonic() - started, 1e-9))
    return replies


def guard_report(generations: list[Generation]) -> dict:
    """Counts of what guarded decoding did over `generations`: replies retried, retries, rules broken by a first
    try, replies that still broke a rule after the last try; and replies that ended the call."""
    guarded = [g.guard for g in generations if g.guard is not None]
    first = Counter(rule for a in guarded for rule in a.broken[0])
    return {"replies": len(generations), "guarded": len(guarded), "retried": sum(a.retries > 0 for a in guarded),
            "retries": sum(a.retries for a in guarded), "broken_first_try": dict(sorted(first.items())),
            "still_broken": sum(not a.passed for a in guarded),
            "ended_call": sum(g.finish_reason == "end_of_call" for g in generations)}


def score_and_reply(model, tokenizer, encoded: list[dict], cfg: InferConfig, batch_size: int,
                    prefixes: PrefixCache | None = None, decoding: Decoding = Decoding(),
                    earlier: list[list[str]] | None = None) -> tuple[dict[str, list], list[Generation]]:
    """Teacher-forced scores (`calltune.runtime.scoring.score`, `batch_size` rows a forward) and replies of the
    encoded rows (`generate_batch`). The prompt a row's scoring read is not read again to reply: scoring leaves it
    in the prefix cache (`prefixes`, or a new one), for as many rows at a time as the cache holds."""
    prefixes = (prefixes if prefixes is not None else PrefixCache()) if Batch.fits(model) else None
    chunks, held = [[]], 0
    for i, prompt in enumerate(prompt_ids(encoded)):
        if chunks[-1] and prefixes is not None and held + len(prompt) > prefixes.max_tokens:
            chunks, held = [*chunks, []], 0
        chunks[-1].append(i)
        held += len(prompt)
    scores: dict[str, list] = {"correct": [], "nll": [], "tokens": []}
    replies: list[Generation] = []
    for chunk in chunks:
        rows = [encoded[i] for i in chunk]
        for key, values in score(model, tokenizer, rows, batch_size, prefixes).items():
            scores[key] += values
        replies += generate_batch(model, tokenizer, prompt_ids(rows), cfg, prefixes, decoding,
                                  [earlier[i] for i in chunk] if earlier else None)
    return scores, replies


def _local(model_dir: Path, test_path: Path, cfg: InferConfig, max_seq_len: int | None, limit: int,
           seed: int, loaded=None, score_batch_size: int = 0):
    from transformers import set_seed

    card = read_model_card(model_dir)
    max_len = max_seq_len or (card["config"]["max_seq_len"] if card else TuneConfig().max_seq_len)
    model, tokenizer = loaded or load_model(model_dir)
    encoded, examples, skipped = encode_file(test_path, tokenizer, max_len, limit=limit,
                                             encode=encoder(model.config.is_encoder_decoder))
    set_seed(seed)  # only sampling draws from it
    decoding, earlier = Decoding.for_model(card, cfg), [earlier_turns(e) for e in examples]
    if score_batch_size:
        scores, replies = score_and_reply(model, tokenizer, encoded, cfg, score_batch_size, decoding=decoding,
                                          earlier=earlier)
        scored = {"max_seq_len": max_len, **scores}
    else:
        scored, replies = None, generate_batch(model, tokenizer, prompt_ids(encoded), cfg, decoding=decoding,
                                               earlier=earlier)
    return examples, replies, skipped, str(model_dir), model_sha(model_dir), scored


def _vertex(resource: str, test_path: Path, cfg: InferConfig, limit: int):
    examples = list(read_jsonl(test_path))[:limit or None]
    responder = GeminiResponder(resource, cfg.vertex_base_url, max_concurrency=cfg.max_concurrency)
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p)
    try:
        replies = [f.result() for f in [responder.start(e, sampling) for e in examples]]
    finally:
        responder.close()
    return examples, replies, 0, resource, "", None


def predict(source: str | Path, test_path: str | Path, out_dir: str | Path | None, cfg: InferConfig, *,
            seed: int = 42, max_seq_len: int | None = None, limit: int = 0, loaded=None,
            score_batch_size: int = 0) -> tuple[list[dict], dict]:
    """Replies of a model folder (or the endpoint its card names) or a Vertex resource to every test example; writes predictions.parquet and
    predictions.jsonl into `out_dir` (when given). Returns (rows, report). `loaded`: an already loaded
    (model, tokenizer) of the folder, to skip loading it again. `score_batch_size`: a local model also scores the
    examples teacher-forced (`score_and_reply`), into report["scores"] and out_dir/teacher_forced.json."""
    started = time.monotonic()
    test_path = Path(test_path)
    if not is_vertex_model(source):
        source = model_source(source)  # a remote model's folder names its endpoint
    if is_vertex_model(source):
        examples, replies, skipped, model_id, sha, scored = _vertex(str(source), test_path, cfg, limit)
    else:
        examples, replies, skipped, model_id, sha, scored = _local(Path(source), test_path, cfg, max_seq_len, limit,
                                                                   seed, loaded, score_batch_size)
    rows = [{"instructions": instructions(e), "target_responses": e["target"], "candidate_responses": r.text,
             "model_id": model_id, "model_sha": sha, "call_id": e.get("call_id", ""),
             "turn_index": int(e.get("turn_index", -1)), "example_id": e.get("example_id", ""),
             "finish_reason": r.finish_reason, "retries": r.guard.retries if r.guard else 0}
            for e, r in zip(examples, replies)]
    seconds = time.monotonic() - started
    report = {"rows": len(rows), "skipped": skipped, "model_id": model_id, "model_sha": sha,
              "seconds": round(seconds, 2), "replies_per_s": round(len(rows) / max(seconds, 1e-9), 3),
              "decoding": "sampled" if cfg.temperature > 0 else "greedy", "guardrails": guard_report(replies)}
    if out_dir is not None:
        write_predictions(rows, Path(out_dir))
        if scored is not None:
            write_json(Path(out_dir) / SCORES, {"model_sha": sha, "example_ids": [r["example_id"] for r in rows],
                                                **scored})
    log.info("predictions: %d replies from %s in %.1f s (%d skipped)", len(rows), model_id, seconds, skipped)
    if scored is None:
        return rows, report
    return rows, {**report, "scores": {k: scored[k] for k in ("correct", "nll", "tokens")}}


def read_scores(predictions: str | Path, *, model_sha: str, max_seq_len: int,
                example_ids: list[str]) -> dict[str, list] | None:
    """The teacher-forced scores batch inference left beside its predictions (`predict` with `score_batch_size`):
    correct, nll and tokens per example, as `calltune.runtime.scoring.score` gives them. None unless they are of
    this model (weights sha), max_seq_len and examples, in this order."""
    path = Path(predictions)
    path = (path if path.is_dir() else path.parent) / SCORES
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if [saved.get(k) for k in ("model_sha", "max_seq_len", "example_ids")] != [model_sha, max_seq_len, example_ids]:
        return None
    return {k: saved[k] for k in ("correct", "nll", "tokens")}


def write_predictions(rows: list[dict], out_dir: Path, columns: tuple[str, ...] = COLUMNS) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=pa.schema(
        [(c, pa.int64() if c in ("turn_index", "retries") else pa.string()) for c in columns]))
    with atomic_open(out_dir / "predictions.parquet", "wb") as fh:
        pq.write_table(table, fh)
    write_jsonl(out_dir / "predictions.jsonl", ({c: r[c] for c in columns} for r in rows))


def publish_predictions(rows: list[dict], uri: str, run_id: str) -> list[str]:
    """Write the predictions table with a `run_id` column as predictions.parquet and predictions.jsonl under
    `<uri>/<run_id>/` (a gs:// or local folder) and return their URIs. A retry of the run writes the same files
    again in place: one copy per run, never a second one."""
    import tempfile

    from calltune.core import gcs

    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise ValueError(f"publishing predictions needs a run id usable as a folder name (got {run_id!r})")
    published = [{**r, "run_id": run_id} for r in rows]
    files = (("predictions.parquet", "application/vnd.apache.parquet"), ("predictions.jsonl", "application/jsonl"))
    if gcs.is_gcs(uri):
        gcs.parse_uri(uri, what="evaluate.publish_uri", folder=True)
        client = gcs.client()
        with tempfile.TemporaryDirectory() as tmp:
            write_predictions(published, Path(tmp), (*COLUMNS, "run_id"))
            uris = [gcs.upload_file(Path(tmp) / name, gcs.join(uri, run_id, name), content_type=ctype, gcs=client)
                    for name, ctype in files]
    else:
        folder = Path(uri).expanduser() / run_id
        write_predictions(published, folder, (*COLUMNS, "run_id"))
        uris = [str(folder / name) for name, _ in files]
    log.info("published %d predictions to %s", len(rows), ", ".join(uris))
    return uris


def read_predictions(path: str | Path) -> list[dict]:
    """Rows of a predictions folder (or its .parquet / .jsonl file)."""
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.parquet"
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return list(read_jsonl(path))
