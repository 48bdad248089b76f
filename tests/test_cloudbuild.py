"""cloudbuild.yaml, step by step: every command exists in the repository, images are pushed only after the tests
pass and under the tags compile.py stamps, and the Python steps (compile, upload, submit) run, as Cloud Build
would run them, against loopback fakes of Vertex AI, Cloud Storage and Artifact Registry."""
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from calltune.cli import build_parser

from fakes.storage import FakeStorage
from fakes.vertex_pipelines import FakeKfpRegistry, FakePipelineService

ROOT = Path(__file__).resolve().parents[1]
BUILD = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
STEPS = {s["id"]: s for s in BUILD["steps"]}
BUILTINS = {"PROJECT_ID": "test-project", "SHORT_SHA": "abc1234"}
TRIGGER = {"_BUCKET": "test-bucket", "_SERVICE_ACCOUNT": "calltune@test-project.iam.gserviceaccount.com"}


def substitute(text: str, values: dict) -> str:
    """Cloud Build's substitution: $VAR and ${VAR} from `values`, $$ for a literal $ (left to the shell)."""
    def one(m):
        if m[0] == "$$":
            return "$"
        name = m[1] or m[2]
        assert name in values, f"{name} is neither a built-in substitution nor declared in substitutions"
        return values[name]
    return re.sub(r"\$\$|\$\{(\w+)\}|\$([A-Z_][A-Z0-9_]*)", one, text)


def _values(**trigger) -> dict:
    return {**BUILTINS, **BUILD["substitutions"], **TRIGGER, **trigger}


def _script(step_id: str, values: dict) -> str:
    step = STEPS[step_id]
    assert step.get("entrypoint") == "bash" and step["args"][0] == "-c"
    return substitute(step["args"][1], values)


def _env(values: dict) -> dict:
    return dict(substitute(item, values).split("=", 1) for item in BUILD["options"]["env"])


def test_steps_run_in_order_and_push_only_tested_images():
    assert list(STEPS) == ["test", "build-image", "build-trainer", "build-app", "push", "compile", "upload", "submit",
                           "deploy-app"]
    assert set(STEPS["push"]["waitFor"]) == {"test", "build-image", "build-trainer", "build-app"}
    assert "waitFor" not in STEPS["deploy-app"]  # after every step before it: the run is over
    assert STEPS["compile"]["waitFor"] == ["push"]  # the template names images that exist
    assert "images" not in BUILD  # `images:` would push only at the very end, after the run was started


def test_every_step_command_exists_in_the_repository():
    values = _values()
    assert "make test" in _script("test", values)
    assert re.search(r"^test:", (ROOT / "Makefile").read_text(), re.M)
    pinned = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "images" / "Dockerfile").read_text(), re.M)[1]
    python_steps = [s["name"] for s in STEPS.values() if not s["name"].startswith("gcr.io/cloud-builders/")]
    assert python_steps == [pinned] * 4  # pinned, and one image: the later steps reuse the venv `make test` made
    env = _env(values)
    for step_id, image_var, dockerfile in (("build-image", "CALLTUNE_IMAGE", "images/Dockerfile"),
                                           ("build-trainer", "CALLTUNE_TRAINER_IMAGE", "images/Dockerfile.trainer")):
        argv = shlex.split(_script(step_id, values))
        assert argv[:2] == ["docker", "build"] and (ROOT / argv[argv.index("-f") + 1]) == ROOT / dockerfile
        assert argv[argv.index("-t") + 1] == f"${image_var}"
        assert f'docker push "${image_var}"' in _script("push", values)
        assert re.fullmatch(r"us-central1-docker\.pkg\.dev/test-project/calltune/[\w-]+:abc1234", env[image_var])
    commands = {name for action in build_parser()._subparsers._group_actions for name in action.choices}
    for step_id in ("compile", "upload", "submit"):
        script = _script(step_id, values)
        for command in re.findall(r"\.venv/bin/calltune (\w+)", script):
            assert command in commands
    assert ".venv/bin/python compile.py --target vertex --config configs/vertex.yaml" in _script("compile", values)
    assert (ROOT / "configs" / "vertex.yaml").is_file()


