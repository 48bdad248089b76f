"""Compile the calltune pipeline to a KFP YAML file.

    python compile.py                                   # local variant -> build/calltune-local.yaml
    python compile.py --target vertex --config configs/vertex.yaml \\
        gcp.image=REGION-docker.pkg.dev/PROJECT/REPO/calltune:TAG \\
        gcp.trainer_image=REGION-docker.pkg.dev/PROJECT/REPO/calltune-trainer:TAG   # -> build/calltune-vertex.yaml

Parameter defaults come from the config, so a rerun from the compiled file (or the Vertex console) needs no
arguments. The image URIs come from gcp.image / gcp.trainer_image, else $CALLTUNE_IMAGE / $CALLTUNE_TRAINER_IMAGE,
and are stamped into every step; the vertex variant also takes the tune CustomJob's machine and GPUs from the
gcp section, and refuses a config that cannot run there. The same inputs give the same bytes.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

from kfp import compiler

from calltune.config import ConfigError, load_config
from calltune.pipeline.vertex import load_vertex_config
from calltune.pipelines import build_pipeline
from calltune.pipelines.training import TARGETS


def compile_pipeline(target: str, config_path: Path | None, output: Path, overrides: list[str] = ()) -> Path:
    # Vertex: every field to fix in one error, those the config refuses and those Vertex needs.
    cfg = load_vertex_config(config_path, overrides, compiling=True) if target == "vertex" else load_config(
        config_path, overrides)
    pipeline = build_pipeline(target, cfg)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(output))
    output.write_text(_stable_header(output.read_text(encoding="utf-8")), encoding="utf-8")
    return output


_DICT_DEFAULT = re.compile(r"^(#\s+\w+: dict \[Default: )(\{.*\})(\])$", re.M)


def _stable_header(text: str) -> str:
    """kfp prints dict defaults in the header comment in protobuf map order, which varies between runs."""
    return _DICT_DEFAULT.sub(lambda m: m[1] + repr(dict(sorted(ast.literal_eval(m[2]).items()))) + m[3], text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=TARGETS, default="local",
                        help="local: every step under kfp.local; vertex: Vertex AI Pipelines (default: local)")
    parser.add_argument("--config", type=Path, help="YAML config (default: configs/<target>.yaml when present)")
    parser.add_argument("--output", type=Path, help="default: build/calltune-<target>.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. gcp.image=...")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    config = args.config or Path("configs") / f"{args.target}.yaml"
    try:
        out = compile_pipeline(args.target, config if args.config or config.exists() else None,
                               args.output or Path("build") / f"calltune-{args.target}.yaml", args.overrides)
    except ConfigError as exc:
        print(f"calltune: {exc.one_line()}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
