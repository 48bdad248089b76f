"""A fake Vertex AI supervised tuning service (REST), for google-genai's `client.tunings` in Vertex mode, plus the
Vertex AI Metadata and TensorBoard reads through which a tuning job's metrics are found.

- tuningJobs.create checks the request as the service does (base model, a gs:// training dataset, whole epochs,
  a known adapter size, a positive learning-rate multiplier) and answers a QUEUED job; a preference job
  (`preferenceOptimizationSpec`, a positive beta) continues from a model an earlier job tuned (`preTunedModel`,
  which must exist); `tuningJobs.list` returns
  every job (one page), `:cancel` moves a running job to CANCELLED.
- Each `tuningJobs.get` advances the job one state: PENDING, then RUNNING for `running_polls` gets, then the
  outcome: SUCCEEDED (a tuned model, an endpoint, and an experiment holding the metrics in `metrics`), FAILED
  (`error.message` = `failure_message`) or, with `outcome="never"`, RUNNING for ever.
- `dataset_exists(uri)`, when given, is asked about each dataset URI, as the service reads them: a missing one
  fails the job (not the create request), as on Vertex.
- The experiment is a Metadata context whose `backing_tensorboard_resource` names a TensorBoard; its one run holds
  one scalar time series per metric name (`/train_total_loss`, `/eval_fraction_of_correct_next_step_preds`...).

`fail_next(handler, *statuses)` answers the next requests to one route (e.g. "create_job", "get_job") with those
errors, whatever comes in between; `create_then(status)` makes the next create commit the job and only then answer
with an error: the ambiguous failure a client cannot tell from an uncommitted one.
"""
from __future__ import annotations

import itertools
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime

from . import ApiError, FakeGoogleApi, _error

