"""Evaluate the tuned model beside the base model and the champion on the held-out test examples.

Token accuracy (the gate) = share of target tokens t where argmax(logits at t-1) == token t (Vertex's "fraction
of correct next step predictions"); loss = mean negative log-likelihood over the same tokens; perplexity =
exp(loss). The target tokens and the scores come from the model runtime (`calltune.runtime.encoding` and `.scoring`;
an encoder-decoder model is teacher-forced on the decoder), the definition training uses; the tuned model's come
from batch inference when it scored the same weights and examples. Each model also answers every test prompt
(calltune.evaluation.batch_infer, from the prompts its scoring read), and its replies are scored against the real customer's:
ROUGE-L, chrF, BLEU, embedding cosine, reply length, distinct-n, and the cross-encoder and the LLM judge when
configured; calltune.evaluation.error_analysis lists each model's worst replies and failure categories (errors.json).
Every metric carries a seeded bootstrap 95% interval over the test examples (calltune.evaluation.metrics). The gate's decision
(calltune.evaluation.gate) and the evidence go into report.html: metric table, bar charts with the intervals, loss curve,
and side-by-side sample conversations.
Whole calls: each local or Vertex model also plays every held-out test call closed-loop (calltune.evaluation.simulate: the real
seller's turns, the model's own earlier replies), and calltune.evaluation.realism compares those calls with the real ones
(discriminator AUC, role adherence, form, friction and endings, each with a 95% interval over calls); the gate can
check them (off by default) and the report has a "Whole-call realism" section.
The report also shows the coach the model carries (its "Coaching" section: the scorecard and the coach's figures, read
from the model folder as the coach step wrote them, calltune.release.model_card.coach_summary).

One scorer per kind of model (`score_local`, `score_vertex`), one `measure` of what they answered, one `EvalContext`
that every model is scored with; comparison.json is written by calltune.evaluation.comparison, report.md/html by
calltune.evaluation.report.
"""
from __future__ import annotations

import functools
import gc
import logging
import math
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from calltune.backends.resources import is_vertex_model
from calltune.config import DeployConfig, EvaluateConfig, InferConfig, JudgeConfig, SimulateConfig, TuneConfig
from calltune.core.io import read_jsonl, write_json, write_jsonl
from calltune.evaluation import metrics as M
from calltune.evaluation.batch_infer import Decoding, predict, read_predictions, read_scores
from calltune.evaluation.comparison import write as write_comparison
from calltune.evaluation.error_analysis import analyze
from calltune.evaluation.gate import decide
from calltune.evaluation.judge import Judge
from calltune.evaluation.report import HEADLINE, REPORTED, write_report
from calltune.release.model_card import write_model_card
from calltune.runtime.embeddings import CrossEncoderScorer, Embedder
from calltune.runtime.encoding import encode_file, encoder
from calltune.runtime.loading import device, load_model, model_sha, model_source, read_model_card, set_threads
from calltune.runtime.scoring import score

if TYPE_CHECKING:
    from calltune.backends.generator_base import Generator
    from calltune.evaluation.simulate import Call

log = logging.getLogger(__name__)


def current_champion(cfg: DeployConfig, state_dir: Path) -> tuple[str | None, str]:
    """(the model in the secret's latest version, a note); (None, why) when there is none to compare with."""
    from calltune.backends.registry import RegistryError
    from calltune.release.store import model_path_from_endpoint, resolve_endpoint

    try:
        endpoint = resolve_endpoint(cfg, state_dir)
    except RegistryError as exc:
        return None, f"no champion: nothing deployed yet in secret {cfg.secret_id!r} ({exc})"
    if is_vertex_model(endpoint):
        return endpoint, f"champion: Vertex endpoint {endpoint}"
    try:
        return str(model_path_from_endpoint(endpoint)), f"champion: {endpoint}"
    except (ValueError, FileNotFoundError) as exc:
        return None, f"no champion to compare with: {exc}"


@functools.lru_cache(maxsize=1)
def _embedder(name: str) -> Embedder:
    return Embedder(name)


@functools.lru_cache(maxsize=1)
def _cross_encoder(path: str) -> CrossEncoderScorer:
    return CrossEncoderScorer(path)


def _text(rows: list[dict], key: str) -> list[str]:
    return [r[key] or "" for r in rows]


UNGUARDED = ("base", "supervised")  # models measured without guarded decoding


