"""Tuner backend `gemini`: supervised tuning of a Gemini model on Vertex AI, with google-genai in Vertex mode.

1. The splits' Vertex JSONL (`train.jsonl`, `validation.jsonl`) go to `tune.gemini_staging_uri` under names made
   of their SHA-256 (calltune.core.gcs: conditional uploads), so a retried step neither uploads them again nor
   leaves a second copy.
2. One tuning job is created with the base model, whole epochs, the adapter size and the learning-rate multiplier,
   labelled with a key of (data, settings). Before creating, and after a create that failed in a way that may
   have created it anyway (429, 5xx, timeout), the jobs with that label are looked up: a retried step follows the
   job it started (or takes the one that already succeeded) instead of paying for a second one.
3. The job is polled, the wait doubling from `gemini_poll_interval_s` up to 10 minutes, until it ends; a failed
   job raises an error naming the job and the service's message; past `gemini_timeout_s` the job is cancelled.
4. Its metrics are read where Vertex keeps them: the job's experiment (a Vertex AI Metadata context) names its
   backing TensorBoard, whose run holds the scalar time series `/train_total_loss`,
   `/train_fraction_of_correct_next_step_preds`, `/eval_total_loss` and `/eval_fraction_of_correct_next_step_preds`
   (google-cloud-aiplatform's v1 clients). The value at each series' last step is reported; a metric that cannot
   be read is left out (and logged), never invented.
5. The model folder (the KFP Model artifact) holds calltune_model.json, whose `endpoint` is the tuned model's
   Vertex endpoint (calltune.runtime.loading.model_source), plus training_log.json and loss_curve.png.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from calltune.backends.resources import is_vertex_model
from calltune.config import TuneConfig
from calltune.core import gcs
from calltune.core.io import atomic_open, file_sha256, read_jsonl, write_json
from calltune.runtime.loading import BUNDLED, MODEL_CARD

log = logging.getLogger(__name__)

MAX_POLL_S = 600.0
ATTEMPTS = 6  # per request: 429, 5xx and transport errors are retried (calltune.backends.Retrying), from 1 s
LABEL = "calltune-key"
ADAPTER_SIZES = {1: "ADAPTER_SIZE_ONE", 2: "ADAPTER_SIZE_TWO", 4: "ADAPTER_SIZE_FOUR", 8: "ADAPTER_SIZE_EIGHT",
                 16: "ADAPTER_SIZE_SIXTEEN"}
ENDED_BAD = {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
# TensorBoard time series -> model card field
METRICS = {"/eval_fraction_of_correct_next_step_preds": "validation_token_accuracy",
           "/eval_total_loss": "validation_loss",
           "/train_fraction_of_correct_next_step_preds": "train_token_accuracy",
           "/train_total_loss": "final_train_loss"}


class TuningJobError(RuntimeError):
    """The tuning job failed, was cancelled, or did not end in time."""


def check(cfg: TuneConfig) -> None:
    """Refuse a config the service would refuse, before any request; every problem in one message."""
    problems = []
    # A tuned Gemini model (projects/...) may be tuned further; a bundled name or a local folder is no Gemini model.
    if not cfg.base_model or cfg.base_model in BUNDLED or ("/" in cfg.base_model
                                                            and not is_vertex_model(cfg.base_model)):
        problems.append(f"tune.base_model={cfg.base_model!r} is not a Gemini model id; set it to the model to tune, "
                        f"e.g. tune.base_model=gemini-2.5-flash")
    if not cfg.gemini_staging_uri:
        problems.append("tune.gemini_staging_uri is empty; set it to a gs:// folder for the training data, "
                        "e.g. gs://BUCKET/calltune/tuning")
    else:
        try:
            gcs.parse_uri(cfg.gemini_staging_uri, what="tune.gemini_staging_uri", folder=True)
        except ValueError as exc:
            problems.append(str(exc))
    if cfg.gemini_adapter_size and cfg.gemini_adapter_size not in ADAPTER_SIZES:
        problems.append(f"tune.gemini_adapter_size={cfg.gemini_adapter_size} is not one of "
                        f"{sorted(ADAPTER_SIZES)} (or 0: the service's default)")
    if problems:
        raise ValueError("tune.backend=gemini: " + "; ".join(problems))


def tune_gemini(splits_dir: str | Path, out_dir: str | Path, cfg: TuneConfig,
                sleep: Callable[[float], None] = time.sleep) -> dict:
    """Tune `cfg.base_model` on the splits folder's Vertex JSONL; write the model folder; return the report (the
    content of calltune_model.json)."""
    check(cfg)
    splits_dir, out_dir = Path(splits_dir), Path(out_dir)
    train = splits_dir / "train.jsonl"
    validation = splits_dir / "validation.jsonl"
    if not train.is_file():
        raise FileNotFoundError(f"{train}: no Vertex-format train split (the sample step writes it)")
    if not validation.is_file():
        log.warning("%s is missing: the job reports no validation metrics, so the gate has no accuracy", validation)
        validation = None
    started = time.monotonic()
    storage = gcs.client()
    train_uri = _upload(train, cfg, storage)
    validation_uri = validation and _upload(validation, cfg, storage)
    client = _Client(cfg, sleep)
    key = _key(cfg, train_uri, validation_uri)
    job = client.find(key) or client.create(key, train_uri, validation_uri)
    job = client.wait(job, started)
    endpoint = job.tuned_model.endpoint if job.tuned_model else None
    if not endpoint:
        raise TuningJobError(f"tuning job {job.name} succeeded but names no endpoint (tunedModel: {job.tuned_model})")
    series = client.metrics(job)

    out_dir.mkdir(parents=True, exist_ok=True)
    history = ([{"step": s, "loss": v} for s, v in series.get("/train_total_loss", [])]
               + [{"step": s, "eval_loss": v} for s, v in series.get("/eval_total_loss", [])])
    write_json(out_dir / "training_log.json", sorted(history, key=lambda r: r["step"]))
    from calltune.core.figures import loss_curve_png

    loss_curve_png(history, out_dir / "loss_curve.png")
    examples = splits_dir / "train.examples.jsonl"
    systems = collections.Counter(e.get("system", "") for e in (read_jsonl(examples) if examples.is_file() else ()))
    card = {
        "backend": "gemini",
        "endpoint": endpoint,
        "tuned_model": job.tuned_model.model,
        "base_model": cfg.base_model,
        "tuning_job": job.name,
        "train_uri": train_uri,
        "validation_uri": validation_uri,
        **{field: points[-1][1] for name, field in METRICS.items() if (points := series.get(name))},
        "tuning_seconds": round(time.monotonic() - started, 2),
        "system_prompt": systems.most_common(1)[0][0] if systems else "",
        "config": cfg.model_dump(),
    }
    write_json(out_dir / MODEL_CARD, card)  # written last: its presence marks a complete model folder
    log.info("tuned %s: job %s, endpoint %s, validation token accuracy %s", cfg.base_model, job.name, endpoint,
             card.get("validation_token_accuracy"))
    return card


def _upload(path: Path, cfg: TuneConfig, storage) -> str:
    """Upload to <staging>/<sha256>/<name>: the same bytes, the same object, written once."""
    uri = gcs.join(cfg.gemini_staging_uri, file_sha256(path), path.name)
    gcs.upload_file(path, uri, content_type="application/jsonl", gcs=storage)
    log.info("uploaded %s to %s", path, uri)
    return uri


def _key(cfg: TuneConfig, train_uri: str, validation_uri: str | None, preference: tuple = ()) -> str:
    """The job's identity: its data and every setting the service gets (a label value: lowercase hex);
    `preference`: a preference job's own (the model it continues from, beta, epochs)."""
    settings = [cfg.base_model, train_uri, validation_uri, _epochs(cfg), cfg.gemini_adapter_size,
                cfg.gemini_learning_rate_multiplier, cfg.gemini_project, cfg.gemini_location, *preference]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:32]


