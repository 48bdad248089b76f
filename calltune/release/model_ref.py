"""Evaluation-only runs: the model `evaluate.model` names, turned into the model folder the pipeline's Model
artifact holds, so batch_infer, evaluate, the gate and deploy treat it exactly like a freshly tuned model.

References:
  a local folder            a tuned calltune model (peft adapter + calltune_model.json) or a plain Hugging Face
                            model folder (config.json + safetensors weights; evaluated as a base model)
  secret:latest, secret:N   the model in that version of deploy.secret_id, through deploy.registry: a file://
                            model-store folder, or a Vertex endpoint
  projects/P/locations/L/endpoints/E
                            a Vertex AI endpoint (e.g. a tuned Gemini model): a folder whose calltune_model.json
                            holds {"endpoint": ...}
A folder is copied whole, so the artifact has the same files, and so the same sha (calltune.runtime.loading.model_sha), as
the original: evaluate recognises the champion by it, and deploy finds the model-store entry it already has.
"""
from __future__ import annotations

import json
import shutil
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from calltune.backends.resources import ResourceName, spelled_as_resource
from calltune.config import DeployConfig
from calltune.core.io import write_json
from calltune.release.store import model_path_from_endpoint
from calltune.runtime.loading import MODEL_CARD, model_sha

SECRET_PREFIX = "secret:"
FORMS = "a model folder, secret:latest, secret:VERSION or projects/P/locations/L/endpoints/E"


class ModelRefError(ValueError):
    """A reference that names no usable model; the message names the reference and what is wrong."""


@dataclass(frozen=True)
class ModelRef:
    reference: str
    kind: str  # tuned | base | endpoint
    source: str  # the model folder, or the endpoint resource itself
    secret_version: int | None = None


def locate(reference: str, deploy: DeployConfig, state_dir: Path) -> ModelRef:
    """What `reference` names, checked without copying anything (the CLI calls it before starting a run)."""
    ref = reference.strip()
    if not ref:
        raise ModelRefError(f"evaluate.model is empty: an evaluation-only run needs {FORMS}")
    if ref.startswith(SECRET_PREFIX):
        return _from_secret(ref, deploy, state_dir)
    if spelled_as_resource(ref):
        if not ResourceName.parse(ref, "endpoints"):
            raise ModelRefError(f"evaluate.model={ref!r}: not a Vertex endpoint (projects/P/locations/L/endpoints/E)")
        return ModelRef(ref, "endpoint", ref)
    return _from_folder(ref, Path(ref).expanduser())


def _from_secret(ref: str, deploy: DeployConfig, state_dir: Path) -> ModelRef:
    from calltune.backends.registry import RegistryError, open_registry

    version = ref[len(SECRET_PREFIX):]
    if version != "latest" and not (version.isdigit() and int(version) > 0):
        raise ModelRefError(f"evaluate.model={ref!r}: the version must be 'latest' or a number from 1, "
                            f"e.g. secret:latest or secret:3")
    try:
        with closing(open_registry(deploy, state_dir, readonly=True)) as registry:
            number = registry.get_version(deploy.secret_id, version).version
            payload = registry.access(deploy.secret_id, number).decode("utf-8")
    except RegistryError as exc:
        raise ModelRefError(f"evaluate.model={ref!r}: {exc}") from exc
    where = f"evaluate.model={ref!r} (secret {deploy.secret_id} version {number})"
    if spelled_as_resource(payload):
        if not ResourceName.parse(payload, "endpoints"):
            raise ModelRefError(f"{where}: the version holds no Vertex endpoint projects/P/locations/L/endpoints/E")
        return ModelRef(ref, "endpoint", payload, number)
    try:
        folder = model_path_from_endpoint(payload)
    except (ValueError, FileNotFoundError) as exc:
        raise ModelRefError(f"{where}: {exc}") from exc
    return _from_folder(ref, folder, number)


def _from_folder(ref: str, folder: Path, secret_version: int | None = None) -> ModelRef:
    where = f"evaluate.model={ref!r}" + (f" ({folder})" if str(folder) != ref else "")
    if not folder.is_dir():
        raise ModelRefError(f"{where}: no such model folder; expected {FORMS}")
    card_path = folder / MODEL_CARD
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelRefError(f"{where}: {card_path} is not valid JSON ({exc})") from exc
        if not isinstance(card, dict):
            raise ModelRefError(f"{where}: {card_path} is not a JSON object")
        if card.get("endpoint"):
            return ModelRef(ref, "endpoint", str(folder.resolve()), secret_version)
        if not (folder / "adapter_config.json").is_file():
            raise ModelRefError(f"{where}: {MODEL_CARD} is there but adapter_config.json is missing: not a complete "
                                f"tuned model folder")
        base = card.get("base_model_path")
        if not base or not (Path(base) / "config.json").is_file():
            raise ModelRefError(f"{where}: {card_path} field base_model_path: base model folder {base!r} is missing")
        return ModelRef(ref, "tuned", str(folder.resolve()), secret_version)
    if not (folder / "config.json").is_file():
        raise ModelRefError(f"{where}: no config.json: neither a tuned calltune model ({MODEL_CARD}) nor a Hugging "
                            f"Face model folder")
    if not any(folder.glob("*.safetensors")):
        raise ModelRefError(f"{where}: no .safetensors weights (only safetensors are loaded, never pickles)")
    return ModelRef(ref, "base", str(folder.resolve()), secret_version)


def resolve_model(reference: str, out_dir: Path, deploy: DeployConfig, state_dir: Path) -> dict:
    """Write the model `reference` names into `out_dir` (a copy of its folder, or an endpoint's model card);
    returns what was evaluated: reference, kind, source, model_sha and, from a secret, secret_version."""
    ref = locate(reference, deploy, state_dir)
    out_dir = Path(out_dir)
    if ResourceName.parse(ref.source, "endpoints"):
        write_json(out_dir / MODEL_CARD, {"endpoint": ref.source})
    else:
        shutil.copytree(ref.source, out_dir, dirs_exist_ok=True)
    report = {k: v for k, v in asdict(ref).items() if v is not None}
    return {**report, "model_sha": model_sha(out_dir)}
