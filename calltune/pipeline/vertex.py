"""Vertex AI delivery: what the Vertex variant needs from the config, starting a PipelineJob, uploading templates.

`check_vertex` runs at compile time (compile.py --target vertex) and again before a submit, since the submitted
parameter values replace the compiled defaults. The Google clients (google-cloud-aiplatform, kfp.registry) are
imported only when used. An http:// endpoint or registry (a local fake) gets anonymous credentials: credentials
never go over plain HTTP.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from calltune.backends.resources import ResourceName, is_vertex_model, spelled_as_resource
from calltune.config import Config, ConfigError, load_config_leniently
from calltune.core.gcs import BUCKET

IMAGE_ENV, TRAINER_IMAGE_ENV = "CALLTUNE_IMAGE", "CALLTUNE_TRAINER_IMAGE"
_GCS_FOLDER = re.compile(rf"gs://{BUCKET}(/.*)?")
_FUSE_FOLDER = re.compile(rf"/gcs/{BUCKET}(/.*)?")
_IMAGE = re.compile(r"[a-z0-9.-]+(:[0-9]+)?/[^\s:@]+(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})")
# Fields naming a file, or a model folder: on Vertex AI only Cloud Storage paths resolve (or bundled models, and
# projects/... resources).
_FILES = (("data", "input"), ("synthesize", "facts_file"), ("coach", "scorecard"))
_MODELS = (("tune", "base_model"), ("synthesize", "model"))
END_STATES = ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED")
SUBMIT_RETRIES = 5  # of the create request (429, 5xx), with the same job id


class VertexError(RuntimeError):
    """A Google API refused a call, or a pipeline job ended without succeeding."""


def images(cfg: Config) -> tuple[str, str]:
    """(component image, trainer image): from the config, else $CALLTUNE_IMAGE / $CALLTUNE_TRAINER_IMAGE."""
    return (cfg.gcp.image or os.environ.get(IMAGE_ENV, ""),
            cfg.gcp.trainer_image or os.environ.get(TRAINER_IMAGE_ENV, ""))


def deploy_target(cfg: Config, target: str) -> str:
    """store or vertex-endpoint: deploy.target, with auto = vertex-endpoint for an open model (hf-lora, or an
    evaluated model folder) on the Vertex target."""
    if cfg.deploy.target != "auto":
        return cfg.deploy.target
    open_model = cfg.tune.backend == "hf-lora" and not is_vertex_model(cfg.evaluate.model)
    return "vertex-endpoint" if target == "vertex" and open_model else "store"


_GOOGLE_TRANSLATE = ("project", "location", "model", "glossary", "endpoint", "max_concurrency", "max_retries",
                     "retry_backoff_s", "timeout_s")
_LORA = ("lora_r", "lora_alpha", "lora_dropout", "target_modules", "use_dora", "padding_free", "compile", "attention",
         "processes", "merge", "preference_learning_rate")


def console_hidden(cfg: Config) -> set[str]:
    """Pipeline parameters the Vertex template leaves out of the console's run form: the settings of features this
    template does not use (synthesis off, no judge, no seller model, a local translator, the other tuner's fields, the
    preference rounds' settings while they are off, an endpoint's
    concurrency for a local model), settings its DAG or machines fix (tune.backend, tune.processes, deploy.registry,
    deploy.target), deploy's retry/timeout/API-override/endpoint-sweep knobs and the coach's (examples, similar
    calls, bootstrap resamples: how its figures are made and shown, not what it learns). They are compiled in as
    constants from the config,
    and `calltune submit` refuses a config whose values for them differ, so the config stays the single source."""
    def fields(section: str, names=None) -> set[str]:
        return {f"{section}_{f}" for f in names or type(getattr(cfg, section)).model_fields}

    hidden = fields("tune", ("backend", "processes")) | fields("deploy", (
        "registry", "target", "endpoint", "max_retries", "retry_backoff_s", "timeout_s", "sweep_endpoints"))  # + ops
    hidden |= fields("coach", ("examples_per_criterion", "similar_calls", "bootstrap_samples"))
    if not cfg.synthesize.enabled:
        hidden |= fields("synthesize")
    if cfg.judge.backend == "none":
        hidden |= fields("judge")
    if not cfg.simulate.enabled:
        hidden |= fields("simulate")
    elif cfg.simulate.seller == "replay":  # the real seller's lines are replayed: no seller model to configure
        hidden |= fields("simulate", [f for f in type(cfg.simulate).model_fields if f.startswith("seller_")])
    if cfg.translate.backend != "google":
        hidden |= fields("translate", _GOOGLE_TRANSLATE)
    gemini = [f for f in type(cfg.tune).model_fields if f.startswith("gemini_")]
    hidden |= fields("tune", gemini if cfg.tune.backend == "hf-lora" else _LORA)
    if not cfg.tune.preference_rounds:  # a rerun may still turn the rounds on, with the config's settings
        hidden |= fields("tune", [f for f in type(cfg.tune).model_fields
                                  if f.startswith("preference_") and f != "preference_rounds"])
    if cfg.tune.backend == "hf-lora" and not is_vertex_model(cfg.evaluate.model):
        hidden |= fields("infer", ("max_concurrency", "vertex_base_url"))
    return hidden


def _compiled_constants(spec: dict) -> dict[str, list]:
    """Parameter name -> the constants the template's tasks receive under that name (nested DAGs included)."""
    found: dict[str, list] = {}
    dags = [spec.get("root", {}).get("dag", {})] + [c.get("dag", {}) for c in spec.get("components", {}).values()]
    for dag in dags:
        for task in dag.get("tasks", {}).values():
            for name, value in task.get("inputs", {}).get("parameters", {}).items():
                if "constant" in value.get("runtimeValue", {}):
                    found.setdefault(name, []).append(value["runtimeValue"]["constant"])
    return found


