"""Base model conversion (cached, complete, safetensors only), weight hashing and local folders."""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from calltune.runtime.loading import BASE_CARD, MODEL_CARD, load_model, resolve_base_model, weights_sha256

from conftest import BUNDLED_MODEL


def test_bundled_model_is_converted_once_to_a_safetensors_folder(base_model_state, base_model_dir):
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in base_model_dir.iterdir()}
    again = resolve_base_model(BUNDLED_MODEL, base_model_state)
    assert again == base_model_dir
    # cached: the same files, untouched (a second conversion would write a new folder and rename it in place)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in again.iterdir()} == before

    names = {p.name for p in base_model_dir.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".gguf"))]
    assert not [p for p in base_model_dir.parent.iterdir() if p.name.startswith(f".{BUNDLED_MODEL}.") and p.is_dir()]
    config = json.loads((base_model_dir / "config.json").read_text())
    assert "quantization_config" not in config  # loads as a plain fp32 model: Trainer accepts it
    card = json.loads((base_model_dir / BASE_CARD).read_text())
    assert card["weights_sha256"] == weights_sha256(base_model_dir)


def test_converted_tokenizer_renders_chatml(base_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    text = tokenizer.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
                                         tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"


def test_local_folder_is_used_as_is_and_a_missing_one_is_named(base_model_dir, tmp_path):
    assert resolve_base_model(str(base_model_dir), tmp_path) == base_model_dir.resolve()
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_base_model(str(tmp_path / "no-such-model"), tmp_path)


def test_weights_sha256_follows_the_bytes(tmp_path):
    save_file({"w": torch.zeros(3)}, tmp_path / "a.safetensors")
    first = weights_sha256(tmp_path)
    assert first == weights_sha256(tmp_path)
    save_file({"w": torch.ones(3)}, tmp_path / "a.safetensors")
    assert weights_sha256(tmp_path) != first
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        weights_sha256(tmp_path / "missing")


def test_a_tuned_model_refuses_a_base_with_other_weights(tuned_model, tmp_path):
    out, _ = tuned_model
    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    card = json.loads((copy / MODEL_CARD).read_text())
    card["base_sha256"] = "0" * 64
    (copy / MODEL_CARD).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="other weights"):
        load_model(copy)
