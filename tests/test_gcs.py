"""calltune.core.gcs drives the real google-cloud-storage client against the loopback Cloud Storage fake
(STORAGE_EMULATOR_HOST): URIs, uploads that are safe to retry (faults, timeouts, lost answers), downloads."""
import os

import pytest
from google.api_core.exceptions import NotFound, PreconditionFailed
from google.cloud.storage import Blob

from calltune.core import gcs

from fakes import HANG
from fakes.storage import FakeStorage

BUCKET = "calltune-test"


@pytest.fixture
def fake(monkeypatch):
    with FakeStorage(buckets=(BUCKET,)) as fake:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.endpoint)
        yield fake


@pytest.mark.parametrize("uri, message", [
    ("/tmp/x.jsonl", "must start with gs://"),
    ("gs://", "invalid bucket name ''"),
    ("gs://My_Bucket/x", "invalid bucket name 'My_Bucket'"),
    ("gs://ab/x", "invalid bucket name 'ab'"),
    ("gs://bucket-1", "must name an object"),
    ("gs://bucket-1/runs/", "must name an object"),
    ("gs://bucket-1/runs//x", "invalid object path"),
    ("gs://bucket-1/runs/../x", "invalid object path"),
])
def test_bad_uris_are_rejected_with_the_setting_and_uri_named(uri, message):
    with pytest.raises(ValueError, match=message) as err:
        gcs.parse_uri(uri, what="evaluate.publish_uri")
    assert "evaluate.publish_uri" in str(err.value)


def test_uris_parse_into_bucket_and_path():
    assert gcs.parse_uri("gs://bucket-1/a/b.jsonl") == ("bucket-1", "a/b.jsonl")
    assert gcs.parse_uri("gs://bucket-1/runs/", folder=True) == ("bucket-1", "runs")
    assert gcs.parse_uri("gs://bucket-1", folder=True) == ("bucket-1", "")
    joined = gcs.join("gs://bucket-1/runs/", "job-1", "/predictions.jsonl")
    assert joined == "gs://bucket-1/runs/job-1/predictions.jsonl"


