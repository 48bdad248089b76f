"""The backends' import contract: each family is a base module (protocol and errors), implementations that import
only the base (and the shared retry, genai and resource-name helpers), and a factory that imports the implementations. No cycles."""
import ast
from pathlib import Path

BACKENDS = Path(__file__).resolve().parents[1] / "calltune" / "backends"
SHARED = {"retry", "genai", "resources"}
FAMILIES = {  # base: implementations (the factory is the module that imports them)
    "registry_base": {"sqlite_registry", "secret_manager"},
    "translator_base": {"local_translate", "google_translate"},
    "generator_base": {"openai_generator", "gemini_generator", "local_generator"},
}


def backend_imports() -> dict[str, set[str]]:
    """Module -> the calltune.backends modules it imports, at any level (a function-local import counts)."""
    found = {}
    for path in BACKENDS.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("calltune.backends."):
                names.add(node.module.split(".")[2])
            elif isinstance(node, ast.ImportFrom) and node.module == "calltune.backends":  # a module, or a name
                names |= {a.name for a in node.names if (BACKENDS / f"{a.name}.py").is_file()}
            elif isinstance(node, ast.Import):
                names |= {a.name.split(".")[2] for a in node.names if a.name.startswith("calltune.backends.")}
        found[path.stem] = names
    return found


def test_no_import_cycle_among_backends():
    edges = backend_imports()

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))

    assert [m for m in edges if reaches(m, m, {m})] == []


def test_bases_and_implementations_import_downward_only():
    edges = backend_imports()
    for base, impls in FAMILIES.items():
        assert edges[base] <= SHARED, base
        for impl in impls:
            assert edges[impl] <= SHARED | {base}, impl


def test_the_contract_sees_imports_inside_functions():
    """open_registry imports secret_manager only inside the function: the contract still sees it."""
    edges = backend_imports()
    assert "registry_base" in edges["secret_manager"] and "secret_manager" in edges["registry"]
