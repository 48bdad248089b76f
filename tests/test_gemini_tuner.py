"""The Gemini tuner: the real google-genai, google-cloud-storage and aiplatform clients against loopback fakes of
Cloud Storage and Vertex AI tuning (a job that succeeds, fails, is slow, or never ends; injected 429/500s; a create
whose answer is lost), config checks before any request, and an endpoint model folder through evaluate and deploy."""
import hashlib
import json
from pathlib import Path

import pytest
from kfp import dsl, local
from kfp.dsl import Artifact, Dataset, Metrics, Output

from calltune.components import IMAGE
from calltune.components import tune as tune_component
from calltune.config import DataConfig, DeployConfig, EvaluateConfig, InferConfig, ServeConfig, SplitConfig, TuneConfig
from calltune.conversation.render import to_vertex
from calltune.core.io import write_jsonl
from calltune.runtime.loading import MODEL_CARD, model_source, read_model_card
from calltune.training.gemini import TuningJobError, check, preference_job, tune_gemini
from calltune.training.preference import Pair

from conftest import TINY_DIALOGUES, make_example
from fakes import every
from fakes.storage import FakeStorage
from fakes.vertex import FakeVertex
from fakes.vertex_tuning import DEFAULT_METRICS, FakeVertexTuning

BUCKET = "calltune-test"
STAGING = f"gs://{BUCKET}/tuning"


@pytest.fixture
def splits(tmp_path) -> Path:
    """A splits folder as the sample step writes it: internal and Vertex renderings of train, validation, test."""
    out = tmp_path / "splits"
    examples = [make_example(i, *d) for i, d in enumerate(TINY_DIALOGUES)]
    for name, rows in (("train", examples[:2]), ("validation", examples[2:3]), ("test", examples)):
        write_jsonl(out / f"{name}.examples.jsonl", rows)
        write_jsonl(out / f"{name}.jsonl", map(to_vertex, rows))
    return out


@pytest.fixture
def storage(monkeypatch):
    with FakeStorage(buckets=(BUCKET,)) as fake:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.endpoint)
        yield fake


def _exists(storage: FakeStorage):
    def exists(uri: str) -> bool:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return (bucket, name) in storage.objects
    return exists


@pytest.fixture
def vertex(storage):
    with FakeVertexTuning(running_polls=2, dataset_exists=_exists(storage)) as fake:
        yield fake


def _cfg(vertex, **kw) -> TuneConfig:
    settings = dict(backend="gemini", base_model="gemini-2.5-flash", epochs=2.5, gemini_adapter_size=4,
                    gemini_learning_rate_multiplier=0.5, gemini_staging_uri=STAGING, gemini_project="proj",
                    gemini_location="europe-west4", gemini_base_url=vertex.endpoint, gemini_poll_interval_s=0.01,
                    gemini_timeout_s=30)
    return TuneConfig(**{**settings, **kw})


class Sleeps(list):
    """Records each wait the tuner asks for (and waits a little, so the fake's clock moves)."""

    def __call__(self, seconds: float) -> None:
        import time

        self.append(seconds)
        time.sleep(min(seconds, 0.02))


