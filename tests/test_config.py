import pytest

from calltune.config import ConfigError, TuneConfig, load_config


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\ntune:\n  lora_r: 4\n  target_modules: [q_proj]\ntranslate:\n  backend: none\n")
    cfg = load_config(path, ["tune.lora_r=8", "evaluate.threshold=0.55", "data.input=calls.csv"])
    assert cfg.seed == 7
    assert cfg.tune.lora_r == 8                      # override beats the file
    assert cfg.tune.target_modules == ["q_proj"]     # file beats the default
    assert cfg.evaluate.threshold == 0.55
    assert cfg.translate.backend == "none"
    assert cfg.data.input == "calls.csv"


def test_a_bare_off_or_on_is_the_word_not_a_boolean(tmp_path):
    # YAML 1.1 reads off/on as booleans; the choices that are words take them back as written.
    path = tmp_path / "c.yaml"
    path.write_text("tune:\n  compile: on\nsimulate:\n  adversarial: off\n")
    assert (load_config(path).tune.compile, load_config(path).simulate.adversarial) == ("on", "off")
    cfg = load_config(None, ["tune.compile=off", "simulate.adversarial=off"])
    assert (cfg.tune.compile, cfg.simulate.adversarial) == ("off", "off")
    with pytest.raises(ConfigError, match="simulate.adversarial"):  # on is no choice there
        load_config(None, ["simulate.adversarial=on"])


@pytest.mark.parametrize("override, needle", [
    ("tune.lora_rank=4", "lora_rank"),             # unknown field
    ("translate.backend=klingon", "backend"),      # not one of the choices
    ("sample.test_fraction=2", "test_fraction"),   # out of range
    ("tune", "key=value"),                          # not an override at all
])
def test_bad_overrides_are_named(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("tune: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


def test_pipeline_parameters_cover_every_field_with_description():
    cfg = load_config(None, ["tune.epochs=2"])
    params = cfg.pipeline_params()
    signature, docs = cfg.pipeline_signature()
    assert list(signature.parameters) == list(params)
    assert signature.parameters["tune_epochs"].default == 2.0
    assert signature.parameters["tune_target_modules"].annotation is list
    assert signature.parameters["translate_backend"].annotation is str
    assert all(docs[name] for name in params), [n for n in params if not docs[n]]
    # Rebuilding a section from flat parameters gives the same section back.
    assert TuneConfig.from_params(params) == cfg.tune


def test_repo_default_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "local.yaml")
    assert cfg.evaluate.threshold == 0.4
    assert cfg.data.input == ""  # the bundled sample calls