@pytest.fixture
def workspace(tmp_path):
    """/workspace as the Python steps see it: the checkout, the venv `make test` made, nothing built yet."""
    for name in (".venv", "compile.py", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


@pytest.fixture
def fakes(monkeypatch):
    with FakeStorage() as gcs, FakePipelineService() as vertex, FakeKfpRegistry() as registry:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
        yield gcs, vertex, registry


def _run_step(step_id, workspace, values, templates):
    env = {**os.environ, **_env(values), "CALLTUNE_TEMPLATES": templates}  # the fake registry stands in for AR
    done = subprocess.run(["bash", "-c", _script(step_id, values)], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"{step_id}:\n{done.stdout}\n{done.stderr}"
    return done


def test_compile_upload_and_submit_steps_run_against_the_fakes(workspace, fakes):
    gcs, vertex, registry = fakes
    values = _values(_OVERRIDES=f"gcp.api_endpoint={vertex.endpoint}")
    templates = registry.host("test-project", "calltune-pipelines")
    env = _env(values)
    for step_id in ("compile", "upload", "submit"):
        _run_step(step_id, workspace, values, templates)

    compiled = yaml.safe_load((workspace / "build" / "calltune-vertex.yaml").read_text())
    images = {e["container"]["image"] for n, e in compiled["deploymentSpec"]["executors"].items()
              if n not in ("exec-tune", "exec-batch-infer", "exec-evaluate")}  # GPU CustomJob launchers
    assert images == {env["CALLTUNE_IMAGE"]}
    assert env["CALLTUNE_TRAINER_IMAGE"] in (workspace / "build" / "calltune-vertex.yaml").read_text()

    [upload] = registry.uploads
    assert upload["repo"] == "test-project/calltune-pipelines" and upload["tags"] == ["abc1234", "latest"]

    [created] = vertex.created
    job = created["body"]
    assert job["templateUri"] == f"{templates}/calltune/abc1234"
    assert job["serviceAccount"] == TRIGGER["_SERVICE_ACCOUNT"]
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://test-bucket/pipeline_root"
    assert job["runtimeConfig"]["parameterValues"]["state_dir"] == "/gcs/test-bucket/calltune/state"
    assert job["runtimeConfig"]["parameterValues"]["deploy_project"] == "test-project"
    assert created["parent"] == "projects/test-project/locations/us-central1"


def test_the_run_substitution_turns_the_run_off(workspace, fakes):
    gcs, vertex, registry = fakes
    values = _values(_RUN="false", _OVERRIDES=f"gcp.api_endpoint={vertex.endpoint}")
    done = _run_step("submit", workspace, values, registry.host("test-project", "calltune-pipelines"))
    assert "no run started" in done.stdout
    assert vertex.requests == [] and registry.requests == []


@pytest.fixture
def stubs(tmp_path):
    """docker, gcloud and the venv's calltune as stubs that record their arguments, one call a line."""
    calls = tmp_path / "calls.txt"
    bin_dir, venv_bin = tmp_path / "bin", tmp_path / "workspace" / ".venv" / "bin"
    for folder, name in ((bin_dir, "docker"), (bin_dir, "gcloud"), (venv_bin, "calltune")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n')
        (folder / name).chmod(0o755)
    return tmp_path / "workspace", bin_dir, calls


def _stubbed(stubs, values) -> list[str]:
    workspace, bin_dir, calls = stubs
    calls.write_text("")
    env = {**os.environ, **_env(values), "CALLTUNE_TEMPLATES": "https://templates", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for step_id in ("build-app", "push", "submit", "deploy-app"):
        done = subprocess.run(["bash", "-c", _script(step_id, values)], cwd=workspace, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"{step_id}:\n{done.stdout}\n{done.stderr}"
    return calls.read_text().splitlines()


def test_the_app_is_neither_built_nor_deployed_by_default(stubs):
    values = _values()
    env = _env(values)
    calls = _stubbed(stubs, values)
    assert calls[:2] == [f"docker push {env['CALLTUNE_IMAGE']}", f"docker push {env['CALLTUNE_TRAINER_IMAGE']}"]
    assert len(calls) == 3 and calls[2].startswith("calltune submit ") and "--wait" not in calls[2]


def test_a_named_service_gets_the_app_image_once_the_run_is_over(stubs):
    values = _values(_APP_SERVICE="calltune-app")
    app_image = _env(values)["CALLTUNE_APP_IMAGE"]
    assert re.fullmatch(r"us-central1-docker\.pkg\.dev/test-project/calltune/calltune-serve:abc1234", app_image)
    calls = _stubbed(stubs, values)
    assert calls[0] == f"docker build -f images/Dockerfile.serve -t {app_image} ."
    assert (ROOT / "images" / "Dockerfile.serve").is_file()
    assert calls[3] == f"docker push {app_image}"
    assert calls[4].startswith("calltune submit https://templates/calltune/abc1234 ") and calls[4].endswith(" --wait")
    assert calls[5:] == [f"gcloud run deploy calltune-app --image {app_image} --region us-central1 --project test-project"]