_LOC = r"/(?P<api>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_JOB = _LOC + r"/tuningJobs/(?P<job>[^/:]+)"
_TB = _LOC + r"/tensorboards/(?P<tb>[^/]+)/experiments/(?P<exp>[^/]+)"
ADAPTER_SIZES = {"ADAPTER_SIZE_ONE", "ADAPTER_SIZE_TWO", "ADAPTER_SIZE_FOUR", "ADAPTER_SIZE_EIGHT",
                 "ADAPTER_SIZE_SIXTEEN", "ADAPTER_SIZE_THIRTY_TWO"}
ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
DEFAULT_METRICS = {
    "/train_total_loss": [(1, 2.5), (2, 1.75), (3, 1.25)],
    "/train_fraction_of_correct_next_step_preds": [(1, 0.31), (2, 0.4), (3, 0.47)],
    "/eval_total_loss": [(2, 1.9), (3, 1.5)],
    "/eval_fraction_of_correct_next_step_preds": [(2, 0.38), (3, 0.44)],
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeVertexTuning(FakeGoogleApi):
    routes = [
        ("POST", _LOC + r"/tuningJobs", "create_job"),
        ("GET", _LOC + r"/tuningJobs", "list_jobs"),
        ("GET", _JOB, "get_job"),
        ("POST", _JOB + ":cancel", "cancel_job"),
        ("GET", _LOC + r"/metadataStores/default/contexts/(?P<context>[^/:]+)", "get_context"),
        ("GET", _TB + r"/runs", "list_runs"),
        ("GET", _TB + r"/runs/(?P<run>[^/]+)/timeSeries", "list_time_series"),
        ("GET", _TB + r"/runs/(?P<run>[^/]+)/timeSeries/(?P<series>[^/:]+):read", "read_time_series"),
    ]

    def __init__(self, *, running_polls: int = 1, outcome: str = "succeeded",
                 failure_message: str = "The training dataset has invalid rows.",
                 metrics: dict[str, list[tuple[int, float]]] | None = None,
                 dataset_exists: Callable[[str], bool] | None = None, **kw):
        super().__init__(**kw)
        self.running_polls, self.outcome, self.failure_message = running_polls, outcome, failure_message
        self.metrics = DEFAULT_METRICS if metrics is None else metrics
        self.dataset_exists = dataset_exists
        self.jobs: dict[str, dict] = {}  # resource name -> TuningJob JSON
        self.created: list[dict] = []    # the create bodies, in order
        self._ids = itertools.count(1001)
        self._polls: dict[str, int] = {}
        self._commit_then: list[int] = []
        self._route_faults: dict[str, deque[int]] = defaultdict(deque)
        self._state = threading.Lock()

    def create_then(self, status: int) -> None:
        with self._state:
            self._commit_then.append(status)

    def fail_next(self, handler: str, *statuses: int) -> None:
        with self._state:
            self._route_faults[handler].extend(statuses)

    def _dispatch(self, method: str, path: str, body):
        for m, pattern, handler in self._routes:
            if m == method and pattern.fullmatch(path):
                with self._state:
                    faults = self._route_faults[handler.__name__]
                    status = faults.popleft() if faults else None
                if status:
                    return status, _error(status, f"fake: injected {status}")
                break
        return super()._dispatch(method, path, body)

    # ---- tuning jobs ----
    def create_job(self, m, body: dict) -> dict:
        body = body or {}
        kind = "preferenceOptimizationSpec" if "preferenceOptimizationSpec" in body else "supervisedTuningSpec"
        spec = body.get(kind) or {}
        hyper = spec.get("hyperParameters") or {}
        pre = body.get("preTunedModel") or {}
        # proto JSON parsing takes a field's lowerCamel name or its proto name (google-genai sends the latter here)
        base = body.get("baseModel") or pre.get("tunedModelName") or pre.get("tuned_model_name")
        if not base:
            raise ApiError(400, "base_model (or pre_tuned_model) is required")
        if body.get("preTunedModel") and base not in {(j.get("tunedModel") or {}).get("model") for j in self.jobs.values()}:
            raise ApiError(404, f"pre_tuned_model {base} not found")
        if not str(spec.get("trainingDatasetUri", "")).startswith("gs://"):
            raise ApiError(400, f"{kind}.training_dataset_uri must be a gs:// URI")
        if "validationDatasetUri" in spec and not spec["validationDatasetUri"].startswith("gs://"):
            raise ApiError(400, f"{kind}.validation_dataset_uri must be a gs:// URI")
        if kind == "preferenceOptimizationSpec" and not float(hyper.get("beta", 0.1)) > 0:
            raise ApiError(400, "preference_optimization_spec.hyper_parameters.beta must be positive")
        epochs = hyper.get("epochCount")
        if epochs is not None and (not isinstance(epochs, int) and not str(epochs).isdigit() or int(epochs) < 1):
            raise ApiError(400, f"epoch_count must be a positive integer, not {epochs!r}")
        if "adapterSize" in hyper and hyper["adapterSize"] not in ADAPTER_SIZES:
            raise ApiError(400, f"unknown adapter_size {hyper['adapterSize']!r}")
        if "learningRateMultiplier" in hyper and not float(hyper["learningRateMultiplier"]) > 0:
            raise ApiError(400, "learning_rate_multiplier must be positive")
        with self._state:
            job_id = str(next(self._ids))
            name = f"projects/{m['project']}/locations/{m['location']}/tuningJobs/{job_id}"
            job = {"name": name, "state": "JOB_STATE_QUEUED", "createTime": _now(), "updateTime": _now(),
                   "baseModel": base, kind: spec,
                   "tunedModelDisplayName": body.get("tunedModelDisplayName", ""), "labels": body.get("labels", {})}
            self.jobs[name] = job
            self.created.append(body)
            self._polls[name] = 0
            fault = self._commit_then.pop(0) if self._commit_then else None
        if fault:
            raise ApiError(fault, f"fake: job {name} created, then {fault}")
        return job

    def list_jobs(self, m, body) -> dict:
        prefix = f"projects/{m['project']}/locations/{m['location']}/"
        with self._state:
            return {"tuningJobs": [dict(j) for n, j in self.jobs.items() if n.startswith(prefix)]}

    def _job(self, m) -> dict:
        name = f"projects/{m['project']}/locations/{m['location']}/tuningJobs/{m['job']}"
        if name not in self.jobs:
            raise ApiError(404, f"TuningJob {name} not found")
        return self.jobs[name]

    def get_job(self, m, body) -> dict:
        with self._state:
            job = self._job(m)
            if job["state"] not in ENDED:
                self._advance(job)
            return dict(job)

    def _advance(self, job: dict) -> None:
        name = job["name"]
        self._polls[name] += 1
        polls = self._polls[name]
        job["updateTime"] = _now()
        if polls == 1:
            job["state"] = "JOB_STATE_PENDING"
        elif polls <= 1 + self.running_polls or self.outcome == "never":
            job["state"] = "JOB_STATE_RUNNING"
            job.setdefault("startTime", _now())
        else:
            spec = job.get("supervisedTuningSpec") or job["preferenceOptimizationSpec"]
            missing = [u for u in (spec["trainingDatasetUri"], spec.get("validationDatasetUri")) if u
                       and self.dataset_exists is not None and not self.dataset_exists(u)]
            if self.outcome == "failed" or missing:
                message = f"Dataset {missing[0]} does not exist." if missing else self.failure_message
                job.update(state="JOB_STATE_FAILED", endTime=_now(), error={"code": 3, "message": message})
            else:
                self._succeed(job)

    def _succeed(self, job: dict) -> None:
        base, _, job_id = job["name"].rpartition("/tuningJobs/")
        job.update(state="JOB_STATE_SUCCEEDED", endTime=_now(),
                   tunedModel={"model": f"{base}/models/tuned-{job_id}@1", "endpoint": f"{base}/endpoints/ep-{job_id}"},
                   experiment=f"{base}/metadataStores/default/contexts/tuning-experiment-{job_id}")

    def cancel_job(self, m, body) -> dict:
        with self._state:
            job = self._job(m)
            if job["state"] in ENDED:
                raise ApiError(400, f"TuningJob {job['name']} has already ended ({job['state']})")
            job.update(state="JOB_STATE_CANCELLED", endTime=_now(),
                       error={"code": 1, "message": "CANCELED"})
        return {}

    # ---- metrics: Metadata experiment -> TensorBoard run -> scalar time series ----
    def _tensorboard(self, m) -> str:
        return f"projects/{m['project']}/locations/{m['location']}/tensorboards/tb-1"

    def get_context(self, m, body) -> dict:
        base = f"projects/{m['project']}/locations/{m['location']}"
        name = f"{base}/metadataStores/default/contexts/{m['context']}"
        if not any(j.get("experiment") == name for j in self.jobs.values()):
            raise ApiError(404, f"Context {name} not found")
        return {"name": name, "displayName": m["context"], "schemaTitle": "system.Experiment",
                "metadata": {"backing_tensorboard_resource": self._tensorboard(m), "experiment_deleted": False}}

    def _experiment(self, m) -> str:
        if m["tb"] != "tb-1" or not any(j.get("experiment", "").endswith(f"/{m['exp']}") for j in self.jobs.values()):
            raise ApiError(404, f"TensorboardExperiment {m['exp']} not found")
        return f"{self._tensorboard(m)}/experiments/{m['exp']}"

    def list_runs(self, m, body) -> dict:
        experiment = self._experiment(m)
        return {"tensorboardRuns": [{"name": f"{experiment}/runs/{m['exp']}-run", "displayName": "run"}]}

    def list_time_series(self, m, body) -> dict:
        run = f"{self._experiment(m)}/runs/{m['run']}"
        return {"tensorboardTimeSeries": [
            {"name": f"{run}/timeSeries/ts-{i}", "displayName": key, "valueType": "SCALAR"}
            for i, key in enumerate(self.metrics)]}

    def read_time_series(self, m, body) -> dict:
        self._experiment(m)
        keys = list(self.metrics)
        index = int(m["series"].removeprefix("ts-"))
        return {"timeSeriesData": {"tensorboardTimeSeriesId": m["series"], "valueType": "SCALAR", "values": [
            {"step": str(step), "wallTime": _now(), "scalar": {"value": value}}
            for step, value in self.metrics[keys[index]]]}}
