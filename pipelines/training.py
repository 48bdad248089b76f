"""The calltune DAG, built by one factory from the shared components.

ingest -> translate -> turn-split -> sample -> synthesize -> tune -> batch-infer -> evaluate (tuned vs base vs champion)
  -> dsl.If(accuracy >= threshold) -> gate (margin over base, tolerance to champion) -> dsl.If(gate == promote) -> deploy
sample -> coach (the scorecard and the offline review, from the graded calls) -> tune (which puts it in the model)

Every config field is a pipeline parameter (`<section>_<field>`, see calltune.config) with its
default and description, and each component receives the parameters named in its signature.

Evaluation-only runs (evaluate.model set; the shape is also chosen when building, since kfp.local cannot run
dsl.OneOf): the data steps still run, for the test split; resolve_model replaces synthesize and tune, and its Model
artifact goes to batch-infer, evaluate and deploy as the tuned model's would.

Targets differ only in how steps run, chosen when the pipeline is built (kfp.local cannot run container
components such as Google Cloud Pipeline Components' CustomJob, so no runtime branch): "local" runs every step
under kfp.local; "vertex" runs the same components on Vertex AI Pipelines in the component image, and the tune
component as a Vertex CustomJob on the configured GPU machine (gcp.replica_count machines: worker pools), in the
trainer image; so do batch_infer and evaluate (and synthesize with the local generator) on their own GPU machine
(gcp.eval_*) when the models are local ones; and with deploy.target=vertex-endpoint, deploy_endpoint replaces deploy
(only there: the local variant cannot reach a Vertex endpoint). Images are stamped into copies of the components, so
the shared ones never change.
"""
from __future__ import annotations

import copy
from typing import Literal

from kfp import dsl

from calltune import components as c
from calltune.backends.resources import is_vertex_model
from calltune.config import Config, ConfigError
from calltune.pipeline.vertex import check_vertex, console_hidden, deploy_target, images

NAME = "calltune"
TARGETS = ("local", "vertex")
# What a person changes first on a rerun, named first in the Vertex template's description.
MAIN = ("data_input", "tune_base_model", "tune_epochs", "tune_learning_rate", "sample_train_size", "sample_test_size",
        "evaluate_threshold", "evaluate_min_gain_over_base")
STEPS = ("ingest", "translate", "turn_split", "sample", "coach", "synthesize", "tune", "resolve_model", "batch_infer",
         "evaluate", "gate", "deploy")


def _params_for(component, params: dict) -> dict:
    """The pipeline parameters a component asks for, by name."""
    return {name: params[name] for name in component.component_spec.inputs or {} if name in params}


def _stamped(component, image: str):
    """A copy of `component` that runs in `image` (the component itself when no image is given)."""
    if not image:
        return component
    stamped = copy.deepcopy(component)
    stamped.component_spec.implementation.container.image = image
    return stamped


def _custom_job(component, cfg: Config, machine_type: str, accelerator_type: str, accelerator_count: int, **job):
    """`component` as a Vertex CustomJob on that machine: the same program, run by GCPC's CustomJob launcher."""
    from google_cloud_pipeline_components.v1.custom_job import create_custom_training_job_from_component

    return create_custom_training_job_from_component(
        component, machine_type=machine_type, accelerator_type=accelerator_type, accelerator_count=accelerator_count,
        service_account=cfg.gcp.service_account, labels=dict(cfg.gcp.labels), **job)


def steps_for(target: str, cfg: Config) -> dict:
    """Step name -> the component that runs it on `target`. tune runs in the trainer image, and on "vertex" as a
    CustomJob on the configured GPUs, only for tune.backend=hf-lora (chosen when building, like the target); so do
    the steps that load local models (batch_infer, evaluate, and synthesize's local generator) on gcp.eval_*."""
    image, trainer_image = images(cfg)
    steps = {name: _stamped(getattr(c, name), image) for name in STEPS}
    if target == "vertex" and deploy_target(cfg, target) == "vertex-endpoint":
        steps["deploy"] = _stamped(c.deploy_endpoint, image)
    if cfg.tune.backend == "gemini":  # the tuning runs on Vertex AI's side: a plain step in the component image
        return steps
    steps["tune"] = _stamped(c.tune, trainer_image or image)
    if target == "vertex":
        g = cfg.gcp
        steps["tune"] = _custom_job(steps["tune"], cfg, g.machine_type, g.accelerator_type, g.accelerator_count,
                                    replica_count=g.replica_count, tensorboard=g.tensorboard,
                                    base_output_directory=g.base_output_directory)
        gpu_steps = ["batch_infer", "evaluate"]
        if cfg.synthesize.enabled and cfg.synthesize.backend == "local" and not cfg.evaluate.model:
            gpu_steps.append("synthesize")
        if g.eval_accelerator_type and not is_vertex_model(cfg.evaluate.model):  # else: plain CPU steps
            for name in gpu_steps:
                steps[name] = _custom_job(_stamped(getattr(c, name), trainer_image or image), cfg,
                                          g.eval_machine_type, g.eval_accelerator_type, g.eval_accelerator_count)
    return steps


