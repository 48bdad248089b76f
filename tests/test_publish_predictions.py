"""Published predictions (evaluate.publish_uri): the tuned model's predictions table, with model id, sha and run id,
under <publish_uri>/<run_id>/ as Parquet and JSONL, on Cloud Storage (the real client against the loopback fake)
or in a local folder; retries never leave a second copy."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kfp.dsl import Dataset, Metrics, Model

from calltune.evaluation.batch_infer import COLUMNS, publish_predictions, read_predictions

from conftest import TINY_DIALOGUES, make_example, write_examples
from fakes.storage import FakeStorage

BUCKET = "calltune-preds"
ROWS = [{"instructions": f"seller: hi {i}", "target_responses": "Yes?", "candidate_responses": f"reply {i}",
         "model_id": "/models/tuned", "model_sha": "abc123", "call_id": f"call{i}", "turn_index": 1,
         "example_id": f"call{i}:1", "finish_reason": "stop", "retries": 0} for i in range(3)]


@pytest.fixture
def fake(monkeypatch):
    with FakeStorage(buckets=(BUCKET,)) as fake:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.endpoint)
        yield fake


def _batch_infer(model_dir: Path, tmp_path: Path, publish_uri: str, run_id: str) -> Dataset:
    """The batch_infer component's own function, as a KFP launcher calls it."""
    from components.batch_infer import batch_infer

    splits = tmp_path / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    write_examples(splits / "test.examples.jsonl", [make_example(i, *d) for i, d in enumerate(TINY_DIALOGUES)])
    predictions = Dataset(name="predictions", uri=str(tmp_path / "predictions"))
    batch_infer.python_func(
        model=Model(name="model", uri=str(model_dir)), splits=Dataset(name="splits", uri=str(splits)),
        infer_max_new_tokens=4, infer_temperature=0.0, infer_top_p=1.0, infer_batch_size=2, infer_guardrails=True,
        infer_max_concurrency=1,
        infer_vertex_base_url="", evaluate_max_examples=0, evaluate_batch_size=2, evaluate_publish_uri=publish_uri,
        seed=1, run_id=run_id,
        predictions=predictions, metrics=Metrics(name="metrics", uri=str(tmp_path / "metrics.json")))
    return predictions


def test_batch_infer_publishes_the_predictions_table_with_the_run_id_to_gcs(fake, tiny_chat_model, tmp_path):
    uri = f"gs://{BUCKET}/calltune/predictions/"
    predictions = _batch_infer(tiny_chat_model, tmp_path, uri, "calltune-20250101-run7")
    folder = f"gs://{BUCKET}/calltune/predictions/calltune-20250101-run7"
    assert predictions.metadata["published"] == [f"{folder}/predictions.parquet", f"{folder}/predictions.jsonl"]
    assert sorted(fake.objects) == [(BUCKET, "calltune/predictions/calltune-20250101-run7/predictions.jsonl"),
                                    (BUCKET, "calltune/predictions/calltune-20250101-run7/predictions.parquet")]
    local = read_predictions(Path(predictions.path))  # the KFP artifact
    (tmp_path / "p.parquet").write_bytes(fake.read(f"{folder}/predictions.parquet"))
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == [*COLUMNS, "run_id"]
    published = table.to_pylist()
    assert published == [{**r, "run_id": "calltune-20250101-run7"} for r in local] and len(published) == 4
    assert {r["model_sha"] for r in published} == {local[0]["model_sha"]} != {""}
    assert {r["model_id"] for r in published} == {str(tiny_chat_model)}
    lines = fake.read(f"{folder}/predictions.jsonl").decode().splitlines()
    assert [json.loads(line) for line in lines] == published
    assert fake.authorized == []

    # A retried task (same run, same greedy replies) writes nothing new.
    uploads = len(fake.uploads())
    _batch_infer(tiny_chat_model, tmp_path / "retry", uri, "calltune-20250101-run7")
    assert len(fake.uploads()) == uploads and len(fake.objects) == 2


def test_without_a_publish_uri_only_the_artifact_is_written(fake, tiny_chat_model, tmp_path):
    predictions = _batch_infer(tiny_chat_model, tmp_path, "", "run-1")
    assert "published" not in predictions.metadata and fake.objects == {}
    assert len(read_predictions(Path(predictions.path))) == 4
    scores = json.loads((Path(predictions.path) / "teacher_forced.json").read_text())  # for evaluate
    assert len(scores["tokens"]) == 4 and all(scores["tokens"])


def test_upload_faults_and_lost_answers_leave_exactly_one_copy(fake):
    fake.inject_on("/upload/", 503, 429)
    fake.lose_answers(1)
    uris = publish_predictions(ROWS, f"gs://{BUCKET}/preds", "run-2")
    assert uris == [f"gs://{BUCKET}/preds/run-2/predictions.parquet", f"gs://{BUCKET}/preds/run-2/predictions.jsonl"]
    assert len(fake.objects) == 2
    assert [r.status for r in fake.uploads()] == [503, 429, 200, 412, 200]  # the lost answer's retry finds its object
    rows = [json.loads(line) for line in fake.read(uris[1]).decode().splitlines()]
    assert rows == [{**r, "run_id": "run-2"} for r in ROWS]


def test_local_folder_publishing_is_idempotent(tmp_path):
    uris = publish_predictions(ROWS, str(tmp_path / "pub"), "run-3")
    again = publish_predictions(ROWS, str(tmp_path / "pub"), "run-3")
    assert uris == again == [str(tmp_path / "pub" / "run-3" / n) for n in ("predictions.parquet", "predictions.jsonl")]
    assert sorted(p.name for p in (tmp_path / "pub" / "run-3").iterdir()) == ["predictions.jsonl",
                                                                              "predictions.parquet"]
    assert read_predictions(uris[0]) == read_predictions(uris[1]) == [{**r, "run_id": "run-3"} for r in ROWS]


@pytest.mark.parametrize("uri, run_id, message", [
    ("gs://Bad_Bucket/preds", "run-1", "evaluate.publish_uri has an invalid bucket name 'Bad_Bucket'"),
    ("gs://calltune-preds/a//b", "run-1", "evaluate.publish_uri has an invalid object path"),
    ("gs://calltune-preds/preds", "", "needs a run id"),
    ("gs://calltune-preds/preds", "a/b", "needs a run id"),
])
def test_bad_publish_settings_fail_clearly(uri, run_id, message):
    with pytest.raises(ValueError, match=message):
        publish_predictions(ROWS, uri, run_id)


def test_the_pipeline_feeds_batch_infer_the_job_name_as_run_id(tmp_path):
    import yaml
    from kfp import compiler

    from calltune.config import Config
    from calltune.pipelines import build_pipeline

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(build_pipeline("local", Config()), str(out))
    task = yaml.safe_load(out.read_text())["root"]["dag"]["tasks"]["batch-infer"]
    assert task["inputs"]["parameters"]["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_name}}"}}
    assert task["inputs"]["parameters"]["evaluate_publish_uri"] == {"componentInputParameter": "evaluate_publish_uri"}
