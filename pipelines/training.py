"""The calltune DAG, built by one factory from the shared components.

ingest -> translate -> turn-split -> sample -> tune -> evaluate -> dsl.If(accuracy >= threshold) -> deploy

Every config field is a pipeline parameter (`<section>_<field>`, see calltune.config) with its
default and description, and each component receives the parameters named in its signature.
"""
from __future__ import annotations

from typing import Literal

from kfp import dsl

from calltune import components as c
from calltune.config import Config

NAME = "calltune"
TARGETS = ("local",)


def _params_for(component, params: dict) -> dict:
    """The pipeline parameters a component asks for, by name."""
    return {name: params[name] for name in component.component_spec.inputs or {} if name in params}


def build_pipeline(target: Literal["local"] = "local", config: Config | None = None):
    """The pipeline for a target ("local" runs under kfp.local); parameter defaults come from `config`."""
    if target not in TARGETS:
        raise ValueError(f"unknown pipeline target {target!r}; expected one of {TARGETS}")
    signature, docs = (config or Config()).pipeline_signature()
    names = list(signature.parameters)

    def calltune_pipeline(*args):
        p = dict(zip(names, args))
        ingest = c.ingest(**_params_for(c.ingest, p))
        translated = c.translate(calls_in=ingest.outputs["calls"], **_params_for(c.translate, p))
        split = c.turn_split(calls=translated.outputs["calls"], **_params_for(c.turn_split, p))
        sample = c.sample(examples=split.outputs["examples"], **_params_for(c.sample, p))
        tune = c.tune(splits=sample.outputs["splits"], **_params_for(c.tune, p))
        evaluation = c.evaluate(model=tune.outputs["model"], splits=sample.outputs["splits"],
                                **_params_for(c.evaluate, p))
        with dsl.If(evaluation.outputs["Output"] >= p["evaluate_threshold"], name="accuracy-gate"):
            c.deploy(model=tune.outputs["model"], accuracy=evaluation.outputs["Output"],
                     run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **_params_for(c.deploy, p))

    calltune_pipeline.__signature__ = signature
    calltune_pipeline.__doc__ = (
        "Turns sales-call transcripts into a model that plays the customer, and promotes it when it is good enough.\n\n"
        "Args:\n" + "".join(f"    {name}: {' '.join(docs[name].split())}\n" for name in names))
    return dsl.pipeline(name=NAME)(calltune_pipeline)