@dataclass
class EvalContext:
    """What every model of one evaluation is scored with: the same test examples, trimmed the same way, the same
    decoding and bootstrap, and the judge, the simulated calls and the seller when they are on."""
    cfg: EvaluateConfig
    infer: InferConfig
    test_path: Path
    out_dir: Path
    max_len: int
    seed: int
    judge: Judge | None = None
    simulation: SimulateConfig | None = None  # None: whole-call simulation is off
    calls: list[Call] = field(default_factory=list)  # the held-out calls every model plays
    seller: Generator | None = None  # the model that plays the seller; None: the real seller is replayed
    simulation_report: dict = field(default_factory=dict)  # how the calls were cut from the test examples

    @property
    def bootstrap(self) -> dict:
        return {"samples": self.cfg.bootstrap_samples, "seed": self.seed}

    def infer_for(self, name: str) -> InferConfig:
        """The base model is measured as it comes, and the supervised model before its preference rounds as it was,
        without guarded decoding (their realism stays comparable, the run short); the others with the run's."""
        return self.infer.model_copy(update={"guardrails": False}) if name in UNGUARDED else self.infer


def score_vertex(name: str, source: str, ctx: EvalContext, *, predictions=None, reported: dict | None = None) -> dict:
    """A Vertex AI endpoint or tuned Gemini: its replies (from batch inference when it already asked), no token
    probabilities. `reported`: the model card of an endpoint whose tuning job reported its validation metrics."""
    from calltune.evaluation.simulate import vertex_replier, whole_calls

    infer = ctx.infer_for(name)
    if predictions is not None:
        rows, report = read_predictions(predictions), {}
    else:
        rows, report = predict(source, ctx.test_path, ctx.out_dir / "predictions" / name, infer, seed=ctx.seed,
                               limit=ctx.cfg.max_examples)
    record = {"source": str(source), "rows": rows, "model_sha": report.get("model_sha", ""),
              "note": "a Vertex endpoint gives no token probabilities: text metrics only"}
    if reported and reported.get("validation_token_accuracy") is not None:
        record["note"] = (f"accuracy{' and loss' if reported.get('validation_loss') is not None else ''}: "
                          f"{REPORTED}, without a bootstrap interval (a Vertex endpoint gives no token "
                          f"probabilities); the other metrics score its replies to the test prompts")
    if ctx.simulation is not None:
        record.update(whole_calls(name, ctx.calls, vertex_replier(str(source), infer), ctx.simulation,
                                  seller=ctx.seller, seed=ctx.seed))
    return record


def score_local(name: str, source: Path, ctx: EvalContext, *, predictions=None) -> dict:
    """A local model folder: teacher-forced scores (batch inference's, when it scored the same weights and
    examples), its replies, and its simulated calls."""
    from calltune.evaluation.simulate import local_replier, whole_calls
    from calltune.runtime.responders import card_split

    infer = ctx.infer_for(name)
    model, tokenizer = load_model(source)
    encoded, examples, skipped = encode_file(ctx.test_path, tokenizer, ctx.max_len, limit=ctx.cfg.max_examples,
                                             encode=encoder(model.config.is_encoder_decoder))
    log.info("evaluating %s (%s) on %d test examples (%d skipped) on %s", name, source, len(encoded), skipped,
             device())
    if predictions is not None:
        rows = read_predictions(predictions)
        ids = [e.get("example_id", "") for e in examples]
        if [r["example_id"] for r in rows] != ids:
            raise ValueError(f"{predictions}: the predictions are not of the {len(examples)} test examples "
                             f"evaluated here (batch inference ran on other examples or another max_seq_len)")
        sha = rows[0]["model_sha"] if rows else ""
        parts = read_scores(predictions, model_sha=model_sha(source), max_seq_len=ctx.max_len, example_ids=ids)
        if parts is None:
            parts = score(model, tokenizer, encoded, ctx.cfg.batch_size)
        else:
            log.info("%s: the teacher-forced scores batch inference made with the same weights", name)
    else:  # scored and answered in one pass: the replies reuse the prompts scoring read
        rows, report = predict(source, ctx.test_path, ctx.out_dir / "predictions" / name, infer, seed=ctx.seed,
                               max_seq_len=ctx.max_len, limit=ctx.cfg.max_examples, loaded=(model, tokenizer),
                               score_batch_size=ctx.cfg.batch_size)
        sha, parts = report.get("model_sha", ""), report.pop("scores")
    if name == "tuned" and sum(parts["tokens"]) == 0:
        raise ValueError(f"{ctx.test_path}: no customer-reply tokens to score ({len(encoded)} examples usable, "
                         f"{skipped} longer than max_seq_len={ctx.max_len}); the test set is empty")
    record = {"source": str(source), "rows": rows, "model_sha": sha, "skipped": skipped,
              "tokens": sum(parts["tokens"]), "parts": parts}
    if ctx.simulation is not None:
        # Greedy: each call's first reply is the one batch inference made to the same (real) first example.
        first = {r["example_id"]: (r["candidate_responses"] or "", r.get("finish_reason") or "stop",
                                   r.get("retries") or 0) for r in rows} if infer.temperature == 0 else None
        card = read_model_card(source)
        decoding = Decoding.for_model(card, infer)
        # The tuned model's realism is also measured without guarded decoding, so its gain shows.
        unguarded = local_replier(model, tokenizer, infer, ctx.max_len, Decoding.for_model(card, infer, False)) \
            if name == "tuned" and decoding.rails is not None else None
        record.update(whole_calls(name, ctx.calls, local_replier(model, tokenizer, infer, ctx.max_len, decoding),
                                  ctx.simulation, seller=ctx.seller, seed=ctx.seed, first=first, unguarded=unguarded,
                                  greedy=infer.temperature == 0, split=card_split(card)))
    del model
    gc.collect()
    return record