def test_a_successful_job_uploads_the_data_tunes_and_writes_the_endpoint_and_its_metrics(splits, storage, vertex,
                                                                                         tmp_path):
    card = tune_gemini(splits, tmp_path / "model", _cfg(vertex), sleep=Sleeps())

    # The Vertex JSONL went to the staging folder under its SHA-256, byte for byte.
    for name in ("train.jsonl", "validation.jsonl"):
        data = (splits / name).read_bytes()
        uri = f"{STAGING}/{hashlib.sha256(data).hexdigest()}/{name}"
        assert storage.read(uri) == data
    assert card["train_uri"].endswith("/train.jsonl") and card["validation_uri"].endswith("/validation.jsonl")
    # One job, with what the config asked for (epochs rounded up to whole ones).
    [body] = vertex.created
    spec = body["supervisedTuningSpec"]
    assert body["baseModel"] == "gemini-2.5-flash"
    assert spec["trainingDatasetUri"] == card["train_uri"] and spec["validationDatasetUri"] == card["validation_uri"]
    assert spec["hyperParameters"] == {"epochCount": 3, "adapterSize": "ADAPTER_SIZE_FOUR",
                                       "learningRateMultiplier": 0.5}
    assert all(r.path.startswith("/v1beta1/projects/proj/locations/europe-west4/") for r in vertex.requests
               if "tuningJobs" in r.path)
    # The card names the endpoint and the job's metrics at their last step.
    on_disk = read_model_card(tmp_path / "model")
    assert on_disk == card
    [job] = vertex.jobs.values()
    assert card["tuning_job"] == job["name"] and card["endpoint"] == job["tunedModel"]["endpoint"]
    assert card["endpoint"].startswith("projects/proj/locations/europe-west4/endpoints/")
    assert model_source(tmp_path / "model") == card["endpoint"]
    assert card["validation_token_accuracy"] == DEFAULT_METRICS["/eval_fraction_of_correct_next_step_preds"][-1][1]
    assert card["validation_loss"] == DEFAULT_METRICS["/eval_total_loss"][-1][1]
    assert card["train_token_accuracy"] == DEFAULT_METRICS["/train_fraction_of_correct_next_step_preds"][-1][1]
    assert card["final_train_loss"] == DEFAULT_METRICS["/train_total_loss"][-1][1]
    assert card["base_model"] == "gemini-2.5-flash" and card["config"]["backend"] == "gemini"
    assert card["system_prompt"]
    # The loss curve comes from the same time series.
    log = json.loads((tmp_path / "model" / "training_log.json").read_text())
    assert [r["loss"] for r in log if "loss" in r] == [v for _, v in DEFAULT_METRICS["/train_total_loss"]]
    assert (tmp_path / "model" / "loss_curve.png").is_file()


def test_a_retried_step_uploads_nothing_again_and_follows_the_same_job(splits, storage, vertex, tmp_path):
    first = tune_gemini(splits, tmp_path / "a", _cfg(vertex), sleep=Sleeps())
    uploads = len(storage.uploads())
    again = tune_gemini(splits, tmp_path / "b", _cfg(vertex), sleep=Sleeps())
    assert len(storage.uploads()) == uploads  # same bytes, same objects: nothing sent
    assert len(vertex.created) == 1 and again["endpoint"] == first["endpoint"]
    # Other settings are another job.
    tune_gemini(splits, tmp_path / "c", _cfg(vertex, gemini_adapter_size=8), sleep=Sleeps())
    assert len(vertex.created) == 2


def test_a_failed_job_raises_an_error_naming_the_job_and_the_service_reason(splits, storage, vertex, tmp_path):
    vertex.outcome, vertex.failure_message = "failed", "Row 7 of the training dataset has no model turn."
    with pytest.raises(TuningJobError) as err:
        tune_gemini(splits, tmp_path / "model", _cfg(vertex), sleep=Sleeps())
    [name] = vertex.jobs
    assert name in str(err.value) and "JOB_STATE_FAILED" in str(err.value)
    assert "Row 7 of the training dataset has no model turn." in str(err.value)
    assert not (tmp_path / "model" / MODEL_CARD).exists()
    # A failed job is not followed: the next try starts a new one.
    vertex.outcome = "succeeded"
    tune_gemini(splits, tmp_path / "model", _cfg(vertex), sleep=Sleeps())
    assert len(vertex.created) == 2


def test_a_slow_job_is_polled_with_a_doubling_wait(splits, storage, vertex, tmp_path):
    vertex.running_polls = 5
    sleeps = Sleeps()
    tune_gemini(splits, tmp_path / "model", _cfg(vertex, gemini_poll_interval_s=0.001), sleep=sleeps)
    gets = [r for r in vertex.requests if r.method == "GET" and "/tuningJobs/" in r.path]
    assert len(gets) == 1 + 5 + 1  # PENDING, five RUNNING, SUCCEEDED
    assert sleeps == pytest.approx([0.001 * 2 ** i for i in range(len(gets))])


