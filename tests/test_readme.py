"""The README cannot lie: its runnable examples run, the output it quotes is checked, and every config field, CLI
flag and file it names in backticks exists.

Blocks are found, not listed: a fenced block's info string carries its marks after the language (GitHub reads only
the first word): ```` ```bash runnable ```` runs line by line in a fresh folder whose HOME holds the state `make run`
leaves (one promoted model, version 1); ```` ```bash runnable serve ```` runs with `calltune serve` answering on the
README's port (a loopback server on the session's tiny model, the port rewritten); ```` ```bash gcloud ```` needs
Google Cloud, so it is checked for syntax (bash -n) and, where gcloud is installed, its flags against `--help`.
Every ```` ```python ```` block runs. A command's trailing comment that holds JSON is output the README promises:
the command's JSON output must hold those keys with those values.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml

from calltune.cli import build_parser
from calltune.config import Config, GcpConfig, Section, describe_fields

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
COMMENT = re.compile(r"\s{2,}#\s?(.*)$")  # the house style: a command, two spaces or more, then its comment
SECTIONS = [name for name, f in Config.model_fields.items() if isinstance(f.annotation, type)
            and issubclass(f.annotation, Section)]
FILE_NAME = re.compile(r"^[\w.<>/-]+\.(py|ya?ml|json|jsonl|sqlite|html|png|md|txt|sh|csv|toml|parquet)$")


@dataclass
class Block:
    lang: str
    marks: set[str]
    text: str
    line: int


def blocks(text: str = README) -> list[Block]:
    out = []
    for m in FENCE.finditer(text):
        lang, *marks = m[1].split() or [""]
        out.append(Block(lang, set(marks), m[2], text.count("\n", 0, m.start()) + 1))
    return out


def commands(block: Block) -> list[tuple[str, str]]:
    """(command, its trailing comment) per logical line: continuation lines and open quotes joined, comment lines
    dropped."""
    out, pending = [], ""
    for raw in block.text.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        m = COMMENT.search(line)
        command, comment = (line[:m.start()].strip(), m[1].strip()) if m else (line, "")
        if not _closed(command):  # a quoted JSON body over several lines
            pending = line + "\n"
            continue
        pending = ""
        if command and not command.startswith("#"):
            out.append((command, comment))
    return out


def _closed(command: str) -> bool:
    try:
        shlex.split(command)
        return True
    except ValueError:
        return False


def spans(text: str = README) -> list[str]:
    """Inline code spans outside the fenced blocks."""
    return re.findall(r"`([^`\n]+)`", FENCE.sub("", text))


# ---- the checks: each returns the problems it finds ----
@cache
def _compile_parser():
    spec = importlib.util.spec_from_file_location("calltune_compile", ROOT / "compile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


FIELDS = {f["name"] for f in describe_fields()}


def field_problem(name: str) -> str | None:
    """A config field's name (`tune.epochs`, `judge.*`, `state_dir`): None when Config has it."""
    section, _, field = name.partition(".")
    if name in FIELDS or (section in SECTIONS and field == "*"):
        return None
    return f"no config field {name}"