def measure(name: str, record: dict, ctx: EvalContext, *, reported: dict | None = None) -> dict:
    """Adds the model's metrics (each with its bootstrap interval) and per-example scores to its record."""
    rows, parts, kw = record["rows"], record.get("parts"), ctx.bootstrap
    est: dict[str, M.Estimate] = {}
    if parts is not None:
        est["accuracy"] = M.token_accuracy(parts["correct"], parts["tokens"], **kw)
        est["loss"] = M.loss(parts["nll"], parts["tokens"], **kw)
        est["perplexity"] = M.perplexity(est["loss"])
    elif reported and reported.get("validation_token_accuracy") is not None:
        est["accuracy"] = M.Estimate(float(reported["validation_token_accuracy"]), math.nan, math.nan, 0)
        if reported.get("validation_loss") is not None:
            est["loss"] = M.Estimate(float(reported["validation_loss"]), math.nan, math.nan, 0)
            est["perplexity"] = M.perplexity(est["loss"])
    candidates, targets = _text(rows, "candidate_responses"), _text(rows, "target_responses")
    cfg = ctx.cfg
    scores = M.example_scores(candidates, targets,
                              embedder=_embedder(cfg.embedding_model) if cfg.embedding_model else None,
                              cross_encoder=_cross_encoder(cfg.cross_encoder) if cfg.cross_encoder else None)
    est.update(M.text_metrics(candidates, targets, scores=scores, **kw))
    # Per example, for the error analysis: token accuracy (rows and encoded examples are in the same order).
    record["scores"] = {**({"accuracy": [c / t if t else None for c, t in zip(parts["correct"], parts["tokens"])]}
                           if parts is not None else {}), **{k: v.tolist() for k, v in scores.items()}}
    if ctx.judge is not None:
        from calltune.evaluation.judge import CRITERIA, judge

        verdict = judge(rows, ctx.judge, **kw)
        est.update({c: verdict[c] for c in CRITERIA})
        record["judge"] = {k: verdict[k] for k in ("requests", "failed", "unparseable")}
        judged = {j["example_id"]: j for j in verdict["judgments"]}
        record["scores"].update({c: [judged.get(r["example_id"], {}).get(c) for r in rows] for c in CRITERIA})
        write_jsonl(ctx.out_dir / "judge" / f"{name}.jsonl", verdict["judgments"])
    record.update(examples=len(rows), metrics=est)
    return record


