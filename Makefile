# Two commands: `make run` (execute the notebook sequence, cpu profile) and `make test` (all tests).
# Both create .venv on first use; later calls only re-install when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Pinned only here, for this machine's local wheels; pyproject keeps lower bounds.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTRAS := notebooks,lab,test
# The cpu profile's Fashion-MNIST, from Debian's package where apt can install it (root, or sudo without a
# password); elsewhere tas_lite downloads it on first use, so this step never fails the build.
DATASET_PACKAGE := dataset-fashion-mnist

.PHONY: run test install dataset lint sync clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS) || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@$(MAKE) --no-print-directory dataset
	touch $(STAMP)

dataset:
	@dpkg -s $(DATASET_PACKAGE) >/dev/null 2>&1 && exit 0; \
	later="tas_lite downloads Fashion-MNIST on first use instead"; \
	command -v apt-get >/dev/null 2>&1 || { echo "$(DATASET_PACKAGE): no apt-get here; $$later"; exit 0; }; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "$(DATASET_PACKAGE): apt needs root (or sudo without a password); $$later"; exit 0; fi; \
	apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -y -qq"; \
	$$apt install $(DATASET_PACKAGE) >/dev/null 2>&1 \
	  || { $$apt update >/dev/null 2>&1 && $$apt install $(DATASET_PACKAGE) >/dev/null 2>&1; } \
	  || echo "$(DATASET_PACKAGE): apt could not install it; $$later"

run: $(STAMP)
	$(PY) -m tas_lite run --profile cpu

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check tas_lite tests

# Rewrite the README's Colab badges and the notebooks' first cells from pyproject's [project.urls].
sync: $(STAMP)
	$(PY) -c "from tas_lite import colab; print(*colab.sync() or ['already in sync'], sep='\n')"

bench: $(STAMP)
	$(PY) -m tas_lite bench --out outputs/bench.json

clean:
	rm -rf outputs .pytest_cache build
