"""Components cannot drift from the config: each one that rebuilds a config section from its parameters declares
every field of it, or names the field in `left_out` (read from its source, so the list is the one that runs)."""
import ast
from pathlib import Path

import pytest

from calltune import config
from calltune.config import ConfigError, DeployConfig, EvaluateConfig, Section

COMPONENTS = Path(__file__).resolve().parents[1] / "components"


def section_calls() -> list[tuple[str, type[Section], set[str], set[str]]]:
    """(component, section, its parameters, left_out) for every `Section.from_params(...)` in a component."""
    found = []
    for path in sorted(COMPONENTS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            params = {a.arg for a in fn.args.args}
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_params":
                    left_out = next((ast.literal_eval(k.value) for k in node.keywords if k.arg == "left_out"), ())
                    found.append((fn.name, getattr(config, node.func.value.id), params, set(left_out)))
    return found


def test_every_component_declares_each_field_of_the_sections_it_rebuilds():
    calls = section_calls()
    assert len(calls) >= 17  # every step's component, some with several sections
    problems = []
    for component, section, params, left_out in calls:
        p = section.prefix + "_"
        declared = {name[len(p):] for name in params if name.startswith(p)}
        if missing := set(section.model_fields) - declared - left_out:
            problems.append(f"{component}: {section.__name__} misses {sorted(missing)}")
        if both := declared & left_out:
            problems.append(f"{component}: {section.__name__} declares and leaves out {sorted(both)}")
    assert problems == []


def test_what_the_gate_leaves_out_is_what_it_never_reads():
    import calltune.evaluation.gate as gate

    left = {(c, s.__name__): lo for c, s, _, lo in section_calls() if lo}
    assert left[("evaluate", "EvaluateConfig")] == {"model", "publish_uri"}  # resolve_model and batch_infer read them
    source = Path(gate.__file__).read_text(encoding="utf-8")
    assert [f for f in left[("gate", "EvaluateConfig")] if f"cfg.{f}" in source] == []
    assert "cfg.threshold" in source  # the check looks where the gate reads its settings


def test_a_component_that_forgets_a_field_fails_instead_of_taking_the_default():
    params = {f"deploy_{k}": v for k, v in DeployConfig().model_dump().items() if k != "secret_id"}
    with pytest.raises(ConfigError, match="passes no deploy_secret_id"):
        DeployConfig.from_params(params)
    assert DeployConfig.from_params(params, left_out=("secret_id",)).secret_id == "llm-endpoint"
    with pytest.raises(ConfigError, match="left_out names no evaluate field: nothing"):
        EvaluateConfig.from_params({}, left_out=("nothing",))