def vertex_problems(cfg: Config, *, compiling: bool) -> list[str]:
    """Why this config cannot run on Vertex AI: each step runs on its own machine, so nothing local survives."""
    g, problems = cfg.gcp, []
    if not g.project:
        problems.append("gcp.project: set the Google Cloud project id")
    if not g.region:
        problems.append("gcp.region: set the Vertex AI region, e.g. us-central1")
    if not _GCS_FOLDER.fullmatch(g.pipeline_root):
        problems.append(f"gcp.pipeline_root must be a gs:// folder, e.g. gs://BUCKET/pipeline_root (got {g.pipeline_root!r})")
    if not _FUSE_FOLDER.fullmatch(cfg.state_dir):
        problems.append(f"state_dir must be a Cloud Storage FUSE folder, /gcs/BUCKET/..., the only disk every step sees "
                        f"(got {cfg.state_dir!r})")
    if cfg.deploy.registry != "secret-manager":
        problems.append(f"deploy.registry must be secret-manager: the sqlite registry is a local file "
                        f"(got {cfg.deploy.registry!r})")
    elif not cfg.deploy.project:
        problems.append("deploy.project: set the project that holds the secret")
    for section, field in _FILES:
        value = getattr(getattr(cfg, section), field)
        if value and not value.startswith(("gs://", "/gcs/")):
            problems.append(f"{section}.{field} must be a gs:// or /gcs/ path, or empty (got {value!r})")
    for section, field in _MODELS:
        value = getattr(getattr(cfg, section), field)
        if ("/" in value or value.startswith(".")) and not (value.startswith("/gcs/") or spelled_as_resource(value)):
            problems.append(f"{section}.{field} must be a bundled model name or a /gcs/ folder (got {value!r})")
    if deploy_target(cfg, "vertex") == "vertex-endpoint":
        if cfg.tune.backend == "gemini":
            problems.append("deploy.target=vertex-endpoint serves open models (tune.backend=hf-lora); a tuned Gemini "
                            "already has its endpoint: use deploy.target=store (or auto)")
        if not _IMAGE.fullmatch(g.serving_image):
            problems.append(f"gcp.serving_image must be a registry image with a tag or digest (got {g.serving_image!r})")
        if g.serving_max_replicas < g.serving_min_replicas:
            problems.append(f"gcp.serving_max_replicas ({g.serving_max_replicas}) is below gcp.serving_min_replicas "
                            f"({g.serving_min_replicas})")
    if g.tensorboard:
        if not ResourceName.parse(g.tensorboard, "tensorboards"):
            problems.append(f"gcp.tensorboard must be projects/P/locations/L/tensorboards/ID (got {g.tensorboard!r})")
        if not g.base_output_directory or not g.service_account:
            problems.append("gcp.tensorboard needs gcp.base_output_directory and gcp.service_account (Vertex writes "
                            "the logs as that account)")
    if g.base_output_directory and not _GCS_FOLDER.fullmatch(g.base_output_directory):
        problems.append(f"gcp.base_output_directory must be a gs:// folder (got {g.base_output_directory!r})")
    if compiling:
        for field, env, image in zip(("image", "trainer_image"), (IMAGE_ENV, TRAINER_IMAGE_ENV), images(cfg)):
            if field == "trainer_image" and cfg.tune.backend == "gemini":
                continue  # Gemini tunes on Vertex's own machines: no trainer image, no GPU job
            if not _IMAGE.fullmatch(image):
                problems.append(f"gcp.{field} (or ${env}) must be a registry image with a tag or digest, e.g. "
                                f"REGION-docker.pkg.dev/PROJECT/REPO/NAME:TAG (got {image!r})")
        from google.cloud.aiplatform_v1.types import AcceleratorType

        known = [a.name for a in AcceleratorType if a.value]
        for field in ("accelerator_type", "eval_accelerator_type", "serving_accelerator_type"):
            value = getattr(g, field)
            if value and value not in known:
                problems.append(f"gcp.{field} {value!r} is not a Vertex accelerator; one of {known}")
    return problems


