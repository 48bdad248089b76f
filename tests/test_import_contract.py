"""The import contract: calltune's modules import each other one way. Any import, at module level or inside a
function, counts: a function-local import hides a cycle from the interpreter, not from a reader."""
import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"calltune": ROOT / "calltune", "calltune.components": ROOT / "components",
            "calltune.pipelines": ROOT / "pipelines"}
# The model runtime sits under training, evaluation and the apps: it may use only these.
RUNTIME_MAY_IMPORT = {"calltune.config", "calltune.io", "calltune.render", "calltune.schema", "calltune.turns",
                      "calltune.models", "calltune.backends.genai", "calltune.backends.vertex_endpoint"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                # `from calltune import x` names the package; its submodule x is the edge, found above.
                if name and name != module and not module.startswith(name + ".") and name != "calltune":
                    edges[module].add(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
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


def test_no_import_cycle_among_calltune_modules():
    found = [sorted(c) for c in cycles(graph())]
    assert found == [], f"import cycles: {found}"


def test_the_model_runtime_imports_only_what_lies_below_it():
    edges = graph()
    runtime = {m for m in edges if m.startswith("calltune.runtime")}
    crossing = {m: sorted(edges[m] - runtime - RUNTIME_MAY_IMPORT) for m in runtime}
    assert {m: e for m, e in crossing.items() if e} == {}


def test_training_evaluation_and_apps_share_model_work_only_through_the_runtime():
    edges = graph()
    forbidden = {  # the crossings the runtime replaced (issue 12)
        "calltune.evaluate": {"calltune.tune", "calltune.seq2seq"},
        "calltune.infer": {"calltune.serve", "calltune.deploy", "calltune.tune", "calltune.seq2seq"},
        "calltune.models": {"calltune.seq2seq", "calltune.tune"},
        "calltune.seq2seq": {"calltune.infer", "calltune.tune"},
        "calltune.chat": {"calltune.serve", "calltune.infer"},
        "calltune.serve": {"calltune.chat", "calltune.infer", "calltune.tune", "calltune.evaluate"},
    }
    assert {m: sorted(edges[m] & bad) for m, bad in forbidden.items() if edges[m] & bad} == {}


def test_the_contract_sees_function_level_imports():
    """The graph counts an import inside a function: the cycle check is not blind to hidden cycles."""
    edges = graph()
    assert "calltune.deploy" in edges["calltune.serve"]  # imported only inside load_responder
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
