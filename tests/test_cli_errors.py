"""The command line as a careless user meets it: overrides anywhere after the subcommand, one-line errors (exit 2
for usage, 1 for a failure), config values out of bounds refused, and secret payloads never printed."""
from __future__ import annotations

from contextlib import closing

import pytest

from calltune.backends.registry import open_registry
from calltune.cli import main
from calltune.config import ConfigError, DeployConfig, load_config


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("calltune: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_overrides_are_taken_before_and_after_options(tmp_path, capsys):
    state = tmp_path / "state"
    with closing(open_registry(DeployConfig(), state)) as reg:
        reg.add_version("other", b"file:///m")
    for argv in (["secrets", "--secret", "other", f"state_dir={state}"],
                 ["secrets", f"state_dir={state}", "--secret", "other"],
                 ["secrets", "deploy.secret_id=x", "--secret", "other", f"state_dir={state}"]):
        assert main(argv) == 0, capsys.readouterr().err
        assert "1  ENABLED" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["rollback", "--bogus"], "unrecognized arguments: --bogus"),
    (["rollback", "--to", "two"], "argument --to: invalid int value: 'two'"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["rollback", "evaluate.threshold"], "override 'evaluate.threshold' is not key=value"),
    (["rollback", "evaluate.threshold=5"], "override 'evaluate.threshold=5': evaluate.threshold: Input should be less than or equal to 1"),
    (["rollback", "evaluate.threshold=-1"], "override 'evaluate.threshold=-1': evaluate.threshold: Input should be greater than or equal to 0"),
    (["rollback", "evaluate.threshold=.nan"], "override 'evaluate.threshold=.nan': evaluate.threshold: Input should be a finite number"),
    (["rollback", "tune.epochs=.inf"], "override 'tune.epochs=.inf': tune.epochs: Input should be a finite number"),
    (["rollback", "state_dir="], "override 'state_dir=': state_dir: Value error, is empty; name a folder"),
])
def test_usage_errors_are_one_line_with_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in one_line_error(capsys)


def test_two_invalid_fields_are_named_in_the_same_line(capsys):
    assert main(["secrets", "evaluate.threshold=1.5", "tune.learning_rate=.inf"]) == 2
    err = one_line_error(capsys)
    assert "evaluate.threshold=1.5" in err and "override 'tune.learning_rate=.inf': tune.learning_rate: Input should be a finite number" in err


def test_bounds_hold_in_yaml_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("state_dir: '  '\nevaluate: {threshold: 1.0}\n")
    with pytest.raises(ConfigError, match="state_dir"):
        load_config(path)
    assert load_config(None, ["evaluate.threshold=1", "evaluate.threshold=0"]).evaluate.threshold == 0


def test_a_failure_is_one_line_with_exit_1(tmp_path, capsys):
    assert main(["rollback", f"state_dir={tmp_path}"]) == 1
    assert "secret 'llm-endpoint' not found" in one_line_error(capsys)


def test_a_secret_payload_is_never_printed(tmp_path, capsys):
    payload = "gs://private-bucket/model-7f3a9c"
    with closing(open_registry(DeployConfig(), tmp_path)) as reg:
        reg.add_version("llm-endpoint", payload.encode())
    assert main(["chat", f"state_dir={tmp_path}"]) == 1
    err = one_line_error(capsys)
    assert "not a local file://" in err and "private-bucket" not in err and "7f3a9c" not in err


def test_a_programming_error_is_not_dressed_as_a_one_line_failure(tmp_path, monkeypatch):
    """A KeyError or IndexError inside a command is a bug: it keeps its traceback (only the registry's own lookup
    errors, like an unknown secret, become one line)."""
    import calltune.cli as cli

    def broken(args):
        return {}["missing"]

    monkeypatch.setattr(cli, "cmd_secrets", broken)
    with pytest.raises(KeyError, match="missing"):
        main(["secrets", f"state_dir={tmp_path}"])


@pytest.mark.parametrize("command", [["config", "--show"], ["prepare", "--out", "prepared"], ["secrets"]])
def test_a_state_dir_that_is_a_file_is_refused_by_the_config(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    assert main([*command, "state_dir=afile"]) == 2
    assert "state_dir: Value error, afile is a file; name a folder" in one_line_error(capsys)