def test_the_wait_between_polls_stops_doubling_at_ten_minutes(splits, storage, vertex, tmp_path):
    vertex.running_polls = 12
    sleeps = []  # no real waiting: the deadline is far
    tune_gemini(splits, tmp_path / "model", _cfg(vertex, gemini_poll_interval_s=1, gemini_timeout_s=1e6),
                sleep=sleeps.append)
    assert sleeps[:4] == [1, 2, 4, 8] and max(sleeps) == 600 and sleeps[-1] == 600


def test_a_job_past_the_timeout_is_cancelled(splits, storage, vertex, tmp_path):
    vertex.outcome = "never"
    with pytest.raises(TuningJobError, match="gemini_timeout_s=0.3") as err:
        tune_gemini(splits, tmp_path / "model", _cfg(vertex, gemini_timeout_s=0.3), sleep=Sleeps())
    [(name, job)] = vertex.jobs.items()
    assert name in str(err.value) and "cancelled" in str(err.value)
    assert job["state"] == "JOB_STATE_CANCELLED"
    assert [r.path for r in vertex.requests if r.path.endswith(":cancel")] == [f"/v1beta1/{name}:cancel"]


def test_429_and_500_on_create_and_get_are_retried_with_one_job(splits, storage, vertex, tmp_path):
    vertex.fail_next("create_job", 429, 500)
    vertex.fail_next("get_job", 503, 500)
    card = tune_gemini(splits, tmp_path / "model", _cfg(vertex), sleep=Sleeps())
    assert len(vertex.jobs) == 1 and len(vertex.created) == 1
    assert [r.status for r in vertex.requests if r.method == "POST"] == [429, 500, 200]
    assert [r.status for r in vertex.requests if "/tuningJobs/" in r.path][:3] == [503, 500, 200]
    assert card["endpoint"] == next(iter(vertex.jobs.values()))["tunedModel"]["endpoint"]


def test_a_create_whose_answer_was_lost_is_found_and_not_made_twice(splits, storage, vertex, tmp_path):
    vertex.create_then(503)  # the job exists, the client sees 503
    card = tune_gemini(splits, tmp_path / "model", _cfg(vertex), sleep=Sleeps())
    assert len(vertex.jobs) == 1 and len(vertex.created) == 1
    assert card["tuning_job"] in vertex.jobs


def _pairs(splits: Path) -> list[Pair]:
    examples = [json.loads(line) for line in (splits / "train.examples.jsonl").read_text().splitlines()]
    return [Pair(e["call_id"], 0, e, e["target"], "As an AI assistant, how can I help you?", 0.9, ("role",))
            for e in examples]


def test_a_preference_job_continues_from_the_tuned_model_once_a_round_even_when_its_create_answer_is_lost(
        splits, storage, vertex, tmp_path):
    cfg = _cfg(vertex, preference_beta=0.2, preference_epochs=1.5)
    card = tune_gemini(splits, tmp_path / "model", cfg, sleep=Sleeps())
    vertex.create_then(503)  # the preference job exists, the client sees 503
    tuned = preference_job(_pairs(splits), card, cfg, tmp_path / "pref", number=1, sleep=Sleeps())
    assert len(vertex.created) == 2 and len(vertex.jobs) == 2  # the supervised job and one preference job
    body = vertex.created[-1]
    spec = body["preferenceOptimizationSpec"]
    assert "baseModel" not in body and card["tuned_model"] in body["preTunedModel"].values()
    assert spec["hyperParameters"] == {"epochCount": 2, "adapterSize": "ADAPTER_SIZE_FOUR",
                                       "learningRateMultiplier": 0.5, "beta": 0.2}
    # The pairs went up in Vertex's preference format: the prompt ends with the seller, the real reply scores 1.
    rows = [json.loads(line) for line in storage.read(spec["trainingDatasetUri"]).decode().splitlines()]
    first = _pairs(splits)[0]
    assert rows[0]["contents"][-1] == {"role": "user", "parts": [{"text": first.prompt["prompt"]}]}
    assert rows[0]["completions"] == [
        {"score": 1, "completion": {"role": "model", "parts": [{"text": first.chosen}]}},
        {"score": 0, "completion": {"role": "model", "parts": [{"text": first.rejected}]}}]
    assert rows[0]["systemInstruction"]["parts"][0]["text"] == first.prompt["system"]
    # The new model is the preference job's; the same round again adopts that job instead of paying for another.
    [job] = [j for j in vertex.jobs.values() if "preferenceOptimizationSpec" in j]
    assert tuned["tuning_job"] == job["name"] and tuned["endpoint"] == job["tunedModel"]["endpoint"]
    again = preference_job(_pairs(splits), card, cfg, tmp_path / "pref", number=1, sleep=Sleeps())
    assert again["endpoint"] == tuned["endpoint"] and len(vertex.created) == 2