def evaluate(model_dir: str | Path, test_path: str | Path, out_dir: str | Path, cfg: EvaluateConfig, *,
             infer: InferConfig | None = None, judge: JudgeConfig | None = None, champion: str | None = None,
             champion_note: str = "", predictions: str | Path | None = None, seed: int = 42,
             max_seq_len: int | None = None, state_dir: str | Path = ".", simulation: SimulateConfig | None = None) -> dict:
    """Score the model folder (tuned or plain base) and the models in `cfg.compare` on the test examples: the base
    model it was tuned from (from its model card) and `champion` (a model folder or Vertex resource; None: skipped,
    `champion_note` says why). `predictions`: the tuned model's predictions table, when batch inference already
    ran. Writes metrics.json, comparison.json, report.md/html, charts.png and predictions/<model>/ into out_dir;
    returns the tuned model's finite metrics (accuracy, loss, ..., base_accuracy, champion_accuracy).
    `simulation`: whole-call simulation and realism (default: on; comparison.json["realism"], simulated/<model>.jsonl)."""
    set_threads()
    model_dir, out_dir, test_path = Path(model_dir), Path(out_dir), Path(test_path)
    infer, judge, simulation = infer or InferConfig(), judge or JudgeConfig(), simulation or SimulateConfig()
    if cfg.cross_encoder:
        _cross_encoder(cfg.cross_encoder)  # a bad folder fails now, not after the models are scored
    card = read_model_card(model_dir)
    # One max_seq_len for every model: the same examples, trimmed the same way.
    max_len = max_seq_len or (card or {}).get("config", {}).get("max_seq_len") or TuneConfig().max_seq_len
    sources, skipped = _sources(model_dir, card, cfg, champion, champion_note)
    endpoint_card = card if is_vertex_model(sources["tuned"]) else None
    with ExitStack() as stack:  # the judge and the seller are closed however the evaluation ends
        ctx = _context(cfg, infer, judge, simulation, test_path, out_dir, max_len, seed, state_dir, stack)
        records, scored = {}, {}  # scored: weights sha -> the model already scored with them
        for name, source in sources.items():
            sha = None if is_vertex_model(source) else model_sha(Path(source))
            # e.g. the champion is this very model: the same weights give the same scores
            if sha is not None and sha in scored:
                records[name] = {**records[scored[sha]], "source": str(source),
                                 "note": f"the same weights as {scored[sha]}: its scores are reused"}
                continue
            scored[sha] = name
            mine = predictions if name == "tuned" else None
            reported = endpoint_card if name == "tuned" else None
            record = score_vertex(name, source, ctx, predictions=mine, reported=reported) if sha is None \
                else score_local(name, Path(source), ctx, predictions=mine)
            records[name] = measure(name, record, ctx, reported=reported)
        realism = _realism(records, ctx, card) if ctx.simulation is not None else None
    accuracy = {n: r["metrics"]["accuracy"].value if "accuracy" in r["metrics"] else None for n, r in records.items()}
    if "champion" in records and accuracy["champion"] is None:
        skipped["champion"] = records["champion"]["note"]
    gain = _gains(records, cfg.bootstrap_samples, seed)
    decision = decide(accuracy, cfg, skipped, intervals={n: r["metrics"].get("accuracy") for n, r in records.items()},
                      gain=gain, realism=realism and realism["metrics"])

    tuned = records["tuned"]["metrics"]
    result = {k: tuned.get(k, M.NAN).value for k in HEADLINE}  # an endpoint may report no accuracy or loss
    result.update(examples=records["tuned"]["examples"], tokens=records["tuned"].get("tokens", 0))
    result.update({k: e.value for k, e in tuned.items() if k not in HEADLINE})
    result.update({f"{n}_accuracy": accuracy[n] for n in ("supervised", "base", "champion") if n in records})
    result.update({f"gain_over_{n}": e.value for n, e in gain.items()})
    if realism is not None:
        result.update({f"realism_{k}": e.value for k, e in realism["metrics"].get("tuned", {}).items()})
    result = {k: v for k, v in result.items() if v is not None and math.isfinite(v)}  # NaNs stay in comparison.json

    out_dir.mkdir(parents=True, exist_ok=True)
    comparison = write_comparison(out_dir, records=records, skipped=skipped, gain=gain, decision=decision,
                                  realism=realism, test_path=test_path, max_seq_len=max_len, seed=seed,
                                  bootstrap_samples=cfg.bootstrap_samples,
                                  decoding=infer.model_dump(include={"max_new_tokens", "temperature", "top_p"}))
    for n, r in records.items():
        for key, suffix in (("simulated", ""), ("simulated_unguarded", "_unguarded")):
            if key in r:
                write_jsonl(out_dir / "simulated" / f"{n}{suffix}.jsonl", (c.as_dict() for c in r[key]))
    if card and "config" in card:  # a model calltune tuned: its model card, completed (calltune.release.model_card)
        write_model_card(model_dir, comparison=comparison, to=out_dir / "model_card.md")
    write_json(out_dir / "metrics.json", {**result, "skipped": records["tuned"].get("skipped", 0),
                                          "threshold": cfg.threshold, "model": str(model_dir),
                                          "base_model": (card or {}).get("base_model"), "test_path": str(test_path),
                                          "max_seq_len": max_len, "decision": decision["decision"],
                                          "decided_by": decision["decided_by"]})
    errors = {n: analyze(r["rows"], r["scores"], worst=cfg.error_examples) for n, r in records.items()}
    write_json(out_dir / "errors.json", errors)
    write_report(model_dir, records, skipped, decision, cfg, out_dir, errors, realism, gain, calls=ctx.calls,
                 simulation=ctx.simulation)
    log.info("accuracy %.4f, loss %.4f, perplexity %.2f over %d tokens; gate: %s (%s)",
             *(result.get(k, math.nan) for k in HEADLINE), result["tokens"], decision["decision"],
             decision["decided_by"])
    return result


