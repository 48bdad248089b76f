"""The benchmarks cannot silently fall behind the code: every script imports, every `calltune` name it imports
(inside its functions too, where a moved module would only fail at run time) exists, and every `--help` runs."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def calltune_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every `from calltune... import name` in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "calltune":
            found += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.split(".")[0] == "calltune"]
    return found


def test_there_are_benchmarks_to_check():
    assert len(SCRIPTS) >= 8


def missing_names(path: Path) -> list[str]:
    """The calltune modules and names `path` imports that do not exist."""
    missing = []
    for module, name in calltune_imports(path):
        try:
            found = importlib.import_module(module)
        except ImportError:
            missing.append(module)
            continue
        if name and not hasattr(found, name):
            try:
                importlib.import_module(f"{module}.{name}")  # `from package import submodule`
            except ImportError:
                missing.append(f"{module}.{name}")
    return missing


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_calltune_name_a_benchmark_imports_exists(script):
    assert missing_names(script) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_prints_its_help(script):
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                         cwd=BENCHMARKS.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout


def test_the_check_sees_a_moved_module_and_a_renamed_function(tmp_path):
    """A benchmark that still imports a module from before the layers moved, or a function by an old name."""
    stale = tmp_path / "stale.py"
    stale.write_text("def main():\n    from calltune.tune import make_trainer\n"
                     "    from calltune.training.lora import make_trainer, train_lora_quickly\n")
    assert missing_names(stale) == ["calltune.tune", "calltune.training.lora.train_lora_quickly"]
