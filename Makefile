# Two commands: `make run` (execute the notebook sequence, cpu profile) and `make test` (all tests).
# Both create .venv on first use; later calls only re-install when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Pinned only here, for this machine's local wheels; pyproject keeps lower bounds.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: run test install lint clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS) || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m tas_lite run --profile cpu

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check tas_lite tests

bench: $(STAMP)
	$(PY) -m tas_lite bench --out outputs/bench.json

clean:
	rm -rf outputs .pytest_cache
