"""The import contract: calltune's layers import downwards only. Any import counts, at module level or inside a
function: a function-local import hides a cycle or an upward dependency from the interpreter, not from a reader.

A module may import its own layer (without cycles) and the layers of lower tiers; a layer of the same tier is
sideways, and forbidden. The backend families are placed one by one: thin clients sit under the runtime, and the
generators that run a local model (with their factory) above it (../shared/DESIGN.md's map says why).
"""
import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"calltune": ROOT / "calltune", "calltune.components": ROOT / "components",
            "calltune.pipelines": ROOT / "pipelines"}
CLIENTS = ("retry", "genai", "resources", "registry_base", "sqlite_registry", "secret_manager", "registry",
           "translator_base", "local_translate", "google_translate", "translators", "generator_base",
           "openai_generator", "gemini_generator", "vertex_endpoint")
LOCAL_MODEL_BACKENDS = ("local_generator", "generators")
# Bottom to top; the layers of one tier may not import each other.
TIERS = [
    {"config": ["calltune.config"]},
    {"core": ["calltune.core"]},
    {"conversation": ["calltune.conversation"],
     "backends: clients": ["calltune.backends"] + [f"calltune.backends.{m}" for m in CLIENTS]},
    {"runtime": ["calltune.runtime"]},
    {"backends: local models": [f"calltune.backends.{m}" for m in LOCAL_MODEL_BACKENDS]},
    {"data": ["calltune.data"], "release": ["calltune.release"]},
    {"evaluation": ["calltune.evaluation"]},
    {"training": ["calltune.training"], "coaching": ["calltune.coaching"]},
    {"apps": ["calltune.apps"], "pipeline": ["calltune.pipeline", "calltune.components", "calltune.pipelines"]},
    {"cli": ["calltune.cli", "calltune"]},
]


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, at any level (`from calltune import x` names the submodule x)."""
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                edges.add(name)
    return edges


@functools.cache
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {n for n in imports(p, set(mods)) if n != m and not m.startswith(n + ".")} for m, p in mods.items()}


def layer_of(module: str, tiers=TIERS) -> tuple[int, str]:
    """(tier, layer) of a module: the layer whose longest prefix names it."""
    best = None
    for tier, layers in enumerate(tiers):
        for layer, prefixes in layers.items():
            for prefix in prefixes:
                if module == prefix or module.startswith(prefix + "."):
                    if best is None or len(prefix) > best[0]:
                        best = (len(prefix), tier, layer)
    if best is None:
        raise LookupError(f"{module} is in no layer: place it in TIERS")
    return best[1], best[2]


def violations(edges: dict[str, set[str]], tiers=TIERS) -> list[str]:
    """Every import that goes up a tier or sideways to another layer of the same tier."""
    found = []
    for module, targets in sorted(edges.items()):
        tier, layer = layer_of(module, tiers)
        for target in sorted(targets):
            t_tier, t_layer = layer_of(target, tiers)
            if t_tier > tier:
                found.append(f"{module} ({layer}) imports {target} ({t_layer}): up")
            elif t_tier == tier and t_layer != layer:
                found.append(f"{module} ({layer}) imports {target} ({t_layer}): sideways")
    return found


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(group)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_sits_in_a_layer():
    for module in graph():
        layer_of(module)


def test_imports_go_down_the_layers_only():
    assert violations(graph()) == []


def test_no_import_cycle_among_calltune_modules():
    assert [sorted(c) for c in cycles(graph())] == []


def test_the_top_of_calltune_holds_only_the_cli_the_config_and_the_layer_folders():
    flat = {p.name for p in (ROOT / "calltune").glob("*.py")}
    assert flat == {"__init__.py", "cli.py", "config.py"}
    folders = {p.name for p in (ROOT / "calltune").iterdir() if p.is_dir() and p.name != "__pycache__"}
    named = {prefix.split(".")[1] for layers in TIERS for prefixes in layers.values() for prefix in prefixes
             if prefix.count(".") >= 1 and prefix.split(".")[0] == "calltune" and "." not in prefix[9:]}
    assert folders == named - {"cli", "config", "components", "pipelines"}


# ---- the contract can fail ----

def test_a_planted_upward_import_fails_the_contract(tmp_path):
    """A runtime module that imports the evaluation layer (even inside a function) is reported as going up."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from calltune.evaluation.metrics import mean\n    return mean\n")
    edges = dict(graph())
    edges["calltune.runtime.planted"] = imports(planted, set(edges))
    assert violations(edges) == ["calltune.runtime.planted (runtime) imports calltune.evaluation.metrics (evaluation): up"]


def test_a_sideways_import_and_a_cycle_fail_the_contract():
    edges = {**graph(), "calltune.data.ingest": graph()["calltune.data.ingest"] | {"calltune.release.store"}}
    assert "calltune.data.ingest (data) imports calltune.release.store (release): sideways" in violations(edges)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_a_module_outside_every_layer_is_refused():
    with pytest.raises(LookupError, match="calltune_extra.x is in no layer"):
        layer_of("calltune_extra.x")


def test_the_contract_sees_function_level_imports():
    """`load_responder` imports the Vertex chat client only inside the function: the graph still has the edge."""
    assert "calltune.backends.vertex_endpoint" in graph()["calltune.apps.serve.watcher"]
