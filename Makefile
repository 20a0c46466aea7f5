# The two commands of the README's quick start. Both install what is missing first.
PYTHON ?= python3
PIP_FLAGS ?= --disable-pip-version-check --quiet

.PHONY: install demo smoke test bench figures colab-urls tables executed

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

# Deliberate, never part of a run: copy the demo run's figures (synthetic data only) into the
# tracked figures/ folder. Demo runs write them under runs/demo/figures/.
figures:
	$(PYTHON) -c "from cxrlib.plots import publish_figures; publish_figures()"

# After changing [project.urls] Repository or the version in pyproject.toml (a fork, a release):
# rewrite every notebook's install cell (URL and pinned tag v<version>) and Colab badge from it.
colab-urls:
	$(PYTHON) -c "from cxrlib.colab import sync_notebooks; print(*sync_notebooks() or ['notebooks already match'], sep='\n')"

# After changing a default in cxrlib/config/ (a profile value, a field): rewrite the defaults
# tables of README.md, docs/method.md and docs/parameters.md from the code.
tables:
	$(PYTHON) -m cxrlib tables --write

# Deliberate, never part of a run: copy the demo run's executed notebooks (synthetic data only,
# the same code as notebooks/) into docs/executed/, readable on GitHub before anything runs.
executed:
	$(PYTHON) -m cxrlib executed
