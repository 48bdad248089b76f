"""benchmarks/gpu_check.sh on the device tool's GPU image: every module its steps import is on the image
(benchmarks/gpu_image.txt) or in the carried wheels (benchmarks/gpu_bundle.txt) at a version calltune accepts, so that
a new import in the tuner that the image lacks fails here, not in the GPU machine's few minutes. What travels is what
was tested: the bundle pins the lock's versions, the TRL anchor and the HF baseline are ../shared/bench's own, and the
stand-in model is the bundled model's shape with its tokenizer. (`gpu_check.sh --rehearse` runs the steps themselves.)"""
import importlib.util
import json
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCH = ROOT.parent / "shared" / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu = _load("gpu_imports")
IMAGE, BUNDLE = gpu.read_pins(gpu.IMAGE), gpu.read_pins(gpu.BUNDLE)


def problems(steps=None, bundle=BUNDLE):
    return gpu.check_imports(steps or gpu.step_imports(), IMAGE, bundle, gpu.calltune_requirements())


def test_every_module_the_gpu_steps_import_is_on_the_image_or_bundled():
    assert problems() == []
    assert all(dist in IMAGE or dist in BUNDLE for dist, _ in gpu.UNSEEN.values())


def test_a_new_import_in_the_tuner_that_the_image_lacks_fails(tmp_path, monkeypatch):
    """The tune step reaches calltune.training.lora; an import added there of a package neither the image nor the
    bundle holds (openai: installed here, as calltune's synth extra) is reported with its file and line."""
    lora = gpu.module_files()["calltune.training.lora"]
    planted = tmp_path / "lora.py"
    planted.write_text(lora.read_text(encoding="utf-8") + "\n\ndef _client():\n    import openai\n")
    files = gpu.module_files()
    monkeypatch.setattr(gpu, "module_files", lambda: files | {"calltune.training.lora": planted})
    found = problems()
    assert len(found) == 1 and f"{planted}:" in found[0]
    assert found[0].endswith("openai: openai is neither on the image (gpu_image.txt) nor bundled (gpu_bundle.txt)")


def test_a_package_the_image_holds_at_a_version_calltune_cannot_use_must_be_bundled():
    """The image's transformers is 5.17; calltune needs >= 5.24 (pyproject.toml)."""
    found = problems(bundle={n: v for n, v in BUNDLE.items() if n != "transformers"})
    assert found and all(p.endswith("calltune needs transformers<6,>=5.24, the image has 5.17.0: bundle it")
                         for p in found)


def test_each_import_said_not_to_run_sits_in_a_function_and_would_fail_the_check():
    """NOT_RUN stays true and short: every entry names imports that exist, run only when their function does,
    and that the check would refuse without the entry."""
    files = gpu.module_files()
    unpruned = problems(gpu.step_imports(not_run={}))
    for module, packages in gpu.NOT_RUN.items():
        for top in packages:
            found = [i for i in gpu.imports_in(files[module], module) if i.module.split(".")[0] == top]
            assert found and all(i.in_function for i in found), (module, top)
            assert any(p.startswith(f"{i.where}:") for i in found for p in unpruned), (module, top)


def test_the_bundle_holds_the_versions_ci_tests():
    lock = gpu.read_pins(ROOT / "lock" / "requirements.txt")
    gpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    pinned = lock | {n: v for n, _, v in (line.partition("==") for line in gpu_extra)}
    assert {name: pinned.get(name) for name in BUNDLE} == BUNDLE


def test_the_preflight_names_a_missing_module_and_where_the_steps_import_it(capsys):
    missing = gpu.Import("calltune_absent_package.kernels", ("fused",), "calltune/training/lora.py:7", "", True)
    assert gpu.preflight([missing], cuda=False) == 1
    out = capsys.readouterr().out
    assert ("MISSING calltune_absent_package.kernels (fused), for calltune/training/lora.py:7: ModuleNotFoundError: "
            "No module named 'calltune_absent_package'") in out
    assert "preflight: 1 import(s) would fail in the steps" in out


@pytest.mark.skipif(not SHARED_BENCH.is_dir(), reason="../shared/bench is not available")
@pytest.mark.parametrize("name", ["trl_sft_anchor.py", "lora_sft_baseline.py"])
def test_the_anchor_and_the_baseline_that_travel_are_the_shared_ones(name):
    assert (ROOT / "benchmarks" / "shared_bench" / name).read_bytes() == (SHARED_BENCH / name).read_bytes()


def test_the_stand_in_model_has_the_bundled_models_shape_and_tokenizer(tmp_path):
    from calltune.runtime.loading import load_model

    shape = json.loads((ROOT / "benchmarks" / "models" / "smollm2-135m-instruct" / "config.json").read_text())
    assert (shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]) == (576, 30, 49152)
    _load("random_model").random_model(tmp_path, tiny=True)
    model, tokenizer = load_model(tmp_path)
    assert model.config.vocab_size == len(tokenizer) == 49152
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Bom dia"}], add_generation_prompt=True)
    assert tokenizer.decode(prompt["input_ids"] if isinstance(prompt, dict) else prompt).endswith(
        "<|im_start|>user\nBom dia<|im_end|>\n<|im_start|>assistant\n")
