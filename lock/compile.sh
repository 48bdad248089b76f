#!/bin/sh
# Refresh lock/requirements.txt, the pinned versions the images and CI install, from pyproject.toml's extras
# (python 3.11, linux x86_64, the CPU build of the pinned torch). Run it after editing a requirement;
# tests/test_lock.py fails until the lock satisfies pyproject.toml again. Extra arguments go to uv, e.g.
# `--find-links DIR` where download.pytorch.org is out of reach, or `--upgrade-package NAME`.
set -eu
cd "$(dirname "$0")/.."
exec python -m uv pip compile pyproject.toml --extra local --extra gcp --extra synth --extra test --extra vertex --extra serve \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --override lock/cpu-torch.txt \
    --extra-index-url "${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}" --index-strategy unsafe-best-match \
    --custom-compile-command "sh lock/compile.sh" -o lock/requirements.txt "$@"