_HEADING = "the config cannot run on Vertex AI (start from configs/vertex.yaml):"


def check_vertex(cfg: Config, *, compiling: bool) -> None:
    problems = vertex_problems(cfg, compiling=compiling)
    if problems:
        raise ConfigError(f"{_HEADING}\n  - " + "\n  - ".join(problems))


def load_vertex_config(path: str | Path | None, overrides: list[str], *, compiling: bool) -> Config:
    """The config of a Vertex run, with every wrong field named in one error: the values the config itself refuses
    (an empty state_dir) and what Vertex needs of the others."""
    cfg, refused = load_config_leniently(path, overrides)
    problems = [p for p in vertex_problems(cfg, compiling=compiling) if re.match(r"[\w.]+", p)[0] not in refused]
    if refused or problems:
        raise ConfigError("\n".join([*refused.values(), *([f"{_HEADING}\n  - " + "\n  - ".join(problems)]
                                                          if problems else [])]))
    return cfg


def _plain_http(url: str) -> bool:
    return url.startswith("http://")


def _no_auth(request):  # a registry over plain HTTP (a local fake) gets no credentials at all
    return request


def _registry_client(host: str):
    from kfp.registry import RegistryClient

    return RegistryClient(host=host, auth=_no_auth if _plain_http(host) else None)


def _fetch_template(template: str, workdir: Path) -> tuple[Path, str]:
    """(local file, template URI): a compiled file as it is, or an Artifact Registry URL downloaded with kfp's client.

    An Artifact Registry URL is https://REGION-kfp.pkg.dev/PROJECT/REPO/PACKAGE/TAG (or .../sha256:VERSION).
    """
    if not template.startswith(("https://", "http://")):
        path = Path(template)
        if not path.is_file():
            raise FileNotFoundError(f"pipeline template {template} does not exist (run compile.py --target vertex)")
        return path, ""
    host, package, ref = template.rstrip("/").rsplit("/", 2)
    if urlsplit(host).path.strip("/").count("/") != 1:
        raise ValueError(f"{template!r} is not an Artifact Registry template URL "
                         f"(https://REGION-kfp.pkg.dev/PROJECT/REPO/PACKAGE/TAG)")
    ref_arg = {"version": ref} if ref.startswith("sha256:") else {"tag": ref}
    path = workdir / "template.yaml"
    _registry_client(host).download_pipeline(package, file_name=str(path), **ref_arg)
    return path, template


