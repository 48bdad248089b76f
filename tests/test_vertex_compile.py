"""compile.py's Vertex variant: stamped images, the tune CustomJob on the configured GPUs, the gate, the
parameters a console rerun needs, deterministic bytes, and the configs it refuses."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from calltune.config import Config, load_config
from calltune.pipelines.training import STEPS

from fakes.vertex_pipelines import IMAGE, SERVICE_ACCOUNT, TRAINER_IMAGE, VERTEX_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
GPU = ["gcp.machine_type=a3-highgpu-2g", "gcp.accelerator_type=NVIDIA_H100_80GB", "gcp.accelerator_count=2",
       "gcp.labels={team: sales}"]


def _compile_script():
    spec = importlib.util.spec_from_file_location("calltune_compile", ROOT / "compile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args, env=None):
    return subprocess.run([sys.executable, "compile.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def vertex_spec(tmp_path_factory):
    out = tmp_path_factory.mktemp("vertex") / "calltune-vertex.yaml"
    _compile_script().compile_pipeline("vertex", ROOT / "configs" / "vertex.yaml", out, VERTEX_OVERRIDES + GPU)
    return yaml.safe_load(out.read_text())


def _executors(spec) -> dict:
    return spec["deploymentSpec"]["executors"]


def _custom_job(spec, task: str = "tune") -> dict:
    """A task's CustomJob settings: the defaults of its component's inputs."""
    t = spec["root"]["dag"]["tasks"][task]
    return {k: v.get("defaultValue") for k, v in
            spec["components"][t["componentRef"]["name"]]["inputDefinitions"]["parameters"].items()}


def test_tune_is_a_custom_job_on_the_configured_gpus_running_the_shared_component(vertex_spec, tmp_path):
    job = _custom_job(vertex_spec)
    [pool] = job["worker_pool_specs"]  # one machine: the tuner spreads over its GPUs itself
    assert pool["machine_spec"] == {"machine_type": "a3-highgpu-2g", "accelerator_type": "NVIDIA_H100_80GB",
                                    "accelerator_count": 2}
    assert pool["replica_count"] == 1
    assert pool["container_spec"]["image_uri"] == TRAINER_IMAGE
    assert job["service_account"] == SERVICE_ACCOUNT
    assert job["labels"] == {"team": "sales"}
    # The CustomJob runs the same tune component as the local variant: same program, same function.
    local = tmp_path / "local.yaml"
    _compile_script().compile_pipeline("local", None, local)
    local_tune = yaml.safe_load(local.read_text())["deploymentSpec"]["executors"]["exec-tune"]["container"]
    assert pool["container_spec"]["command"] == local_tune["command"]
    assert pool["container_spec"]["args"][pool["container_spec"]["args"].index("--function_to_execute") + 1] == "tune"
    # ...and the task still hands its Model to evaluate and deploy.
    assert vertex_spec["root"]["dag"]["tasks"]["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == \
        {"outputArtifactKey": "model", "producerTask": "tune"}


def test_every_step_runs_in_the_stamped_image(vertex_spec):
    images = {name: e["container"]["image"] for name, e in _executors(vertex_spec).items()}
    for job in ("exec-tune", "exec-batch-infer", "exec-evaluate"):  # CustomJob launchers; the trainer image is
        assert images.pop(job).startswith("gcr.io/ml-pipeline/google-cloud-pipeline-components:")  # in the pool
    # resolve_model runs only in evaluation-only pipelines; deploy_endpoint stands in for deploy on Vertex
    assert set(images) == {f"exec-{name.replace('_', '-')}" for name in STEPS} - {
        "exec-tune", "exec-batch-infer", "exec-evaluate", "exec-resolve-model", "exec-deploy"} | {"exec-deploy-endpoint"}
    assert set(images.values()) == {IMAGE}


def _guarded(spec) -> dict[str, list[str]]:
    """Task -> the conditions it runs under, for every task inside a dsl.If."""
    out: dict[str, list[str]] = {}

    def walk(tasks: dict, conditions: list[str]):
        for name, task in tasks.items():
            inner = spec["components"][task["componentRef"]["name"]].get("dag")
            if "triggerPolicy" in task and inner:
                walk(inner["tasks"], conditions + [task["triggerPolicy"]["condition"]])
            elif conditions:
                out[name] = conditions
    walk(spec["root"]["dag"]["tasks"], [])
    return out


def test_deploy_is_gated_as_in_the_local_variant(vertex_spec, tmp_path):
    guarded = _guarded(vertex_spec)
    assert "deploy-endpoint" in guarded and "deploy-endpoint" not in vertex_spec["root"]["dag"]["tasks"]
    assert any("evaluate-Output" in c and ">=" in c and "evaluate_threshold" in c for c in guarded["deploy-endpoint"])
    local = tmp_path / "local.yaml"
    _compile_script().compile_pipeline("local", None, local)
    local_guarded = _guarded(yaml.safe_load(local.read_text()))
    assert local_guarded.pop("deploy") == guarded.pop("deploy-endpoint") and local_guarded == guarded


def test_parameters_have_defaults_and_descriptions_for_console_reruns(vertex_spec):
    from calltune.pipeline.vertex import console_hidden

    params = vertex_spec["root"]["inputDefinitions"]["parameters"]
    cfg = load_config(ROOT / "configs" / "vertex.yaml", VERTEX_OVERRIDES)
    expected = cfg.pipeline_params()
    assert set(params) == set(expected) - console_hidden(cfg)
    assert not any(name.startswith("gcp_") for name in params)  # compile/submit-time settings, not parameters
    assert all("defaultValue" in p and p.get("description") for p in params.values())
    assert params["state_dir"]["defaultValue"] == "/gcs/test-bucket/state"
    assert {"data_input", "tune_base_model", "tune_epochs", "tune_learning_rate", "evaluate_threshold"} <= set(params)


def test_compile_is_deterministic_across_processes(tmp_path):
    # Separate processes: dict order and hash seeds differ between them, the bytes must not.
    outs = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    for out, seed in zip(outs, ("1", "2")):
        done = _run("--target", "vertex", "--output", str(out), *VERTEX_OVERRIDES, *GPU, env={"PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_images_come_from_the_environment_when_the_config_has_none(tmp_path):
    out = tmp_path / "local.yaml"
    done = _run("--output", str(out), env={"CALLTUNE_IMAGE": "registry.example/calltune:env",
                                           "CALLTUNE_TRAINER_IMAGE": "registry.example/trainer:env"})
    assert done.returncode == 0, done.stderr
    images = {n: e["container"]["image"] for n, e in yaml.safe_load(out.read_text())["deploymentSpec"]["executors"].items()}
    assert images.pop("exec-tune") == "registry.example/trainer:env"
    assert set(images.values()) == {"registry.example/calltune:env"}


def test_a_local_config_is_refused_for_vertex_with_every_reason(tmp_path):
    done = _run("--target", "vertex", "--config", "configs/local.yaml", "--output", str(tmp_path / "x.yaml"),
                "gcp.accelerator_type=NVIDIA_TPU_9000", env={"CALLTUNE_IMAGE": "", "CALLTUNE_TRAINER_IMAGE": ""})
    assert done.returncode == 2
    for needle in ("gcp.project", "gcp.pipeline_root", "state_dir", "/gcs/", "deploy.registry must be secret-manager",
                   "gcp.image", "gcp.trainer_image", "NVIDIA_TPU_9000"):
        assert needle in done.stderr, (needle, done.stderr)
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.parametrize("override, needle", [
    ("data.input=calls.csv", "data.input"),
    ("synthesize.facts_file=facts.json", "synthesize.facts_file"),
    ("tune.base_model=./my-model", "tune.base_model"),
    ("synthesize.model=/home/me/generator", "synthesize.model"),
    ("deploy.project=", "deploy.project"),
    ("gcp.image=calltune:latest", "gcp.image"),  # not in a registry: Vertex could not pull it
])
def test_paths_and_images_vertex_cannot_reach_are_named(override, needle):
    from calltune.pipeline.vertex import vertex_problems

    cfg = load_config(ROOT / "configs" / "vertex.yaml", VERTEX_OVERRIDES + [override])
    problems = vertex_problems(cfg, compiling=True)
    assert len(problems) == 1 and problems[0].startswith(needle), problems


def test_help_describes_both_targets():
    done = _run("--help")
    assert done.returncode == 0
    assert "--target {local,vertex}" in done.stdout and "gcp.image" in done.stdout


def test_gcp_settings_are_not_pipeline_parameters():
    cfg = load_config(None, ["gcp.project=p", "gcp.accelerator_count=4"])
    assert cfg.gcp.accelerator_count == 4
    assert not any(k.startswith("gcp") for k in cfg.pipeline_params())
    assert list(cfg.pipeline_signature()[0].parameters) == list(Config().pipeline_params())


def test_gemini_tuning_is_a_plain_step_without_a_gpu_machine(tmp_path):
    out = tmp_path / "gemini.yaml"
    _compile_script().compile_pipeline("vertex", ROOT / "configs" / "vertex.yaml", out, VERTEX_OVERRIDES + GPU + [
        "tune.backend=gemini", "tune.base_model=gemini-2.5-flash", "tune.gemini_staging_uri=gs://test-bucket/tuning"])
    spec = yaml.safe_load(out.read_text())
    tune = _executors(spec)["exec-tune"]["container"]
    # The calltune component itself, in the component image; no CustomJob, so no machine or accelerator anywhere.
    assert tune["image"] == IMAGE
    assert tune["args"][tune["args"].index("--function_to_execute") + 1] == "tune"
    assert "worker_pool_specs" not in _custom_job(spec)
    assert "accelerator" not in out.read_text()
    params = spec["root"]["inputDefinitions"]["parameters"]
    # the tuner is fixed by the DAG: a constant of the tune task, not a console parameter
    assert "tune_backend" not in params and "tune_lora_r" not in params
    assert spec["root"]["dag"]["tasks"]["tune"]["inputs"]["parameters"]["tune_backend"] == \
        {"runtimeValue": {"constant": "gemini"}}
    assert params["tune_gemini_staging_uri"]["defaultValue"] == "gs://test-bucket/tuning"


# ---- issue 16: GPU evaluation steps, multi-node tuning, TensorBoard, deploy to a Vertex endpoint ----
EVAL_GPU = ["gcp.eval_machine_type=a2-highgpu-1g", "gcp.eval_accelerator_type=NVIDIA_TESLA_A100"]


def _pool(spec, task: str) -> dict:
    [pool] = _custom_job(spec, task)["worker_pool_specs"]
    return pool


def test_batch_infer_and_evaluate_are_gpu_custom_jobs_of_the_shared_components(tmp_path):
    out = tmp_path / "v.yaml"
    _compile_script().compile_pipeline("vertex", ROOT / "configs" / "vertex.yaml", out, VERTEX_OVERRIDES + GPU + EVAL_GPU)
    spec = yaml.safe_load(out.read_text())
    for task, function in (("batch-infer", "batch_infer"), ("evaluate", "evaluate")):
        pool = _pool(spec, task)
        assert pool["machine_spec"] == {"machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100",
                                        "accelerator_count": 1}
        assert pool["container_spec"]["image_uri"] == TRAINER_IMAGE
        args = pool["container_spec"]["args"]
        assert args[args.index("--function_to_execute") + 1] == function
    # evaluate's accuracy still drives the gate, and its evaluation artifact still reaches it
    assert any("evaluate-Output" in c for c in _guarded(spec)["gate"])


def test_a_cpu_only_config_keeps_them_plain_steps(tmp_path):
    out = tmp_path / "cpu.yaml"
    _compile_script().compile_pipeline("vertex", ROOT / "configs" / "vertex.yaml", out,
                                       VERTEX_OVERRIDES + ["gcp.eval_accelerator_type="])
    executors = _executors(yaml.safe_load(out.read_text()))
    for name, function in (("exec-batch-infer", "batch_infer"), ("exec-evaluate", "evaluate")):
        container = executors[name]["container"]
        assert container["image"] == IMAGE and container["args"][container["args"].index("--function_to_execute") + 1] == function


def test_synthesize_with_the_local_generator_gets_the_gpu_too(tmp_path):
    out = tmp_path / "synth.yaml"
    _compile_script().compile_pipeline("vertex", ROOT / "configs" / "vertex.yaml", out,
                                       VERTEX_OVERRIDES + EVAL_GPU + ["synthesize.enabled=true"])
    assert _pool(yaml.safe_load(out.read_text()), "synthesize")["container_spec"]["image_uri"] == TRAINER_IMAGE


def test_several_machines_make_worker_pools_and_the_job_reports_to_tensorboard(tmp_path):
    out = tmp_path / "multi.yaml"
    tensorboard = "projects/test-project/locations/us-central1/tensorboards/42"
    _compile_script().compile_pipeline("vertex", ROOT / "configs" / "vertex.yaml", out, VERTEX_OVERRIDES + GPU + [
        "gcp.replica_count=3", f"gcp.tensorboard={tensorboard}", "gcp.base_output_directory=gs://test-bucket/jobs"])
    job = _custom_job(yaml.safe_load(out.read_text()))
    chief, workers = job["worker_pool_specs"]
    assert (chief["replica_count"], workers["replica_count"]) == (1, 2)
    assert chief["machine_spec"] == workers["machine_spec"] and chief["container_spec"] == workers["container_spec"]
    assert (job["tensorboard"], job["base_output_directory"]) == (tensorboard, "gs://test-bucket/jobs")


@pytest.mark.parametrize("override, needle", [
    ("gcp.tensorboard=my-board", "gcp.tensorboard must be"),
    ("gcp.base_output_directory=/tmp/out", "gcp.base_output_directory must be"),
    ("gcp.serving_image=vllm:latest", "gcp.serving_image"),
    ("gcp.eval_accelerator_type=NVIDIA_TPU_9000", "gcp.eval_accelerator_type"),
])
def test_bad_gpu_and_serving_settings_are_named(override, needle):
    from calltune.pipeline.vertex import vertex_problems

    problems = vertex_problems(load_config(ROOT / "configs" / "vertex.yaml", VERTEX_OVERRIDES + [override]), compiling=True)
    assert any(p.startswith(needle) for p in problems), problems


def test_deploy_to_an_endpoint_is_in_the_vertex_yaml_only(vertex_spec, tmp_path):
    container = _executors(vertex_spec)["exec-deploy-endpoint"]["container"]
    assert container["args"][container["args"].index("--function_to_execute") + 1] == "deploy_endpoint"
    inputs = next(t for c in vertex_spec["components"].values() for n, t in c.get("dag", {}).get("tasks", {}).items()
                  if n == "deploy-endpoint")["inputs"]["parameters"]
    # the serving settings are compile-time constants from gcp.*, the rest pipeline parameters
    assert inputs["gcp_serving_image"]["runtimeValue"]["constant"].startswith(
        "us-docker.pkg.dev/vertex-ai/vertex-vision-model-garden-dockers/pytorch-vllm-serve:")
    assert inputs["gcp_project"]["runtimeValue"]["constant"] == "test-project"
    local = tmp_path / "local.yaml"
    _compile_script().compile_pipeline("local", None, local)
    assert "deploy-endpoint" not in local.read_text() and "serving_image" not in local.read_text()
    store = tmp_path / "store.yaml"
    _compile_script().compile_pipeline("vertex", ROOT / "configs" / "vertex.yaml", store,
                                       VERTEX_OVERRIDES + ["deploy.target=store"])
    assert "exec-deploy" in _executors(yaml.safe_load(store.read_text()))
    assert "deploy-endpoint" not in store.read_text()


def test_a_template_and_a_config_that_disagree_on_the_deploy_target_are_refused(vertex_spec, tmp_path):
    from calltune.pipeline.vertex import parameter_values

    template = tmp_path / "t.yaml"
    template.write_text(yaml.safe_dump(vertex_spec))
    cfg = load_config(ROOT / "configs" / "vertex.yaml", VERTEX_OVERRIDES)
    assert "deploy_target" not in parameter_values(template, cfg)  # fixed by the DAG: not a console parameter
    with pytest.raises(ValueError, match="deploy.target"):
        parameter_values(template, load_config(ROOT / "configs" / "vertex.yaml", VERTEX_OVERRIDES + ["deploy.target=store"]))


def test_an_endpoint_deploy_is_refused_on_the_local_target():
    from calltune.config import ConfigError
    from calltune.pipelines.training import build_pipeline

    with pytest.raises(ConfigError, match="only on the Vertex target"):
        build_pipeline("local", load_config(None, ["deploy.target=vertex-endpoint"]))


def test_the_console_form_shows_what_a_rerun_can_change_and_the_config_still_decides_the_rest(vertex_spec, tmp_path):
    from calltune.pipeline.vertex import parameter_values

    params = vertex_spec["root"]["inputDefinitions"]["parameters"]
    full = load_config(ROOT / "configs" / "vertex.yaml", VERTEX_OVERRIDES).pipeline_params()
    assert len(params) <= len(full) // 2  # a LoRA run without synthesis or judge shows under half of them
    for gone in ("tune_gemini_staging_uri", "judge_model", "synthesize_conversations", "translate_glossary",
                 "deploy_registry", "tune_backend"):
        assert gone not in params
    assert vertex_spec["pipelineInfo"]["description"].startswith(
        "Turns sales-call transcripts") and "Most reruns change: data_input, tune_base_model" in \
        vertex_spec["pipelineInfo"]["description"]
    template = tmp_path / "t.yaml"
    template.write_text(yaml.safe_dump(vertex_spec))
    # submit sends only the form's parameters; a config that differs in a fixed setting is refused, naming it
    sent = parameter_values(template, load_config(ROOT / "configs" / "vertex.yaml", VERTEX_OVERRIDES))
    assert set(sent) == set(params)
    with pytest.raises(ValueError, match=r"other values of synthesize\.conversations=50"):
        parameter_values(template, load_config(ROOT / "configs" / "vertex.yaml",
                                               VERTEX_OVERRIDES + ["synthesize.conversations=10"]))


def test_the_vertex_config_as_shipped_names_every_field_to_fill_in_one_calltune_error(tmp_path):
    """configs/vertex.yaml leaves state_dir empty, which the config itself refuses: that must not hide what Vertex
    needs of the other fields (a user fixing one field per try)."""
    done = _run("--target", "vertex", "--output", str(tmp_path / "x.yaml"), env={"CALLTUNE_IMAGE": "",
                                                                                 "CALLTUNE_TRAINER_IMAGE": ""})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("calltune: "), done.stderr
    for field in ("state_dir: Value error, is empty", "gcp.project", "gcp.pipeline_root", "deploy.project", "gcp.image"):
        assert field in done.stderr
    assert "state_dir must be a Cloud Storage FUSE folder" not in done.stderr  # named once, by the config's check