@pytest.mark.parametrize("n, status", [(2, 429), (3, 500), (3, 503)])
def test_tuning_completes_with_one_job_when_every_nth_request_fails(splits, storage, vertex, tmp_path, n, status):
    vertex.fail_when(every(n), status)
    card = tune_gemini(splits, tmp_path / "model", _cfg(vertex), sleep=Sleeps())
    assert len(vertex.jobs) == 1 and len(vertex.created) == 1
    assert card["tuning_job"] in vertex.jobs and "validation_token_accuracy" in card
    assert sum(r.status == status for r in vertex.requests) >= len(vertex.requests) // n - 1


def test_a_missing_dataset_fails_the_job_with_the_service_message(splits, storage, vertex, tmp_path):
    vertex.dataset_exists = lambda uri: "validation" not in uri
    with pytest.raises(TuningJobError, match=r"Dataset gs://.*/validation.jsonl does not exist"):
        tune_gemini(splits, tmp_path / "model", _cfg(vertex), sleep=Sleeps())


def test_unreadable_metrics_leave_the_fields_out_instead_of_inventing_them(splits, storage, vertex, tmp_path):
    vertex.metrics = {"/train_total_loss": [(1, 2.0)]}  # no validation series: e.g. no validation split
    card = tune_gemini(splits, tmp_path / "model", _cfg(vertex), sleep=Sleeps())
    assert card["final_train_loss"] == 2.0
    assert "validation_token_accuracy" not in card and "validation_loss" not in card


@pytest.mark.parametrize("override, needle", [
    ({"base_model": "smollm2-135m-instruct"}, "tune.base_model='smollm2-135m-instruct' is not a Gemini model id"),
    ({"base_model": "./my-model"}, "tune.base_model='./my-model'"),
    ({"gemini_staging_uri": ""}, "tune.gemini_staging_uri is empty"),
    ({"gemini_staging_uri": "/data/tuning"}, "tune.gemini_staging_uri must start with gs://"),
    ({"gemini_staging_uri": "s3://bucket/x"}, "tune.gemini_staging_uri must start with gs://"),
    ({"gemini_adapter_size": 3}, "tune.gemini_adapter_size=3 is not one of [1, 2, 4, 8, 16]"),
])
def test_bad_config_is_refused_before_any_request(splits, storage, vertex, tmp_path, override, needle):
    with pytest.raises(ValueError) as err:
        tune_gemini(splits, tmp_path / "model", _cfg(vertex, **override))
    assert needle in str(err.value)
    assert vertex.requests == [] and storage.requests == []


def test_every_problem_is_named_at_once():
    with pytest.raises(ValueError) as err:
        check(TuneConfig(backend="gemini"))
    assert "tune.base_model" in str(err.value) and "tune.gemini_staging_uri" in str(err.value)


# ---- the tune component under kfp.local: the backend branch and the KFP Metrics ----

@dsl.component(base_image=IMAGE)
def stand_in_splits(source: str, splits: Output[Dataset]):
    import shutil

    shutil.copytree(source, splits.path)


@dsl.component(base_image=IMAGE)
def stand_in_coach(coaching: Output[Artifact]):
    """A stand-in for the coach step's folder (empty: the tune component's Gemini branch is what is tested here)."""
    import os

    os.makedirs(coaching.path)


