# The two commands of the README's quick start. Both install what is missing first.
PYTHON ?= python3
PIP_FLAGS ?= --disable-pip-version-check --quiet

.PHONY: install demo smoke test bench

install:
	$(PYTHON) -m pip install $(PIP_FLAGS) -e ".[dev]"

# The main job: synthetic EGD-format data, then every notebook headless (papermill), demo profile.
demo: install
	$(PYTHON) -m cxrlib run --profile demo

smoke: install
	$(PYTHON) -m cxrlib run --profile smoke

# The whole test suite: unit tests, notebook structure, and every notebook under nbmake (smoke).
test: install
	OMP_NUM_THREADS=2 $(PYTHON) -m pytest

bench: install
	$(PYTHON) -m cxrlib bench
	$(PYTHON) -m cxrlib bench-data