def parameter_values(template_path: Path, cfg: Config) -> dict[str, Any]:
    """The config's values for the template's parameters; a config field the template lacks is an error, not dropped."""
    spec = yaml.safe_load(template_path.read_text(encoding="utf-8"))
    spec = spec.get("pipelineSpec", spec)
    declared = set(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))
    values = cfg.pipeline_params()
    constants = _compiled_constants(spec)
    fixed = {name for name in set(values) - declared if name in constants}  # left out of the console form
    changed = sorted(name for name in fixed if any(c != values[name] for c in constants[name]))
    if changed:
        raise ValueError(f"pipeline template {template_path} was compiled with other values of "
                         + ", ".join(f"{n.replace('_', '.', 1)}={constants[n][0]!r}" for n in changed)
                         + " (settings it fixes, not parameters); compile it again with this config")
    values = {k: v for k, v in values.items() if k not in fixed}
    unknown = sorted(set(values) - declared)
    if unknown:
        raise ValueError(f"pipeline template {template_path} has no parameters {unknown}: it was compiled from another "
                         f"calltune version; compile and upload it again")
    # The DAG's shape is fixed at compile time: a tuning template given evaluate.model would quietly tune.
    evaluation_only = "resolve-model" in spec.get("root", {}).get("dag", {}).get("tasks", {})
    if bool(cfg.evaluate.model) != evaluation_only:
        raise ValueError(
            f"pipeline template {template_path} is {'an evaluation-only' if evaluation_only else 'a tuning'} "
            f"template, but evaluate.model is {cfg.evaluate.model or 'empty'}; compile one "
            f"{'without' if evaluation_only else 'with'} evaluate.model set (python compile.py --target vertex "
            f"{'' if evaluation_only else 'evaluate.model=secret:latest'})".rstrip())
    on_endpoint = "exec-deploy-endpoint" in spec.get("deploymentSpec", {}).get("executors", {})
    if on_endpoint != (deploy_target(cfg, "vertex") == "vertex-endpoint"):
        raise ValueError(f"pipeline template {template_path} deploys to {'a Vertex endpoint' if on_endpoint else 'the model store'}"
                         f", but deploy.target resolves to {deploy_target(cfg, 'vertex')}; compile it again with "
                         f"this deploy.target")
    return values


def console_url(cfg: Config, job_id: str) -> str:
    return (f"https://console.cloud.google.com/vertex-ai/locations/{cfg.gcp.region}/pipelines/runs/{job_id}"
            f"?project={cfg.gcp.project}")