@dsl.pipeline(name="gemini-tune")
def gemini_tune(source: str, staging: str, base_url: str) -> Metrics:
    data = stand_in_splits(source=source)
    cfg = TuneConfig(backend="gemini", base_model="gemini-2.5-flash", gemini_poll_interval_s=0.01)
    params = {k: v for k, v in cfg.model_dump().items()}
    task = tune_component(
        splits=data.outputs["splits"], coaching=stand_in_coach().outputs["coaching"], **{f"tune_{k}": v for k, v in params.items()
                                         if f"tune_{k}" in tune_component.component_spec.inputs
                                         and k not in ("gemini_staging_uri", "gemini_base_url", "gemini_project")},
        tune_gemini_staging_uri=staging, tune_gemini_base_url=base_url, tune_gemini_project="proj",
        **{f"split_{k}": v for k, v in SplitConfig().model_dump().items()},
        **{f"infer_{k}": v for k, v in InferConfig().model_dump().items()},
        evaluate_embedding_model="", evaluate_bootstrap_samples=100,
        data_system_prompt=DataConfig().system_prompt, seed=1, state_dir="/tmp/unused")
    return task.outputs["metrics"]


def test_the_tune_component_runs_the_gemini_backend_and_logs_the_job_metrics(splits, storage, vertex, tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    run = gemini_tune(source=str(splits), staging=STAGING, base_url=vertex.endpoint)
    m = run.output.metadata
    assert m["validation_token_accuracy"] == DEFAULT_METRICS["/eval_fraction_of_correct_next_step_preds"][-1][1]
    assert m["validation_loss"] == DEFAULT_METRICS["/eval_total_loss"][-1][1]
    assert m["final_train_loss"] == DEFAULT_METRICS["/train_total_loss"][-1][1]
    assert len(vertex.created) == 1


# ---- an endpoint model folder through evaluate and deploy ----

def test_evaluate_and_deploy_treat_an_endpoint_model_folder_as_the_endpoint(splits, tmp_path):
    from calltune.apps.serve.watcher import GeminiResponder, load_responder
    from calltune.evaluation.adversarial import LINES
    from calltune.evaluation.evaluate import evaluate
    from calltune.release.deploy import deploy
    from calltune.release.store import resolve_endpoint

    endpoint = "projects/proj/locations/europe-west4/endpoints/ep-7"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / MODEL_CARD).write_text(json.dumps({
        "backend": "gemini", "endpoint": endpoint, "base_model": "gemini-2.5-flash", "tuning_job": "projects/proj/"
        "locations/europe-west4/tuningJobs/1", "validation_token_accuracy": 0.44, "validation_loss": 1.5,
        "config": TuneConfig(backend="gemini").model_dump()}))
    state = tmp_path / "state"
    with FakeVertex() as fake:
        out = tmp_path / "evaluation"
        result = evaluate(model_dir, splits / "test.examples.jsonl", out,
                          EvaluateConfig(embedding_model="", bootstrap_samples=50, threshold=0.4),
                          infer=InferConfig(vertex_base_url=fake.endpoint), state_dir=state)
        # every test prompt went to the endpoint: once in batch inference, once in its call's closed-loop simulation;
        # and each of the adversarial suite's seller lines once into each of its calls (one a dialogue here)
        assert len(fake.answered()) == 2 * len(TINY_DIALOGUES) + len(LINES) * len(TINY_DIALOGUES)
    assert result["accuracy"] == 0.44
    comparison = json.loads((out / "comparison.json").read_text())
    tuned = comparison["models"]["tuned"]
    assert tuned["source"] == endpoint
    assert "reported by the tuning job on the validation split" in tuned["note"]
    assert tuned["metrics"]["accuracy"]["low"] is None  # no bootstrap interval
    assert "rouge_l" in tuned["metrics"]  # text metrics from its replies, as usual
    assert "no local base" in comparison["models"]["base"]["skipped"]
    assert "reported by the tuning job on the validation split" in (out / "report.md").read_text()

    deployed = deploy(model_dir, DeployConfig(), state, run_id="run-1", metrics={"accuracy": 0.44})
    assert deployed["endpoint"] == endpoint
    assert resolve_endpoint(DeployConfig(), state) == endpoint
    assert not (state / "models").exists()  # nothing copied to the local model store
    # The chat server resolves the payload as a Vertex endpoint, one that calltune's endpoint deploy did not make.
    with FakeVertex() as fake:
        responder = load_responder(resolve_endpoint(DeployConfig(), state), ServeConfig(vertex_base_url=fake.endpoint))
        assert isinstance(responder, GeminiResponder)
        responder.close()
