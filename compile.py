"""Compile the calltune pipeline to a KFP YAML file.

    python compile.py                                   # -> build/calltune-local.yaml
    python compile.py --config configs/local.yaml --output my.yaml

Parameter defaults come from the config, so a rerun from the compiled file needs no arguments.
"""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from kfp import compiler

from calltune.config import load_config
from calltune.pipelines import build_pipeline
from calltune.pipelines.training import TARGETS


def compile_pipeline(target: str, config_path: Path | None, output: Path, overrides: list[str] = ()) -> Path:
    cfg = load_config(config_path, overrides)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(target, cfg), str(output))
    output.write_text(_stable_header(output.read_text(encoding="utf-8")), encoding="utf-8")
    return output


_DICT_DEFAULT = re.compile(r"^(#\s+\w+: dict \[Default: )(\{.*\})(\])$", re.M)


def _stable_header(text: str) -> str:
    """kfp prints dict defaults in the header comment in protobuf map order, which varies between runs."""
    return _DICT_DEFAULT.sub(lambda m: m[1] + repr(dict(sorted(ast.literal_eval(m[2]).items()))) + m[3], text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=TARGETS, default="local")
    parser.add_argument("--config", type=Path, default=Path("configs/local.yaml"))
    parser.add_argument("--output", type=Path, help="default: build/calltune-<target>.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args()
    out = compile_pipeline(args.target, args.config if args.config.exists() else None,
                           args.output or Path("build") / f"calltune-{args.target}.yaml", args.overrides)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