def _sources(model_dir: Path, card: dict | None, cfg: EvaluateConfig, champion: str | None,
             champion_note: str) -> tuple[dict[str, str | Path], dict[str, str]]:
    """The models to score (name -> folder or Vertex resource) and why any in `cfg.compare` is not."""
    sources: dict[str, str | Path] = {"tuned": model_source(model_dir)}
    skipped: dict[str, str] = {}
    if card and card.get("supervised_model") and (model_dir / card["supervised_model"]).is_dir():
        sources["supervised"] = model_dir / card["supervised_model"]  # before the preference rounds kept
    if "base" in cfg.compare:
        if card and is_vertex_model(sources["tuned"]):
            skipped["base"] = (f"no local base model to compare with: the tuned model is the Vertex endpoint "
                               f"{sources['tuned']} (base {card.get('base_model')!r} runs only on Vertex AI)")
        elif card:
            sources["base"] = card["base_model_path"]
        else:
            skipped["base"] = "the evaluated model is itself a base model (no calltune_model.json)"
    if "champion" in cfg.compare:
        if champion:
            sources["champion"] = champion
        else:
            skipped["champion"] = champion_note or "no champion given"
    return sources, skipped


def _context(cfg: EvaluateConfig, infer: InferConfig, judge: JudgeConfig, simulation: SimulateConfig,
             test_path: Path, out_dir: Path, max_len: int, seed: int, state_dir, stack: ExitStack) -> EvalContext:
    """The evaluation's context; the judge and the seller it opens are closed when `stack` is."""
    from calltune.evaluation.judge import make_judge

    ctx = EvalContext(cfg, infer, test_path, out_dir, max_len, seed, judge=make_judge(judge, state_dir))
    if ctx.judge is not None:
        stack.callback(ctx.judge.close)
    if simulation.enabled:
        from calltune.evaluation.simulate import calls_from_examples, make_seller

        ctx.calls, ctx.simulation_report = calls_from_examples(list(read_jsonl(test_path)), simulation.max_calls)
        ctx.simulation, ctx.seller = simulation, make_seller(simulation, state_dir)
        if ctx.seller is not None:
            stack.callback(ctx.seller.close)
    return ctx


def _realism(records: dict, ctx: EvalContext, card: dict | None) -> dict:
    """Whole-call realism of every model's simulated calls against the real ones (the tuned model's also without
    guarded decoding, as tuned_unguarded), friction by meeting type, and the adversarial suite's character breaks."""
    from calltune.evaluation.realism import realism as measure_realism

    train = ctx.test_path.with_name("train.examples.jsonl")
    simulated = {n: r["simulated"] for n, r in records.items() if "simulated" in r}
    simulated |= {f"{n}_unguarded": r["simulated_unguarded"] for n, r in records.items() if "simulated_unguarded" in r}
    result = measure_realism(ctx.calls, simulated,
                             embedder=_embedder(ctx.cfg.embedding_model) if ctx.cfg.embedding_model else None,
                             train_examples=list(read_jsonl(train)) if train.is_file() else None,
                             judge=ctx.judge, groups=meeting_types(ctx.calls, card),
                             adversarial={n: r["adversarial"] for n, r in records.items() if "adversarial" in r},
                             **ctx.bootstrap)
    result["simulation"] = {**ctx.simulation_report, "seller": ctx.simulation.seller}
    return result


def meeting_types(calls, card: dict | None, field: str = "meeting_type") -> tuple[str, list[str]] | None:
    """(field, each call's value of it), read back from its system instruction through the template the tuned
    model's data was rendered with; None when the template has no such field."""
    from calltune.data.formats.base import persona_fields, template_fields

    template = (card or {}).get("system_prompt_template") or ""
    if field not in template_fields(template):
        return None
    return field, [persona_fields(template, c.system).get(field) or "(unknown)" for c in calls]


def _gains(records: dict, samples: int, seed: int) -> dict[str, M.Estimate]:
    """Tuned minus base / champion token accuracy, paired over the same test examples (one bootstrap resample
    draws the same examples for both models)."""
    tuned = records["tuned"].get("parts")
    out = {}
    for name in ("base", "champion"):
        other = records.get(name, {}).get("parts")
        if tuned is None or other is None or len(other["tokens"]) != len(tuned["tokens"]):
            continue
        out[name] = M.accuracy_gain(tuned["correct"], tuned["tokens"], other["correct"], other["tokens"],
                                    samples=samples, seed=seed)
    return out
