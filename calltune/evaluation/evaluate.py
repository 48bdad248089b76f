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
"""
from __future__ import annotations

import functools
import gc
import json
import logging
import math
from pathlib import Path

from calltune.backends.resources import is_vertex_model
from calltune.config import DeployConfig, EvaluateConfig, InferConfig, JudgeConfig, SimulateConfig, TuneConfig
from calltune.core.figures import loss_curve_png, pyplot, save_png
from calltune.core.io import read_jsonl, write_json, write_jsonl
from calltune.core.report import Report
from calltune.evaluation import metrics as M
from calltune.evaluation.batch_infer import predict, read_predictions, read_scores
from calltune.evaluation.error_analysis import analyze
from calltune.evaluation.gate import decide
from calltune.release.model_card import coach_summary, write_model_card
from calltune.runtime.embeddings import CrossEncoderScorer, Embedder
from calltune.runtime.encoding import encode_file, encoder
from calltune.runtime.loading import device, load_model, model_sha, model_source, read_model_card, set_threads
from calltune.runtime.scoring import score

log = logging.getLogger(__name__)

# Shown first in tables and charts, in this order; any other metric follows.
CHART_METRICS = ("accuracy", "rouge_l", "chrf", "bleu", "embedding_cosine", "cross_encoder", "distinct_2",
                 "persona_fidelity", "realism")
HEADLINE = ("accuracy", "loss", "perplexity")
REPORTED = "reported by the tuning job on the validation split"  # an endpoint model's accuracy (calltune_model.json)


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


def _score_model(name: str, source: str | Path, test_path: Path, out_dir: Path, cfg: EvaluateConfig,
                 infer: InferConfig, *, max_len: int, seed: int, judge_ctx, predictions, reported=None,
                 sim_ctx=None) -> dict:
    """`reported`: the model card of an endpoint model, whose tuning job reported its validation metrics.
    `sim_ctx`: (calls, SimulateConfig, seller generator or None) to simulate whole calls with, or None."""
    from calltune.evaluation.simulate import local_replier, simulate, vertex_replier

    record: dict = {"source": str(source)}
    parts = None
    if is_vertex_model(source):
        if predictions is not None:  # batch inference already asked the endpoint
            rows = read_predictions(predictions)
            report = {"rows": len(rows)}
        else:
            rows, report = predict(source, test_path, out_dir / "predictions" / name, infer, seed=seed,
                                   limit=cfg.max_examples)
        record["note"] = "a Vertex endpoint gives no token probabilities: text metrics only"
        if sim_ctx is not None:
            calls, sim_cfg, seller = sim_ctx
            record["simulated"] = simulate(calls, vertex_replier(str(source), infer), seller=seller, cfg=sim_cfg,
                                           seed=seed)
        if reported and reported.get("validation_token_accuracy") is not None:
            record["note"] = (f"accuracy{' and loss' if reported.get('validation_loss') is not None else ''}: "
                              f"{REPORTED}, without a bootstrap interval (a Vertex endpoint gives no token "
                              f"probabilities); the other metrics score its replies to the test prompts")
    else:
        model, tokenizer = load_model(Path(source))
        encoded, examples, skipped = encode_file(test_path, tokenizer, max_len, limit=cfg.max_examples,
                                                 encode=encoder(model.config.is_encoder_decoder))
        log.info("evaluating %s (%s) on %d test examples (%d skipped) on %s", name, source, len(encoded),
                 skipped, device())
        if predictions is not None:
            rows = read_predictions(predictions)
            ids = [e.get("example_id", "") for e in examples]
            if [r["example_id"] for r in rows] != ids:
                raise ValueError(f"{predictions}: the predictions are not of the {len(examples)} test examples "
                                 f"evaluated here (batch inference ran on other examples or another max_seq_len)")
            report = {"rows": len(rows), "model_sha": rows[0]["model_sha"] if rows else ""}
            parts = read_scores(predictions, model_sha=model_sha(Path(source)), max_seq_len=max_len, example_ids=ids)
            if parts is None:
                parts = score(model, tokenizer, encoded, cfg.batch_size)
            else:
                log.info("%s: the teacher-forced scores batch inference made with the same weights", name)
        else:  # scored and answered in one pass: the replies reuse the prompts scoring read
            rows, report = predict(source, test_path, out_dir / "predictions" / name, infer, seed=seed,
                                   max_seq_len=max_len, limit=cfg.max_examples, loaded=(model, tokenizer),
                                   score_batch_size=cfg.batch_size)
            parts = report.pop("scores")
        if name == "tuned" and sum(parts["tokens"]) == 0:
            raise ValueError(f"{test_path}: no customer-reply tokens to score ({len(encoded)} examples usable, "
                             f"{skipped} longer than max_seq_len={max_len}); the test set is empty")
        record.update(skipped=skipped, tokens=sum(parts["tokens"]), parts=parts)
        if sim_ctx is not None:
            calls, sim_cfg, seller = sim_ctx
            log.info("simulating %d whole test calls with %s", len(calls), name)
            # Greedy: each call's first reply is the one batch inference made to the same (real) first example.
            first = {r["example_id"]: r["candidate_responses"] or "" for r in rows} if infer.temperature == 0 else None
            record["simulated"] = simulate(calls, local_replier(model, tokenizer, infer, max_len), seller=seller,
                                           cfg=sim_cfg, seed=seed, first=first)
        del model
        gc.collect()
    record.update(examples=len(rows), model_sha=report.get("model_sha", ""), rows=rows)
    kw = {"samples": cfg.bootstrap_samples, "seed": seed}
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
    scores = M.example_scores(candidates, targets,
                              embedder=_embedder(cfg.embedding_model) if cfg.embedding_model else None,
                              cross_encoder=_cross_encoder(cfg.cross_encoder) if cfg.cross_encoder else None)
    est.update(M.text_metrics(candidates, targets, scores=scores, **kw))
    # Per example, for the error analysis: token accuracy (rows and encoded examples are in the same order).
    record["scores"] = {**({"accuracy": [c / t if t else None for c, t in zip(parts["correct"], parts["tokens"])]}
                           if parts is not None else {}), **{k: v.tolist() for k, v in scores.items()}}
    if judge_ctx is not None:
        from calltune.evaluation.judge import CRITERIA, judge

        judge_cfg, generator = judge_ctx
        verdict = judge(rows, judge_cfg, generator, **kw)
        est.update({c: verdict[c] for c in CRITERIA})
        record["judge"] = {k: verdict[k] for k in ("requests", "failed", "unparseable")}
        judged = {j["example_id"]: j for j in verdict["judgments"]}
        record["scores"].update({c: [judged.get(r["example_id"], {}).get(c) for r in rows] for c in CRITERIA})
        write_jsonl(out_dir / "judge" / f"{name}.jsonl", verdict["judgments"])
    record["metrics"] = est
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
    sources: dict[str, str | Path] = {"tuned": model_source(model_dir)}
    endpoint_card = card if is_vertex_model(sources["tuned"]) else None
    skipped: dict[str, str] = {}
    if "base" in cfg.compare:
        if endpoint_card:
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
    from calltune.evaluation.judge import make_judge

    generator = make_judge(judge, state_dir)
    sim_ctx, sim_report = None, {}
    if simulation.enabled:
        from calltune.evaluation.simulate import calls_from_examples, make_seller

        calls, sim_report = calls_from_examples(list(read_jsonl(test_path)), simulation.max_calls)
        sim_ctx = (calls, simulation, make_seller(simulation, state_dir))
    records, scored = {}, {}  # scored: weights sha -> the model already scored with them
    for name, source in sources.items():
        sha = None if is_vertex_model(source) else model_sha(Path(source))
        # e.g. the champion is this very model: the same weights give the same scores
        if sha is not None and sha in scored:
            records[name] = {**records[scored[sha]], "source": str(source),
                             "note": f"the same weights as {scored[sha]}: its scores are reused"}
            continue
        scored[sha] = name
        records[name] = _score_model(name, source, test_path, out_dir, cfg, infer, max_len=max_len, seed=seed,
                                     judge_ctx=(judge, generator) if generator else None,
                                     predictions=predictions if name == "tuned" else None,
                                     reported=endpoint_card if name == "tuned" else None, sim_ctx=sim_ctx)
    realism = None
    if sim_ctx is not None:
        from calltune.evaluation.realism import realism as measure

        train = test_path.with_name("train.examples.jsonl")
        realism = measure(sim_ctx[0], {n: r["simulated"] for n, r in records.items() if "simulated" in r},
                          embedder=_embedder(cfg.embedding_model) if cfg.embedding_model else None,
                          train_examples=list(read_jsonl(train)) if train.is_file() else None,
                          judge_ctx=(judge, generator) if generator else None,
                          samples=cfg.bootstrap_samples, seed=seed)
        realism["simulation"] = {**sim_report, "seller": simulation.seller}
        if sim_ctx[2] is not None:
            sim_ctx[2].close()
    if generator is not None:
        generator.close()
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
    result.update({f"{n}_accuracy": accuracy[n] for n in ("base", "champion") if n in records})
    result.update({f"gain_over_{n}": e.value for n, e in gain.items()})
    if realism is not None:
        result.update({f"realism_{k}": e.value for k, e in realism["metrics"].get("tuned", {}).items()})
    result = {k: v for k, v in result.items() if v is not None and math.isfinite(v)}  # NaNs stay in comparison.json

    out_dir.mkdir(parents=True, exist_ok=True)
    comparison = {
        "models": {n: {**{k: v for k, v in r.items() if k not in ("rows", "scores", "parts", "simulated")},
                       "metrics": {k: _finite(e.as_dict()) for k, e in r["metrics"].items()}}
                   for n, r in records.items()}
                  | {n: {"skipped": why} for n, why in skipped.items() if n not in records},
        "gain": {n: _finite(e.as_dict()) for n, e in gain.items()},
        "gate": decision, "test_path": str(test_path), "max_seq_len": max_len, "seed": seed,
        "bootstrap_samples": cfg.bootstrap_samples, "confidence": M.LEVEL,
        "decoding": infer.model_dump(include={"max_new_tokens", "temperature", "top_p"}),
    }
    if realism is not None:
        comparison["realism"] = {**{k: v for k, v in realism.items() if k not in ("metrics", "per_call")},
                                 "metrics": {n: {k: _finite(e.as_dict()) for k, e in m.items()}
                                             for n, m in realism["metrics"].items()}}
        for n, r in records.items():
            if "simulated" in r:
                write_jsonl(out_dir / "simulated" / f"{n}.jsonl", (c.as_dict() for c in r["simulated"]))
    write_json(out_dir / "comparison.json", comparison)
    if card and "config" in card:  # a model calltune tuned: its model card, completed (calltune.release.model_card)
        write_model_card(model_dir, comparison=comparison, to=out_dir / "model_card.md")
    write_json(out_dir / "metrics.json", {**result, "skipped": records["tuned"].get("skipped", 0),
                                          "threshold": cfg.threshold, "model": str(model_dir),
                                          "base_model": (card or {}).get("base_model"), "test_path": str(test_path),
                                          "max_seq_len": max_len, "decision": decision["decision"],
                                          "decided_by": decision["decided_by"]})
    errors = {n: analyze(r["rows"], r["scores"], worst=cfg.error_examples) for n, r in records.items()}
    write_json(out_dir / "errors.json", errors)
    _report(model_dir, records, skipped, decision, cfg, out_dir, errors,
            realism=realism and (realism, sim_ctx[0], simulation), gain=gain)
    log.info("accuracy %.4f, loss %.4f, perplexity %.2f over %d tokens; gate: %s (%s)",
             *(result.get(k, math.nan) for k in HEADLINE), result["tokens"], decision["decision"],
             decision["decided_by"])
    return result


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


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _cell(e: M.Estimate) -> str:
    if not math.isfinite(e.value):
        return "n/a"
    return f"{e.value:.4g} [{e.low:.4g}, {e.high:.4g}]" if math.isfinite(e.low) else f"{e.value:.4g}"


def _report(model_dir: Path, records: dict, skipped: dict, decision: dict, cfg: EvaluateConfig, out_dir: Path,
            errors: dict, realism=None, gain: dict | None = None) -> None:
    r = Report("calltune evaluation")
    verdict = "PROMOTE" if decision["decision"] == "promote" else "KEEP the current model"
    r.text(f"Decision: {verdict} (decided by: {decision['decided_by']}). Model: {model_dir}.")
    r.heading("Gate checks")
    r.table([{"check": c["check"], "result": {True: "pass", False: "FAIL", None: "skipped"}[c["passed"]],
              "detail": c["detail"]} for c in decision["checks"]])
    for name, e in (gain or {}).items():
        r.text(f"Gain over {name}: {e.value:+.4f} token accuracy [{e.low:+.4f}, {e.high:+.4f}] (paired bootstrap "
               f"over the same test examples).")
    r.heading("Metrics")
    r.text(f"Every model on the same {records['tuned']['examples']} test examples; value [95% bootstrap interval, "
           f"{cfg.bootstrap_samples} resamples of the examples]. accuracy = teacher-forced next-token accuracy on "
           f"the customer replies (the gate metric); the other metrics score each model's generated replies "
           f"against the real customer's.")
    names = list(records)
    present = [k for rec in records.values() for k in rec["metrics"]]
    keys = list(dict.fromkeys([k for k in CHART_METRICS + HEADLINE if k in present] + present))
    r.table([{"metric": k, **{n: _cell(records[n]["metrics"].get(k, M.NAN)) for n in names}} for k in keys]
            + [{"metric": "examples", **{n: records[n]["examples"] for n in names}},
               {"metric": "model sha", **{n: records[n].get("model_sha", "") for n in names}}])
    for n, why in skipped.items():
        r.text(f"{n}: {why}")
    for n, rec in records.items():
        if REPORTED in rec.get("note", ""):
            r.text(f"{n}: {rec['note']}")
        if "judge" in rec:
            j = rec["judge"]
            r.text(f"judge on {n}: {j['requests']} replies, {j['failed']} failed requests, unparseable answers "
                   f"(left out) {j['unparseable']}")
    if not cfg.cross_encoder:
        r.text("cross-encoder similarity skipped: no evaluate.cross_encoder configured")
    r.image(_charts([k for k in CHART_METRICS if k in keys], records, out_dir / "charts.png"),
            "metrics per model with 95% intervals")
    log_file = model_dir / "training_log.json"
    if log_file.is_file():
        r.heading("Training")
        r.image(loss_curve_png(json.loads(log_file.read_text(encoding="utf-8")), out_dir / "loss_curve.png"),
                "training loss curve")
    _errors_section(r, errors)
    if coach := coach_summary(model_dir):  # the scorecard and the figures of the coach the model carries
        r.section(coach)
    if realism:
        from calltune.evaluation.realism_report import section

        result, calls, simulation = realism
        section(r, result, calls, {n: rec["simulated"] for n, rec in records.items() if "simulated" in rec},
                simulation, out_dir)
    r.heading("Sample conversations")
    r.text("Single turns, teacher-forced context (the real history), from several calls: the real customer's reply "
           "beside every model's.")
    by_id = {n: {row["example_id"]: row for row in rec["rows"]} for n, rec in records.items()}
    samples = []
    for row in _across_calls(records["tuned"]["rows"], cfg.samples):
        sample = {"conversation": row["instructions"], "customer (real)": row["target_responses"]}
        sample.update({n: by_id[n].get(row["example_id"], {}).get("candidate_responses", "") for n in names})
        samples.append(sample)
    r.table(samples)
    r.write(out_dir)


def _across_calls(rows: list[dict], k: int) -> list[dict]:
    """k rows taken round-robin over the calls (a middle turn of each call first), not the first rows."""
    by_call: dict[str, list[dict]] = {}
    for row in rows:
        by_call.setdefault(row.get("call_id", ""), []).append(row)
    queues = [q[len(q) // 2:] + q[:len(q) // 2] for q in by_call.values()]
    picked: list[dict] = []
    while len(picked) < k and any(queues):
        for q in queues:
            if q and len(picked) < k:
                picked.append(q.pop(0))
    return picked


def _errors_section(r: Report, errors: dict) -> None:
    """Failure categories of every model, and the tuned model's worst examples per metric (errors.json has all)."""
    r.heading("Error analysis")
    r.text("Replies in each failure category: count (share of the test examples); a reply can be in several. "
           "The rule column says how each is decided.")
    categories = errors["tuned"]["categories"]
    r.table([{"category": c, **{n: (f"{e['categories'][c]['count']} ({e['categories'][c]['share']:.1%})"
                                    if e["categories"][c]["checked"] else e["categories"][c]["note"])
                                for n, e in errors.items()},
              "examples (tuned)": ", ".join(categories[c].get("example_ids", [])), "rule": categories[c]["rule"]}
             for c in categories])
    for metric, worst in errors["tuned"]["worst"].items():
        if worst:
            r.text(f"Worst {len(worst)} tuned-model replies by {metric} (lowest first):")
            r.table([{"example": w["example_id"], metric: w["score"], "seller": w["seller"],
                      "customer (real)": w["target"], "reply": w["reply"]} for w in worst])


def _charts(keys: list[str], records: dict, path: Path) -> Path | None:
    if not keys:
        return None
    plt = pyplot()

    names = list(records)
    cols = min(2, len(keys))  # two charts a row: the image stays legible when the page scales it to a narrow window
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), dpi=100, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        est = [records[n]["metrics"].get(key, M.NAN) for n in names]
        values = [e.value if math.isfinite(e.value) else 0.0 for e in est]
        err = [[max(e.value - e.low, 0) if math.isfinite(e.low) else 0 for e in est],
               [max(e.high - e.value, 0) if math.isfinite(e.high) else 0 for e in est]]
        ax.bar(names, values, yerr=err, capsize=4, color=["C0", "C7", "C2"][:len(names)])
        ax.set_title(key)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return save_png(fig, path)