def build_pipeline(target: Literal["local", "vertex"] = "local", config: Config | None = None):
    """The pipeline for a target ("local" runs under kfp.local, "vertex" on Vertex AI Pipelines); parameter
    defaults come from `config`, and so, for "vertex", do the images and the tune CustomJob's machine."""
    if target not in TARGETS:
        raise ValueError(f"unknown pipeline target {target!r}; expected one of {TARGETS}")
    cfg = config or Config()
    if target == "vertex":
        check_vertex(cfg, compiling=True)
    elif cfg.deploy.target == "vertex-endpoint":
        raise ConfigError("deploy.target=vertex-endpoint runs only on the Vertex target (the model must be in Cloud "
                          "Storage for Vertex to serve it); use store (or auto) locally")
    s = steps_for(target, cfg)
    signature, docs = cfg.pipeline_signature()
    # The Vertex console's run form shows only what a rerun of this template can change (see console_hidden);
    # the rest goes in as constants from the config.
    hidden = console_hidden(cfg) if target == "vertex" else set()
    fixed = {name: value for name, value in cfg.pipeline_params().items() if name in hidden}
    signature = signature.replace(parameters=[q for q in signature.parameters.values() if q.name not in hidden])
    names = list(signature.parameters)
    gcp = {f"gcp_{k}": v for k, v in cfg.gcp.model_dump().items()}

    def calltune_pipeline(*args):
        p = {**fixed, **dict(zip(names, args))}
        ingest = s["ingest"](**_params_for(s["ingest"], p))
        translated = s["translate"](calls_in=ingest.outputs["calls"], **_params_for(s["translate"], p))
        split = s["turn_split"](calls=translated.outputs["calls"], **_params_for(s["turn_split"], p))
        sample = s["sample"](examples=split.outputs["examples"], **_params_for(s["sample"], p))
        coaching = s["coach"](calls=translated.outputs["calls"], splits=sample.outputs["splits"],
                              **_params_for(s["coach"], p)).outputs["coaching"]
        if cfg.evaluate.model:  # evaluation-only: the named model stands in for synthesize + tune
            splits = sample.outputs["splits"]
            model = s["resolve_model"](**_params_for(s["resolve_model"], p)).outputs["model"]
        else:
            # synthesize always runs (disabled, it copies the splits): no conditional outputs, which kfp.local cannot run
            synthesized = s["synthesize"](splits_in=sample.outputs["splits"], **_params_for(s["synthesize"], p))
            splits = synthesized.outputs["splits"]
            model = s["tune"](splits=splits, coaching=coaching, **_params_for(s["tune"], p)).outputs["model"]
        predictions = s["batch_infer"](model=model, splits=splits, run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                       **_params_for(s["batch_infer"], p))
        evaluation = s["evaluate"](model=model, splits=splits, predictions=predictions.outputs["predictions"],
                                   **_params_for(s["evaluate"], p))
        # Conditions read only plain `Output` values (all kfp.local resolves): the accuracy, then the gate's verdict.
        with dsl.If(evaluation.outputs["Output"] >= p["evaluate_threshold"], name="accuracy-gate"):
            verdict = s["gate"](evaluation=evaluation.outputs["evaluation"], **_params_for(s["gate"], p))
            with dsl.If(verdict.outputs["Output"] == "promote", name="comparison-gate"):
                # deploy_endpoint also takes gcp.* settings: compile-time constants, not pipeline parameters
                s["deploy"](model=model, accuracy=evaluation.outputs["Output"],
                            run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **_params_for(s["deploy"], {**gcp, **p}))

    calltune_pipeline.__signature__ = signature
    calltune_pipeline.__doc__ = (
        "Turns sales-call transcripts into a model that plays the customer, and promotes it when it is good enough.\n\n"
        + (f"Most reruns change: {', '.join(n for n in MAIN if n in names)}.\n\n" if hidden else "")
        + "Args:\n" + "".join(f"    {name}: {' '.join(docs[name].split())}\n" for name in names))
    return dsl.pipeline(name=NAME)(calltune_pipeline)
