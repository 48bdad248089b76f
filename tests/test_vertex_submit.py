"""`calltune submit` and `calltune upload` drive the real aiplatform and kfp registry clients against loopback
fakes of Vertex AI, Cloud Storage (STORAGE_EMULATOR_HOST) and Artifact Registry; the tests read what they got."""
import importlib.util
import subprocess
from pathlib import Path

import pytest
import yaml

from calltune import cli
from calltune.config import load_config
from calltune.pipeline.vertex import console_hidden, git_commit

from fakes.storage import FakeStorage
from fakes.vertex_pipelines import (
    BUCKET,
    PROJECT,
    SERVICE_ACCOUNT,
    VERTEX_OVERRIDES,
    FakeKfpRegistry,
    FakePipelineService,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "vertex.yaml")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("calltune_compile", ROOT / "compile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("template") / "calltune-vertex.yaml"
    return module.compile_pipeline("vertex", Path(CONFIG), out, VERTEX_OVERRIDES)


@pytest.fixture
def gcs(monkeypatch):
    with FakeStorage() as fake:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.endpoint)
        yield fake


@pytest.fixture
def vertex(gcs):
    with FakePipelineService() as fake:
        yield fake


@pytest.fixture
def registry():
    with FakeKfpRegistry() as fake:
        yield fake


def _calltune(command: str, template: str, *options: str, overrides=(), api=None, registry=None) -> int:
    """`calltune COMMAND TEMPLATE key=value... --config configs/vertex.yaml OPTIONS`, the project set to the fakes'."""
    overrides = [*VERTEX_OVERRIDES, *overrides]
    if api:
        overrides.append(f"gcp.api_endpoint={api.endpoint}")
    if registry:
        overrides.append(f"gcp.template_registry={registry.host()}")
    return cli.main([command, template, *overrides, "--config", CONFIG, *options])


def test_submit_sends_the_template_with_the_configs_values_account_labels_and_caching(template, vertex, gcs, capsys):
    code = _calltune("submit", str(template), "--job-id", "calltune-run-1", api=vertex,
                     overrides=["evaluate.threshold=0.55", "gcp.labels={team: sales}", "gcp.enable_caching=false"])
    assert code == 0, capsys.readouterr().err
    [created] = vertex.created
    assert created["job_id"] == "calltune-run-1"
    assert created["parent"] == f"projects/{PROJECT}/locations/us-central1"
    job = created["body"]
    compiled = yaml.safe_load(template.read_text())
    assert job["pipelineSpec"]["deploymentSpec"] == compiled["deploymentSpec"]
    assert job["pipelineSpec"]["root"]["inputDefinitions"] == compiled["root"]["inputDefinitions"]
    cfg = load_config(CONFIG, VERTEX_OVERRIDES + ["evaluate.threshold=0.55"])
    expected = {k: v for k, v in cfg.pipeline_params().items() if k not in console_hidden(cfg)}  # the rest: constants
    assert job["runtimeConfig"]["parameterValues"] == expected
    assert job["runtimeConfig"]["gcsOutputDirectory"] == f"gs://{BUCKET}/pipeline_root"
    assert job["serviceAccount"] == SERVICE_ACCOUNT
    assert job["labels"] == {"team": "sales"}
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    assert {t["cachingOptions"]["enableCache"] for t in tasks.values()} == {False}
    # aiplatform made sure the pipeline root's bucket exists and the service account can use it.
    assert [(r.method, r.path) for r in gcs.requests[:2]] == [("GET", f"/storage/v1/b/{BUCKET}"), ("POST", "/storage/v1/b")]
    members = {m for b in gcs.policies[BUCKET]["bindings"] for m in b["members"]}
    assert members == {f"serviceAccount:{SERVICE_ACCOUNT}"}
    out = capsys.readouterr().out
    assert "calltune-run-1: PIPELINE_STATE_PENDING" in out


def test_upload_tags_the_template_and_submit_runs_it_from_artifact_registry(template, vertex, registry, capsys):
    assert _calltune("upload", str(template), "--tag", "abc1234", "--tag", "latest", registry=registry) == 0
    [upload] = registry.uploads
    assert upload["repo"] == f"{PROJECT}/calltune" and upload["package"] == "calltune"
    assert upload["tags"] == ["abc1234", "latest"]
    assert registry.versions[upload["repo"], "calltune", upload["version"]] == template.read_bytes()
    url = f"{registry.host()}/calltune/abc1234"
    assert url in capsys.readouterr().out  # the command to submit it is printed

    assert _calltune("submit", url, api=vertex, registry=registry) == 0
    assert ("GET", f"/{PROJECT}/calltune/calltune/abc1234") in [(r.method, r.path) for r in registry.requests]
    [created] = vertex.created
    assert created["body"]["templateUri"] == url
    assert created["body"]["pipelineSpec"]["deploymentSpec"] == yaml.safe_load(template.read_text())["deploymentSpec"]