def _epochs(cfg: TuneConfig, epochs: float | None = None) -> int:
    return max(1, math.ceil(cfg.epochs if epochs is None else epochs))


def preference_rows(pairs) -> list[dict]:
    """Vertex preference tuning JSONL rows of calltune.training.preference Pairs: the prompt as the supervised data
    renders it (`contents` ending with the seller's turn), the real reply scored 1 and the model's own 0."""
    from calltune.conversation.render import to_vertex

    rows = []
    for p in pairs:
        row = to_vertex({**p.prompt, "target": "", "end_of_call": ""})
        row["contents"] = row["contents"][:-1]  # the empty model turn
        row["completions"] = [{"score": score, "completion": {"role": "model", "parts": [{"text": text}]}}
                              for score, text in ((1, p.chosen), (0, p.rejected))]
        rows.append(row)
    return rows


def preference_job(pairs, card: dict, cfg: TuneConfig, out_dir: Path, *, number: int,
                   sleep: Callable[[float], None] = time.sleep) -> dict:
    """Round `number`'s Vertex AI preference tuning job, continuing from the tuned model `card` names, on `pairs`:
    one job per round (labelled with a key of the pairs, the model and the settings, so a retried step follows the
    job it started, or adopts one whose create answer was lost). Returns the new model's card (its endpoint); the
    pairs' JSONL is written to `out_dir` and uploaded beside the supervised data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / f"preference-{number}.jsonl"
    with atomic_open(data) as fh:
        for row in preference_rows(pairs):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    started = time.monotonic()
    uri = _upload(data, cfg, gcs.client())
    client = _Client(cfg, sleep)
    settings = ("preference", card["tuned_model"], cfg.preference_beta, _epochs(cfg, cfg.preference_epochs))
    key = _key(cfg, uri, None, settings)
    job = client.find(key) or client.create(key, uri, None, base_model=card["tuned_model"], preference=True)
    job = client.wait(job, started)
    endpoint = job.tuned_model.endpoint if job.tuned_model else None
    if not endpoint:
        raise TuningJobError(f"preference tuning job {job.name} succeeded but names no endpoint")
    log.info("preference round %d: job %s, endpoint %s", number, job.name, endpoint)
    return {**card, "endpoint": endpoint, "tuned_model": job.tuned_model.model, "tuning_job": job.name,
            "preference_training": {"pairs_trained": len(pairs), "tuning_job": job.name, "train_uri": uri,
                                    "tuning_seconds": round(time.monotonic() - started, 2)}}


def tune_gemini_preference(out_dir: Path, splits: Path, cfg: TuneConfig, card: dict, *, infer, seed: int,
                           embedding_model: str, samples: int, sleep: Callable[[float], None] = time.sleep) -> dict:
    """The preference rounds on a tuned Gemini model (calltune.training.preference): its endpoint plays the train
    and validation calls; each round is a preference job from the model kept so far. The kept model's endpoint
    becomes the folder's. Vertex reports no token accuracy for a preference job, so the accuracy check of the
    keep-or-roll-back decision compares what the jobs report, when they do."""
    from calltune.evaluation.simulate import vertex_replier
    from calltune.runtime.embeddings import Embedder
    from calltune.runtime.responders import card_split
    from calltune.training.preference import Backend, infer_for_rounds, run_rounds

    rounds_infer = infer_for_rounds(infer)
    backend = Backend(replier=lambda model: vertex_replier(model["endpoint"], rounds_infer),
                      train=lambda model, pairs, number: preference_job(pairs, model, cfg, out_dir / "preference",
                                                                        number=number, sleep=sleep),
                      accuracy=lambda model: model.get("validation_token_accuracy"), rails=None,
                      split=card_split(card))
    validation = splits / "validation.examples.jsonl"
    final, report = run_rounds(card, backend, list(read_jsonl(splits / "train.examples.jsonl")),
                               list(read_jsonl(validation)) if validation.is_file() else [],
                               Embedder(embedding_model) if embedding_model else None, cfg, samples=samples, seed=seed)
    final = {**final, "preference": report}
    write_json(out_dir / MODEL_CARD, final)
    return final


class _Client:
    """google-genai's tunings in Vertex mode, with retries; the metrics through aiplatform's v1 REST clients."""

    def __init__(self, cfg: TuneConfig, sleep: Callable[[float], None]):
        from google.api_core import exceptions
        from google.genai import errors, types

        from calltune.backends.genai import transient, vertex_client
        from calltune.backends.retry import Retrying

        self.cfg, self.sleep, self.types = cfg, sleep, types
        # No client-side retries: every request goes through the one retry policy, so a create is never repeated
        # blindly. google-genai (tunings) and aiplatform's clients (metrics) fail differently: either is retried.
        self.genai = vertex_client(cfg.gemini_project, cfg.gemini_location, cfg.gemini_base_url, timeout=120_000)
        cloud = (exceptions.TooManyRequests, exceptions.ServerError)
        self.retrying = Retrying(service="Vertex AI", setting="", max_retries=ATTEMPTS - 1,
                                 backoff_s=min(1.0, cfg.gemini_poll_interval_s),
                                 retryable=lambda e: transient(e) or isinstance(e, cloud), error=TuningJobError,
                                 wrap_refusals=False, sleep=sleep)
        # Refused before anything happened: a create answered 429 made no job, so it is sent again without a look-up.
        self._not_applied = lambda e: isinstance(e, errors.APIError) and e.code == 429

    def _call(self, what: str, fn, on_retry=None):
        """fn(), each failed request retried alone; `on_retry` may find that a failed attempt took effect after all."""
        recover = on_retry and (lambda exc: None if self._not_applied(exc) else on_retry())
        return self.retrying.call(fn, what, recover=recover)

    def find(self, key: str):
        """The newest job with this key that succeeded or still runs; None if there is none."""
        def lookup():
            jobs = [j for j in self.genai.tunings.list(config={"filter": f'labels.{LABEL}="{key}"'})
                    if (j.labels or {}).get(LABEL) == key and j.state and j.state.value not in ENDED_BAD]
            return max(jobs, key=lambda j: j.create_time or 0, default=None)

        job = self._call("listing tuning jobs", lookup)
        if job is not None:
            log.info("following tuning job %s (%s), started earlier for the same data and settings",
                     job.name, job.state.value)
        return job

    def create(self, key: str, train_uri: str, validation_uri: str | None, *, base_model: str = "",
               preference: bool = False):
        """A supervised job from `cfg.base_model`, or a preference job continuing from the tuned `base_model`."""
        t, cfg = self.types, self.cfg
        method = {"method": "PREFERENCE_TUNING", "beta": cfg.preference_beta} if preference else {}
        config = t.CreateTuningJobConfig(
            epoch_count=_epochs(cfg, cfg.preference_epochs if preference else None),
            learning_rate_multiplier=cfg.gemini_learning_rate_multiplier,
            adapter_size=ADAPTER_SIZES.get(cfg.gemini_adapter_size),
            validation_dataset=t.TuningValidationDataset(gcs_uri=validation_uri) if validation_uri else None,
            tuned_model_display_name=f"calltune-{key[:12]}", labels={LABEL: key}, **method)

        def create():
            return self.genai.tunings.tune(base_model=base_model or cfg.base_model,
                                           training_dataset=t.TuningDataset(gcs_uri=train_uri), config=config)

        job = self._call("creating the tuning job", create, on_retry=lambda: self.find(key))
        log.info("tuning job %s created (%s)", job.name, job.state.value if job.state else "?")
        return job

    def wait(self, job, started: float):
        """Poll until the job ends; cancel it past the timeout. Returns the succeeded job."""
        cfg, polls = self.cfg, 0
        deadline = started + cfg.gemini_timeout_s
        while not job.has_ended:
            left = deadline - time.monotonic()
            if left <= 0:
                self._call("cancelling the tuning job", lambda: self.genai.tunings.cancel(name=job.name))
                raise TuningJobError(f"tuning job {job.name} did not end within tune.gemini_timeout_s="
                                     f"{cfg.gemini_timeout_s:g} s (last state {job.state.value}); it was cancelled")
            self.sleep(min(cfg.gemini_poll_interval_s * 2 ** polls, MAX_POLL_S, left))
            polls += 1
            job = self._call("polling the tuning job", lambda: self.genai.tunings.get(name=job.name))
            log.info("tuning job %s: %s (poll %d)", job.name, job.state.value, polls)
        if job.state.value != "JOB_STATE_SUCCEEDED":
            message = job.error.message if job.error and job.error.message else "no reason given"
            raise TuningJobError(f"tuning job {job.name} ended {job.state.value}: {message}")
        return job

    def metrics(self, job) -> dict[str, list[tuple[int, float]]]:
        """Time series name -> [(step, value)] from the job's experiment; {} (logged) when they cannot be read."""
        if not job.experiment:
            log.warning("tuning job %s names no experiment: no metrics to read", job.name)
            return {}
        try:
            return self._read_series(job.experiment)
        except Exception as exc:  # noqa: BLE001 - the tuned model stands; only its reported metrics are missing
            log.warning("could not read the metrics of tuning job %s from experiment %s (%s: %s)", job.name,
                        job.experiment, type(exc).__name__, str(exc)[:300])
            return {}

    def _read_series(self, experiment: str) -> dict[str, list[tuple[int, float]]]:
        from google.api_core.client_options import ClientOptions
        from google.cloud.aiplatform_v1 import MetadataServiceClient, TensorboardServiceClient

        cfg = self.cfg
        options = {"client_options": ClientOptions(
            api_endpoint=cfg.gemini_base_url or f"{cfg.gemini_location}-aiplatform.googleapis.com"), "transport": "rest"}
        if cfg.gemini_base_url.startswith("http://"):
            from google.auth.credentials import AnonymousCredentials

            options["credentials"] = AnonymousCredentials()
        metadata, tensorboard = MetadataServiceClient(**options), TensorboardServiceClient(**options)
        context = self._call("reading the tuning experiment", lambda: metadata.get_context(name=experiment))
        backing = context.metadata.get("backing_tensorboard_resource")
        if not backing:
            raise LookupError(f"experiment {experiment} has no backing TensorBoard")
        parent = f"{backing}/experiments/{experiment.rsplit('/', 1)[1]}"
        out: dict[str, list[tuple[int, float]]] = {}
        for run in self._call("listing TensorBoard runs",
                              lambda: list(tensorboard.list_tensorboard_runs(parent=parent))):
            for series in self._call("listing TensorBoard time series",
                                     lambda: list(tensorboard.list_tensorboard_time_series(parent=run.name))):
                if series.display_name not in METRICS:
                    continue
                data = self._call("reading a TensorBoard time series", lambda: tensorboard.read_tensorboard_time_series_data(
                    tensorboard_time_series=series.name))
                out[series.display_name] = sorted((int(v.step), float(v.scalar.value))
                                                  for v in data.time_series_data.values)
        return out