def cli_problems(command: str) -> list[str]:
    """A `calltune ...` or `python compile.py ...` line: its subcommand and options exist, its overrides name fields."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return [f"{command}: {exc}"]
    while words and re.match(r"^\w+=", words[0]):  # VAR=value before the command
        words = words[1:]
    if words[:1] in (["calltune"], [".venv/bin/calltune"]):
        if len(words) > 1 and "<" in words[1]:  # `calltune <command> --help`
            return []
        sub, args = build_parser(), words[1:]
        while sub._subparsers is not None:  # down the commands and their actions (`calltune users add`)
            sub = sub._subparsers._group_actions[0].choices.get(args[0] if args else "")
            if sub is None:
                return [f"{command}: no such calltune command"]
            args = args[1:]
    elif words[:2] in (["python", "compile.py"], [".venv/bin/python", "compile.py"]):
        sub, args = _compile_parser(), words[2:]
    elif script := next((w for w in words[:2] if w.startswith("benchmarks/")), None):
        # a benchmark script's options are spelled in its source (argparse or the shell script's case)
        if not (ROOT / script).is_file():
            return [f"{command}: no script {script}"]
        source = (ROOT / script).read_text(encoding="utf-8")
        return [f"{command}: {script} has no option {w.split('=')[0]}" for w in words
                if w.startswith("--") and not re.search(re.escape(w.split("=")[0]) + r"(?![\w-])", source)]
    else:
        return []
    problems = []
    for arg in args:
        if arg.startswith("-"):
            if arg.split("=")[0] not in sub._option_string_actions:
                problems.append(f"{command}: no option {arg.split('=')[0]}")
        elif re.match(r"^[a-z_]+(\.[a-z_]+)?=", arg) and (p := field_problem(arg.split("=")[0])):
            problems.append(f"{command}: {p}")
    return problems


@cache
def _known_options() -> frozenset[str]:
    """Options a bare `--flag` span may name: calltune's (any command), compile.py's and the benchmark scripts'."""
    parsers, todo = [_compile_parser()], [build_parser()]
    while todo:  # every command and every command's actions
        parser = todo.pop()
        parsers.append(parser)
        todo += parser._subparsers._group_actions[0].choices.values() if parser._subparsers else []
    scripts = [p for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh")]
    return frozenset({o for p in parsers for o in p._option_string_actions}
                     | {w for p in scripts for w in re.findall(r"--[\w-]+", p.read_text(encoding="utf-8"))})


@cache
def _names_in_code() -> frozenset[str]:
    """Every name the code, scripts, Makefile and .gitignore spell: what a run writes (`summary.json`,
    `quarantine.jsonl`, `tensorboard/`...) and what the tools make (`.venv/`, `out/test-artifacts/`)."""
    paths = [*(p for d in ("calltune", "components", "pipelines", "benchmarks", "tests") for p in (ROOT / d).rglob("*")
               if p.suffix in (".py", ".sh") and p != Path(__file__)), ROOT / "compile.py", ROOT / "Makefile",
             ROOT / ".gitignore"]  # this file plants wrong names
    return frozenset(w for p in paths for w in re.findall(r"[\w.-]+", p.read_text(encoding="utf-8")))


@cache
def _tree() -> frozenset[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return frozenset(files) | {str(p) for f in files for p in Path(f).parents}


def file_problem(name: str) -> str | None:
    """A file or folder named in backticks: a path in the tree, else each of its parts a name the code spells (a
    run's outputs). Placeholders (<time>, $VAR, *) and places outside the checkout (gs://, /gcs/, ~, ../shared)
    are not checked."""
    if re.search(r"[<>*$~]|\.\.\.|^(gs:|/|\.\./)|^runs/", name):
        return None
    parts = [p for p in name.strip("/").split("/") if p]
    if name.strip("/") in _tree() or all(p in _names_in_code() for p in parts):
        return None
    return f"no file {name} in the tree or the code's outputs"


def gcloud_options(text: str) -> frozenset[str]:
    """Options the text's gcloud blocks use (test_google_cloud_blocks_are_marked_and_parse checks them against
    gcloud's own --help where it is installed): prose may name them too."""
    return frozenset(o for b in blocks(text) if "gcloud" in b.marks for o in re.findall(r"(?<![\w-])--[\w-]+", b.text))


def readme_problems(text: str = README) -> list[str]:
    """Every field, CLI flag and file the text names in backticks or in a shell block."""
    problems = []
    for span in spans(text):
        if span.startswith(("calltune ", "python compile.py")):
            problems += cli_problems(span)
        elif span.startswith("--") and span.split()[0] not in _known_options() | gcloud_options(text):
            problems.append(f"{span}: no such option of calltune, compile.py, a benchmark script or a gcloud block")
        elif " " not in span and (FILE_NAME.match(span) or re.fullmatch(r"[\w.-]+(/[\w.<>-]+)*/", span)):
            problems += [p for p in [file_problem(span)] if p]
        elif re.fullmatch(r"[a-z_]+\.([a-z_]+|\*)(=\S*)?", span) and span.split(".")[0] in SECTIONS:
            problems += [p for p in [field_problem(span.split("=")[0])] if p]
    for block in blocks(text):
        if block.lang == "bash":
            for command, _ in commands(block):
                problems += cli_problems(command)
    return problems


# ---- the checks prove they can fail ----
def test_a_wrong_flag_is_caught():
    assert readme_problems("Start it with `calltune serve --prot 8080`.") == [
        "calltune serve --prot 8080: no option --prot"]
    assert readme_problems("```bash\n.venv/bin/python benchmarks/score_reply.py --example 8\n```\n") == [
        ".venv/bin/python benchmarks/score_reply.py --example 8: benchmarks/score_reply.py has no option --example"]
    assert readme_problems("Add `--verbos` for kfp's log.") == [
        "--verbos: no such option of calltune, compile.py, a benchmark script or a gcloud block"]
    assert readme_problems("```bash\ncalltune secrets --disabel 1   # off\n```\n") == [
        "calltune secrets --disabel 1: no option --disabel"]


def test_a_wrong_config_field_is_caught():
    assert readme_problems("Set `tune.epoch` to 3.") == ["no config field tune.epoch"]
    assert readme_problems("```bash\ncalltune run tune.epoch=3\n```\n") == [
        "calltune run tune.epoch=3: no config field tune.epoch"]


def test_a_wrong_file_name_is_caught():
    assert readme_problems("It reads `configs/locall.yaml` and writes `summary.jsn.json`.") == [
        "no file configs/locall.yaml in the tree or the code's outputs",
        "no file summary.jsn.json in the tree or the code's outputs"]


def test_every_field_flag_and_file_the_readme_names_exists():
    assert readme_problems() == []


# ---- claims the code can compute ----
def test_the_configuration_section_lists_every_section_and_counts_the_pipeline_parameters():
    text = README[README.index("### Configuration"):README.index("## Serving")]
    listed = re.search(r"Sections: (.*?) plus `seed` and `state_dir`", text, re.S)[1]
    assert re.findall(r"`(\w+)`", listed) == SECTIONS
    shown, total = map(int, re.search(r"\((\d+) of the (\d+)\) becomes", text).groups())
    assert (shown, total) == (len(Config().pipeline_params()), len(FIELDS))
    assert [s for s in SECTIONS if not getattr(Config(), s).pipeline_parameters] == ["serve", "gcp"]


def test_the_console_form_count_is_the_compiled_templates():
    from calltune.config import load_config
    from calltune.pipeline.vertex import console_hidden

    cfg = load_config(ROOT / "configs" / "vertex.yaml", ["state_dir=/gcs/b/state"])
    shown, total = map(int, re.search(r"\((\d+) of the config's (\d+) pipeline parameters", README).groups())
    assert (shown, total) == (len(cfg.pipeline_params()) - len(console_hidden(cfg)), len(cfg.pipeline_params()))


def test_the_layout_names_every_module_and_folder():
    layout = next(b.text for b in blocks() if b.text.startswith("calltune/\n"))
    words = set(re.findall(r"[\w]+", layout))
    package = ROOT / "calltune"
    modules = {p.stem for p in package.rglob("*.py") if p.stem not in ("__init__", "sitecustomize")}
    folders = {p.name for p in package.rglob("*") if p.is_dir() and p.name != "__pycache__"
               and not p.name.endswith("egg-info") and any(p.iterdir())}
    assert sorted((modules | folders) - words) == []
    for top in re.findall(r"^([\w.]+/?)\s", layout, re.M):
        assert (ROOT / top).exists(), top


def test_the_gcp_yaml_shows_real_fields_with_their_defaults():
    block = next(b for b in blocks() if b.lang == "yaml" and b.text.startswith("gcp:"))
    shown = yaml.safe_load(block.text)["gcp"]
    assert shown == {k: getattr(GcpConfig(), k) for k in shown}


def test_every_yaml_block_reads_as_what_it_shows(tmp_path):
    """A config excerpt validates as a config; a scorecard loads as `coach.scorecard` would load it."""
    from calltune.coaching.scorecard import load_scorecard
    from calltune.config import load_config

    for block in (b for b in blocks() if b.lang == "yaml"):
        path = tmp_path / f"line{block.line}.yaml"
        path.write_text(block.text)
        data = yaml.safe_load(block.text)
        if "criteria" in data:
            assert load_scorecard(path).criteria, block.line
        elif set(data) & {*SECTIONS, "seed", "state_dir"}:
            load_config(path)


def test_make_format_runs_without_a_ruff_warning(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("x = 1\n")
    done = subprocess.run([str(Path(sys.executable).with_name("ruff")), "format", "--check", str(path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr


# ---- the Google Cloud blocks: syntax, and flags where the tool is here ----
GCLOUD = [b for b in blocks() if "gcloud" in b.marks]


def test_google_cloud_blocks_are_marked_and_parse():
    unmarked = [b.line for b in blocks() if b.lang == "bash" and "gcloud" not in b.marks
                and re.search(r"^\s*(gcloud|docker) ", b.text, re.M)]
    assert GCLOUD and unmarked == []
    for block in GCLOUD:
        done = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
        assert done.returncode == 0, f"README line {block.line}: {done.stderr}"


def _gcloud_help(group: tuple[str, ...]) -> str:
    return subprocess.run(["gcloud", *group, "--help"], capture_output=True, text=True,
                          env={**os.environ, "PAGER": "cat", "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}).stdout


@pytest.mark.skipif(not shutil.which("gcloud"), reason="gcloud is not installed")
def test_google_cloud_flags_exist_in_gcloud_help():
    from concurrent.futures import ThreadPoolExecutor

    lines = [words for block in GCLOUD for command, _ in commands(block)
             if (words := shlex.split(command))[:1] == ["gcloud"]]
    groups = {tuple(itertools.takewhile(lambda w: re.fullmatch(r"[a-z][a-z-]*", w), words[1:])) for words in lines}
    with ThreadPoolExecutor(4) as pool:  # each --help starts gcloud's Python: seconds
        helptext = dict(zip(groups, pool.map(_gcloud_help, groups)))
    for words in lines:
        group = tuple(itertools.takewhile(lambda w: re.fullmatch(r"[a-z][a-z-]*", w), words[1:]))
        for flag in {w.split("=")[0] for w in words if w.startswith("--")}:
            assert re.search(re.escape(flag) + r"(?![\w-])", helptext[group]), f"{' '.join(words)}: {flag}"


# ---- the runnable blocks, in order, on the state `make run` leaves ----
def promised(comment: str) -> dict | None:
    """The JSON a command's comment quotes, if any."""
    start = comment.find("{")
    if start < 0:
        return None
    try:
        return json.loads(comment[start:])
    except json.JSONDecodeError:
        return None


def holds(output: dict, expected: dict) -> bool:
    return all(k in output and (holds(output[k], v) if isinstance(v, dict) and isinstance(output[k], dict)
                                else output[k] == v) for k, v in expected.items())


def json_outputs(stdout: str) -> list[dict]:
    try:
        return [json.loads(stdout)]
    except json.JSONDecodeError:
        found = []
        for line in stdout.splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return [f for f in found if isinstance(f, dict)]


@pytest.fixture(scope="module")
def after_make_run(tmp_path_factory, tiny_chat_model):
    """A folder to paste into and a HOME whose ~/.calltune holds what `make run` leaves: one promoted model, as
    `llm-endpoint` version 1 (the session's tiny model: generating costs milliseconds)."""
    from calltune.backends.registry import open_registry
    from calltune.config import DeployConfig

    home = tmp_path_factory.mktemp("home")
    model = home / "model"  # the tiny model with SmolLM2's context (a rotary model: no weights change), as the
    shutil.copytree(tiny_chat_model, model)  # synthesis prompts need
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 8192}))
    with closing(open_registry(DeployConfig(), home / ".calltune")) as registry:
        registry.add_version("llm-endpoint", model.as_uri().encode())
    work = home / "calltune"
    work.mkdir()
    for name in ("configs", "compile.py"):
        (work / name).symlink_to(ROOT / name)
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)
    return work, env, home / ".calltune"


def on_port(text: str, port: str) -> str:
    """The README's server address (`calltune serve`'s default) made the test server's."""
    return re.sub(r"(localhost|127\.0\.0\.1):8000", f"127.0.0.1:{port}", text)


def run_block(block: Block, work: Path, env: dict, port: str) -> None:
    for command, comment in commands(block):
        if command.startswith("calltune serve") or " calltune serve" in command:
            continue  # the test's server stands for it
        done = subprocess.run(["bash", "-c", on_port(command, port)], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        where = f"README line {block.line}: {command}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        assert done.returncode == 0, where
        expected, outputs = promised(comment), json_outputs(done.stdout)
        if expected is not None:
            assert any(holds(o, expected) for o in outputs), where
        else:
            assert not any("error" in o for o in outputs), where


RUNNABLE = [b for b in blocks() if "runnable" in b.marks or b.lang == "python"]


def test_the_readme_marks_runnable_blocks():
    assert any("serve" in b.marks for b in RUNNABLE) and any(b.lang == "python" for b in RUNNABLE)


def test_every_runnable_block_runs_in_order_and_prints_what_the_readme_says(after_make_run):
    from calltune.apps.serve.app import serving
    from calltune.config import DeployConfig, ServeConfig

    if not shutil.which("curl"):
        if os.environ.get("CI"):
            pytest.fail("CI: no curl; `make system` installs it")
        pytest.skip("no curl (apt-get install curl)")
    work, env, state = after_make_run
    with serving(ServeConfig(port=0), DeployConfig(), state) as url:
        port = url.rsplit(":", 1)[1]
        for block in RUNNABLE:
            if block.lang == "python":
                done = subprocess.run([sys.executable, "-c", on_port(block.text, port)], cwd=work, env=env,
                                      capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, f"README line {block.line}: {done.stderr[-2000:]}"
            else:
                run_block(block, work, env, port)
    # what the blocks promise in prose: the prepared folder and the synthetic splits are there
    assert json.loads((work / "prepared" / "report.json").read_text())["quarantined"] == 4
    assert (work / "augmented" / "train.examples.jsonl").is_file()


# ---- measured figures: the README quotes benchmarks/figures.json, which the measuring script writes ----
FIGURES = json.loads((ROOT / "benchmarks" / "figures.json").read_text())


def test_every_bundled_run_figure_the_readme_quotes_is_the_recorded_one():
    run = FIGURES["bundled_run"]
    tuned, base = run["tuned_accuracy"], run["base_accuracy"]
    quoted = re.search(r"reached (\S+) token accuracy \(95% interval (\S+) to (\S+)\) against the base model's "
                       r"(\d\.\d+)", " ".join(README.split()))
    assert quoted.groups() == (f"{tuned['value']:.4f}", f"{tuned['low']:.3f}", f"{tuned['high']:.3f}",
                               f"{base['value']:.3f}")
    minutes, seconds = divmod(run["wall_s"], 60)
    assert f"{minutes}:{seconds:02d} ({run['machine']};" in " ".join(README.split())
    assert run["promoted"] and "benchmarks/bundled_run.py --record" in README


@pytest.mark.slow
def test_the_bundled_run_reaches_the_recorded_accuracy(tmp_path):
    """`make run` again (about as long): its accuracy is the recorded one, up to another CPU's float rounding."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bundled_run import bundled_run

    measured, recorded = bundled_run(tmp_path / "run", tmp_path / "state"), FIGURES["bundled_run"]
    for model in ("tuned_accuracy", "base_accuracy"):
        assert measured[model]["value"] == pytest.approx(recorded[model]["value"], abs=0.01), model
    assert measured["promoted"] == recorded["promoted"]