def test_upload_tags_the_git_commit_by_default(template, registry, tmp_path, monkeypatch):
    repo = tmp_path / "checkout"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f.txt").write_text("one")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    assert git_commit() == sha[:12]
    assert _calltune("upload", str(template), registry=registry) == 0
    assert registry.uploads[-1]["tags"] == [sha[:12], "latest"]
    (repo / "f.txt").write_text("two")  # a template compiled from uncommitted changes must not pass as the commit
    assert git_commit() == sha[:12] + "-dirty"


def test_wait_follows_the_job_until_it_succeeds(template, vertex, capsys):
    vertex.script = ("RUNNING", "RUNNING", "SUCCEEDED")
    assert _calltune("submit", str(template), "--wait", "--poll-s", "0.01", api=vertex) == 0
    out = capsys.readouterr().out
    assert out.index("PIPELINE_STATE_RUNNING") < out.index("PIPELINE_STATE_SUCCEEDED")
    gets = [r for r in vertex.requests if r.method == "GET"]
    assert len(gets) == 3


def test_wait_exits_non_zero_with_the_failure_when_the_job_fails(template, vertex, capsys):
    vertex.script, vertex.failure = ("RUNNING", "FAILED"), "The replica workerpool0-0 exited with a non-zero status of 1."
    assert _calltune("submit", str(template), "--wait", "--poll-s", "0.01", api=vertex) == 1
    err = capsys.readouterr().err
    assert "PIPELINE_STATE_FAILED" in err and "task tune: The replica workerpool0-0 exited" in err


def test_a_refused_job_is_reported_without_a_traceback(template, vertex, capsys):
    vertex.inject(403)
    assert _calltune("submit", str(template), api=vertex) == 1
    err = capsys.readouterr().err
    assert "Vertex AI refused the pipeline job" in err and "Traceback" not in err


def test_submit_takes_overrides_after_its_options_as_the_readme_shows(template, vertex, capsys):
    argv = ["submit", str(template), "--config", CONFIG, "--job-id", "calltune-readme", *VERTEX_OVERRIDES,
            f"gcp.api_endpoint={vertex.endpoint}", "evaluate.threshold=0.5"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    [created] = vertex.created
    assert created["body"]["runtimeConfig"]["parameterValues"]["evaluate_threshold"] == 0.5


@pytest.mark.parametrize("fault", [429, 503])
def test_submit_retries_a_failed_create_with_its_job_id_and_starts_one_job(template, vertex, capsys, fault):
    vertex.inject(fault)
    assert _calltune("submit", str(template), "--job-id", "calltune-retried", api=vertex) == 0
    assert [c["job_id"] for c in vertex.created] == ["calltune-retried"]
    creates = [r.status for r in vertex.requests if r.method == "POST"]
    assert creates == [fault, 200]
    assert "calltune-retried: PIPELINE_STATE_PENDING" in capsys.readouterr().out


def test_a_create_whose_answer_was_lost_is_found_not_started_twice(template, vertex, capsys):
    vertex.create_then(503)  # the job exists, the client sees 503
    assert _calltune("submit", str(template), "--job-id", "calltune-lost", api=vertex) == 0
    assert [c["job_id"] for c in vertex.created] == ["calltune-lost"]
    assert [r.status for r in vertex.requests if r.method == "POST"] == [503]  # looked up, not sent again


def test_a_config_that_cannot_run_on_vertex_sends_nothing(template, vertex, capsys):
    code = cli.main(["submit", str(template), f"gcp.api_endpoint={vertex.endpoint}",
                     "--config", str(ROOT / "configs" / "local.yaml")])
    assert code == 2
    assert "state_dir" in capsys.readouterr().err
    assert vertex.requests == []


def test_a_config_field_the_template_lacks_is_an_error_not_dropped(template, vertex, tmp_path, capsys):
    old = yaml.safe_load(template.read_text())
    del old["root"]["inputDefinitions"]["parameters"]["tune_lora_dropout"]  # a template from an older calltune
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    assert _calltune("submit", str(path), api=vertex) == 1
    assert "tune_lora_dropout" in capsys.readouterr().err
    assert vertex.created == []


def test_upload_needs_a_template_registry(template, capsys):
    assert cli.main(["upload", str(template), *VERTEX_OVERRIDES, "--config", CONFIG, "--tag", "x"]) == 2
    assert "gcp.template_registry" in capsys.readouterr().err


def test_submit_refuses_evaluate_model_with_a_tuning_template(template, vertex, capsys):
    """The DAG's shape is fixed when it is compiled: evaluate.model on a tuning template would tune quietly."""
    code = _calltune("submit", str(template), api=vertex, overrides=["evaluate.model=secret:latest"])
    assert code != 0 and not vertex.created
    assert "is a tuning template, but evaluate.model is secret:latest" in capsys.readouterr().err