def submit(template: str, cfg: Config, *, job_id: str | None = None, wait: bool = False, poll_s: float = 30.0,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start a Vertex AI PipelineJob from a compiled file or an Artifact Registry URL, with the config's parameter
    values, pipeline root, service account, labels and caching; with `wait`, follow it until it ends."""
    check_vertex(cfg, compiling=False)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform

    g = cfg.gcp
    credentials = AnonymousCredentials() if _plain_http(g.api_endpoint) else None
    aiplatform.init(project=g.project, location=g.region, credentials=credentials,
                    api_endpoint=g.api_endpoint or None, api_transport="rest")
    with tempfile.TemporaryDirectory() as tmp:
        path, template_uri = _fetch_template(template, Path(tmp))
        values = parameter_values(path, cfg)
        name = yaml.safe_load(path.read_text(encoding="utf-8")).get("pipelineInfo", {}).get("name", "calltune")
        job = aiplatform.PipelineJob(
            display_name=name, template_path=str(path), job_id=job_id, pipeline_root=g.pipeline_root,
            parameter_values=values, enable_caching=g.enable_caching, labels=dict(g.labels) or None,
            project=g.project, location=g.region, credentials=credentials)
    if template_uri:  # links the run to its template in the console, as PipelineJob does for a URL it fetches itself
        job._gca_resource.template_uri = template_uri  # noqa: SLF001 (the public property exists only once created)
    job = _create(job, g.service_account, credentials)
    result = {"name": job.resource_name, "job_id": job.job_id, "console": console_url(cfg, job.job_id),
              "template_uri": template_uri, "state": job.gca_resource.state.name}
    log(f"submitted {result['name']}")
    if wait:
        result["state"] = follow(job, poll_s=poll_s, log=log)
    return result


def _create(job, service_account: str, credentials):
    """job.submit(), each failed create retried with the same job id; after a failure that may have created it
    (anything but 429) the job is looked up first, so a lost answer never starts a second run."""
    from google.api_core import exceptions
    from google.cloud import aiplatform

    from calltune.backends import Retrying

    def lookup():
        try:
            return aiplatform.PipelineJob.get(f"{job._parent}/pipelineJobs/{job.job_id}",  # noqa: SLF001
                                              credentials=credentials)
        except exceptions.NotFound:
            return None

    def created_anyway(exc: BaseException):
        if isinstance(exc, exceptions.TooManyRequests):
            return None
        found = retrying.call(lookup, f"looking up pipeline job {job.job_id}")
        # Created by this submit, not an older job under a reused id (2 minutes for clocks that disagree).
        if found is None or found.gca_resource.create_time.timestamp() < started - 120:
            return None
        job._gca_resource = found.gca_resource  # noqa: SLF001 (the job as created, state included)
        return job

    def create():
        if not sent:  # the first attempt goes through submit (pipeline root bucket, service account, then create)
            sent.append(True)
            job.submit(service_account=service_account or None)
        else:  # a retry repeats only the create request, with the same job id
            job._gca_resource = job.api_client.create_pipeline_job(  # noqa: SLF001 (what submit itself sends)
                parent=job._parent, pipeline_job=job._gca_resource, pipeline_job_id=job.job_id)  # noqa: SLF001
        return job

    sent: list[bool] = []
    started = time.time()

    retrying = Retrying(service="Vertex AI", setting="", max_retries=SUBMIT_RETRIES,
                        backoff_s=1.0, retryable=lambda e: isinstance(e, (exceptions.TooManyRequests,
                                                                          exceptions.ServerError)),
                        error=VertexError, wrap_refusals=False)
    try:
        return retrying.call(create, f"creating pipeline job {job.job_id}", recover=created_anyway)
    except exceptions.GoogleAPIError as exc:
        raise VertexError(f"Vertex AI refused the pipeline job: {exc}") from exc


def follow(job, *, poll_s: float, log: Callable[[str], None] = print) -> str:
    """Poll the job until it ends, logging each state change; raise VertexError unless it succeeded."""
    from google.api_core.exceptions import GoogleAPIError

    last = None
    while True:
        try:
            state = job.state.name  # a fresh GetPipelineJob each time
        except GoogleAPIError as exc:
            raise VertexError(f"cannot read the state of {job.resource_name}: {exc}") from exc
        if state != last:
            log(f"{time.strftime('%H:%M:%S')} {job.job_id}: {state}")
            last = state
        if state in END_STATES:
            break
        time.sleep(poll_s)
    if state != "PIPELINE_STATE_SUCCEEDED":
        resource = job.gca_resource
        failed = [f"{t.task_name}: {t.error.message}" for t in resource.job_detail.task_details
                  if t.state.name == "FAILED" and t.error.message]
        raise VertexError(f"pipeline job {job.job_id} ended {state}: {resource.error.message or 'no error message'}"
                          + "".join(f"\n  task {f}" for f in failed))
    return state


def git_commit(cwd: Path | None = None) -> str:
    """The checkout's commit (12 hex digits), with -dirty when tracked files differ from it."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
        if out.returncode:
            raise ValueError(f"cannot read the git commit ({out.stderr.strip() or 'git failed'}): name the tag with --tag")
        return out.stdout.strip()

    return git("rev-parse", "--short=12", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def upload(template: Path, cfg: Config, tags: list[str]) -> dict[str, Any]:
    """Push a compiled template to the Artifact Registry repository gcp.template_registry, with these tags."""
    host = cfg.gcp.template_registry.rstrip("/")
    if not host:
        raise ConfigError("gcp.template_registry: set the Artifact Registry repository, "
                          "e.g. https://REGION-kfp.pkg.dev/PROJECT/REPO")
    if not Path(template).is_file():
        raise FileNotFoundError(f"pipeline template {template} does not exist (run compile.py --target vertex)")
    package, version = _registry_client(host).upload_pipeline(str(template), tags=list(tags))
    return {"package": package, "version": version, "tags": list(tags),
            "urls": [f"{host}/{package}/{ref}" for ref in (*tags, version)]}
