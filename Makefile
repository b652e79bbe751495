# `make test` and `make demo` create .venv on first use: requirements.txt, this project in editable
# mode (pyproject.toml: pretrain, detection and study import from this checkout), then Detectron2
# at the pinned commit (tools/install_detectron2.sh; DETECTRON2_SRC points it at a local source).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The editable install of this project, redone when pyproject.toml changes (seconds; its own stamp
# so that an edit there never rebuilds Detectron2).
EDITABLE_STAMP := $(VENV)/.editable
# The Detectron2 commit the project is tested with. Its stamp names the commit, so a reused venv
# rebuilds Detectron2 only when the pin changes.
DETECTRON2_COMMIT := 02b5c4e295e990042a714712c21dc79b731e8833
D2_STAMP := $(VENV)/.detectron2-$(DETECTRON2_COMMIT)

.PHONY: venv test test-durations test-fast test-unit lint mutation demo clean

venv: $(STAMP) $(EDITABLE_STAMP) $(D2_STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

$(EDITABLE_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --no-deps -e .
	touch $(EDITABLE_STAMP)

# Written only when Detectron2 built and imports; otherwise the script explains why (and fails
# under CI=true), and the next `make` tries again.
$(D2_STAMP): $(STAMP)
	bash tools/install_detectron2.sh $(PY) $(DETECTRON2_COMMIT) $@

# pytest-xdist workers, a test file each at a time (a file's module fixtures are built once), in
# tests/conftest.py's order (--no-loadscope-reorder; xdist's own would take the Slurm cluster's
# files late; then the longest first, by tests/durations.json). Three on 2 cores for the tiers
# with end-to-end tests: those spend much of their time waiting on the processes and Slurm jobs
# they start, and a third file computes meanwhile. The unit tier only computes: two.
PYTEST_WORKERS ?= -n 3 --dist loadfile --no-loadscope-reorder
UNIT_WORKERS ?= -n 2 --dist loadfile

# The whole suite, slow end-to-end checks included (what CI runs). -rs prints every skip reason.
test: venv
	$(PY) -m pytest -q -rs $(PYTEST_WORKERS) tests

# The whole suite, rewriting tests/durations.json (each file's seconds): the workers take the
# longest files first from it (tests/conftest.py). Worth rerunning when files grew or were added.
test-durations: venv
	$(PY) -m pytest -q -rs $(PYTEST_WORKERS) --record-durations tests/durations.json tests

# Everything but the tests marked slow.
test-fast: venv
	$(PY) -m pytest -q -rs $(PYTEST_WORKERS) -m "not slow" tests

# The developer's inner loop, about a minute on 2 cores (not CI's): the tests not marked slow,
# integration (starts tools, torchrun, Slurm or DataLoader workers, or trains end to end) or
# cluster; docs/testing.md. UNIT_TIER=1 makes a test that starts a process fail, naming the marker
# to add (tests/conftest.py), so that the tier cannot grow slow unnoticed.
test-unit: venv
	UNIT_TIER=1 $(PY) -m pytest -q -rs $(UNIT_WORKERS) -m "not slow and not integration and not cluster" tests

# ruff and mutmut, pinned in requirements-dev.txt, into the same venv.
DEV_STAMP := $(VENV)/.dev-installed
$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Lint and import order (ruff check) and the formatting (ruff format --check), as pyproject.toml
# configures them: what CI runs before the tests.
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Mutation testing of the modules that decide Table 5 (docs/testing.md): not in CI, it takes
# hours on 2 cores and resumes where a run stopped. Mutants and their temporary files stay
# under mutants/ (git-ignored); `mutmut results` / `mutmut show NAME` inspect a finished run.
mutation: venv $(DEV_STAMP)
	mkdir -p mutants/tmp
	TMPDIR=$(CURDIR)/mutants/tmp OMP_NUM_THREADS=1 nice -n 10 $(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut export-cicd-stats

# The demo study (docs/demo.md) with each stage's output on the console; a second run finds it
# done, or goes on where it stopped. DEMO_ARGS: more flags of tools/study.py (--device cuda,
# --resume).
demo: venv
	$(PY) tools/study.py --config-file configs/study/demo_cpu.yaml --console $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache mutants