def test_upload_round_trips_and_sends_no_credentials(fake, tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_bytes(b'{"a": 1}\n' * 100 + "çã\n".encode())
    uri = f"gs://{BUCKET}/staging/train.jsonl"
    assert gcs.upload_file(src, uri, content_type="application/jsonl") == uri
    assert fake.read(uri) == src.read_bytes()
    assert fake.objects[BUCKET, "staging/train.jsonl"].content_type == "application/jsonl"
    assert gcs.client().bucket(BUCKET).blob("staging/train.jsonl").download_as_bytes() == src.read_bytes()
    assert fake.authorized == []  # plain HTTP to an emulator: anonymous


def test_uploading_the_same_bytes_again_writes_nothing(fake, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("same\n")
    uri = f"gs://{BUCKET}/p.jsonl"
    gcs.upload_file(src, uri)
    generation = fake.objects[BUCKET, "p.jsonl"].generation
    gcs.upload_file(src, uri)
    assert len(fake.uploads()) == 1
    assert fake.objects[BUCKET, "p.jsonl"].generation == generation


def test_new_bytes_replace_the_object_as_a_new_generation(fake, tmp_path):
    src = tmp_path / "p.jsonl"
    uri = f"gs://{BUCKET}/p.jsonl"
    src.write_text("first\n")
    gcs.upload_file(src, uri)
    first = fake.objects[BUCKET, "p.jsonl"].generation
    src.write_text("second\n")
    gcs.upload_file(src, uri)
    assert fake.read(uri) == b"second\n"
    assert fake.objects[BUCKET, "p.jsonl"].generation > first


def test_429_and_5xx_on_upload_are_retried_into_one_object(fake, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("row\n")
    fake.inject_on("/upload/", 503, 429, 500)
    gcs.upload_file(src, f"gs://{BUCKET}/p.jsonl")
    assert [r.status for r in fake.uploads()] == [503, 429, 500, 200]
    assert fake.read(f"gs://{BUCKET}/p.jsonl") == b"row\n"


def test_a_hung_upload_times_out_and_is_retried(fake, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text("row\n")
    fake.inject_on("/upload/", HANG)
    gcs.upload_file(src, f"gs://{BUCKET}/p.jsonl", timeout=1)
    assert [r.status for r in fake.uploads()] == [None, 200]
    assert fake.read(f"gs://{BUCKET}/p.jsonl") == b"row\n"


def test_a_lost_answer_does_not_make_a_second_write(fake, tmp_path):
    """The first upload lands but its answer never arrives; the library's retry meets ifGenerationMatch=0 (412),
    and the stored MD5 shows it is our own object."""
    src = tmp_path / "p.jsonl"
    src.write_text("row\n")
    fake.lose_answers(1)
    gcs.upload_file(src, f"gs://{BUCKET}/p.jsonl")
    assert [r.status for r in fake.uploads()] == [200, 412]
    assert fake.read(f"gs://{BUCKET}/p.jsonl") == b"row\n"


def test_a_concurrent_different_write_is_not_overwritten(fake, tmp_path, monkeypatch):
    src = tmp_path / "p.jsonl"
    src.write_text("ours\n")
    uri = f"gs://{BUCKET}/p.jsonl"
    other = gcs.client()
    upload = Blob.upload_from_filename

    def racing(self, *args, **kwargs):  # another writer lands between our look and our upload
        other.bucket(BUCKET).blob("p.jsonl").upload_from_string(b"theirs\n")
        return upload(self, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_filename", racing)
    with pytest.raises(RuntimeError, match=f"{uri} was changed by another writer"):
        gcs.upload_file(src, uri)
    assert fake.read(uri) == b"theirs\n"


def test_files_over_8_mib_go_through_a_resumable_session(fake, tmp_path):
    src = tmp_path / "big.parquet"
    src.write_bytes(os.urandom((8 << 20) + 1234))
    uri = f"gs://{BUCKET}/big.parquet"
    gcs.upload_file(src, uri)
    assert [(r.method, r.status) for r in fake.uploads()] == [("POST", 200), ("PUT", 200)]
    assert len(fake.sessions) == 1 and fake.read(uri) == src.read_bytes()
    assert gcs.client().bucket(BUCKET).blob("big.parquet").download_as_bytes() == src.read_bytes()


def test_resumable_chunks_resume_after_a_failed_chunk(fake, tmp_path):
    """Over 8 MiB with chunk_size set, the library sends chunks: 308 + Range until the last one; a failed chunk is
    sent again."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom((8 << 20) + 5))
    blob = gcs.client().bucket(BUCKET).blob("big.bin", chunk_size=4 << 20)
    fake.inject_on("/upload/", 503, method="PUT")
    blob.upload_from_filename(str(src), if_generation_match=0)
    puts = [r.status for r in fake.uploads() if r.method == "PUT"]
    assert puts == [503, 308, 308, 200]  # 4 MiB, 4 MiB, 5 bytes; the first one twice
    assert fake.read(f"gs://{BUCKET}/big.bin") == src.read_bytes()


def test_list_delete_and_preconditions_through_the_client(fake, tmp_path):
    client = gcs.client()
    bucket = client.bucket(BUCKET)
    for name in ("runs/a/predictions.jsonl", "runs/a/predictions.parquet", "runs/b/predictions.jsonl", "other"):
        bucket.blob(name).upload_from_string(name.encode(), if_generation_match=0)
    assert [b.name for b in client.list_blobs(BUCKET, prefix="runs/a/")] == ["runs/a/predictions.jsonl",
                                                                              "runs/a/predictions.parquet"]
    assert len(list(client.list_blobs(BUCKET, prefix="runs/", max_results=2, page_size=1))) == 2
    with pytest.raises(PreconditionFailed):
        bucket.blob("other").upload_from_string(b"x", if_generation_match=0)
    bucket.blob("other").delete()
    with pytest.raises(NotFound):
        bucket.blob("other").download_as_bytes()
