# lora-np: every target bootstraps .venv from pyproject.toml on first use.
#   make course      run every notebook in order into build/course/ (the clone stays clean);
#                    09 needs torch, transformers and PEFT: without them it says how to run it
#   make test        ruff, unit tests, strict nbval on every notebook (2 processes;
#                    TEST_WORKERS=N for more)
#   make test-matrix strict nbval on Python 3.11-3.13 with the newest and the lowest allowed
#                    dependencies, each pair that adds a Python or releases (the newest
#                    releases on the numpy-strict backend; the unit tests too on 3.11-lowest),
#                    BLAS variables as the machine sets them (CI runs it)
#   make store-outputs  maintainers: rerun the notebooks in place and rewrite figures/
#   make crosscheck  compare against PyTorch/transformers/PEFT (installs torch==2.13.0,
#                    transformers and peft), then strict nbval on notebook 09
#   make lab         open the student edition in JupyterLab (runs make student first)
#   make student     write the student edition (solutions stubbed, outputs cleared) to
#                    build/student/; keeps notebooks you edited (FORCE=1 replaces them)
#   make assignments teachers: nbgrader release versions in build/nbgrader/ (installs
#                    the teach extra; TEACHING.md)
#   make bench       benchmarks (against PyTorch, so installs the crosscheck extra)
#   make pretrain    pretrain the tiny GPT used by the later notebooks
#   make experiments rerun the long experiments whose results notebooks 05, 07, 08 load
#   make site        build the course website into build/site/ from the stored notebooks
#                    (with solutions; SOLUTIONS=0: for learners, without)
#   make site-test   test build/site/ in headless Chromium; screenshots in build/site-test/
#   make clean       remove .venv and caches

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

FORMAT_DIRS := $(wildcard lora_np tests benchmarks tools experiments)
# A cell that hangs or whose kernel dies fails after 600 s instead of hanging the run.
NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with tools/nbval_sanitize.cfg \
    --nbval-cell-timeout=600 -q -p no:cacheprovider

# Before any target touches .venv: stop with advice on a Python older than 3.11 (pip would
# otherwise backtrack for many minutes), and remove a .venv that another Python made.
ifeq ($(filter clean,$(MAKECMDGOALS)),)
ifneq ($(shell $(PYTHON) tools/check_python.py $(VENV) >&2 && echo ok),ok)
$(error stopped: see the message above)
endif
endif

.PHONY: install course store-outputs test test-matrix crosscheck lab bench pretrain experiments clean

install: $(VENV)/.installed

# Rebuilt when pyproject.toml changes. pip itself is left as venv ships it.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

# torch is installed first and pinned exactly, so that peft never pulls another torch build.
$(VENV)/.crosscheck: $(VENV)/.installed
	$(BIN)/python -m pip install "torch==2.13.0"
	$(BIN)/python -m pip install -e ".[crosscheck]"
	touch $@

course: $(VENV)/.installed
	$(BIN)/python tools/run_course.py

# Maintainers only: rewrites the stored notebooks and figures/ (commit them afterwards).
store-outputs: $(VENV)/.installed
	$(BIN)/python tools/run_course.py --in-place

# One pytest run for the unit tests and strict nbval, on TEST_WORKERS processes (pytest-xdist):
# --dist loadfile keeps each file on one worker, so a notebook's cells run in order in one
# kernel; tests/conftest.py starts the longest files first. The course is executed once: strict
# nbval of the student edition (build/nbval-student, tools/nbval_edition.py), which proves that
# Run All reaches the end with every exercise unsolved, each checker saying so, and that every
# other cell prints what the stored notebook shows. The teacher's edition (the stored notebooks
# with their solutions) is executed by .ci/run (the solved edition and the test matrix). Each
# experiment rerun runs once; the reruns with a deliberate change that prove the rerun tests'
# power (marker `sensitivity`) run in .ci/run. The BLAS variables are left as the machine sets
# them (tests/test_environment.py).
TEST_WORKERS ?= 2
NBVAL_EDITION := build/nbval-student

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check $(FORMAT_DIRS)
	$(BIN)/python tools/nbval_edition.py $(NBVAL_EDITION)
	LORA_NP_FIGURE_DIR=build/test-figures $(BIN)/pytest $(NBVAL_FLAGS) \
	    -n $(TEST_WORKERS) --dist loadfile -m "not crosscheck and not gpu and not sensitivity and not solved_edition" \
	    --ignore=tests/fixtures tests $(NBVAL_EDITION)

$(VENV)/.matrix: $(VENV)/.installed
	$(BIN)/python -m pip install "uv>=0.9,<1"
	touch $@

test-matrix: $(VENV)/.matrix
	$(BIN)/python tools/test_matrix.py

# Notebooks whose metadata needs the crosscheck packages (notebooks/conftest.py leaves them
# out of `make test`): named here, so nbval runs them.
CROSSCHECK_NOTEBOOKS := $(wildcard notebooks/09_*.ipynb)

crosscheck: $(VENV)/.crosscheck
	LORA_NP_CROSSCHECK=1 $(BIN)/pytest tests -q -m crosscheck
	LORA_NP_FIGURE_DIR=build/test-figures $(BIN)/pytest $(NBVAL_FLAGS) $(CROSSCHECK_NOTEBOOKS)

.PHONY: student assignments

# The student edition is generated from the stored notebooks (the teacher's edition), never
# edited by hand; tools/editions.py refuses a notebook that breaks the exercise convention.
student: $(VENV)/.installed
	$(BIN)/python tools/editions.py student $(if $(FORCE),--force)

lab: student
	$(BIN)/jupyter lab build/student

$(VENV)/.teach: $(VENV)/.installed
	$(BIN)/python -m pip install -e ".[teach]"
	touch $@

assignments: $(VENV)/.teach
	$(BIN)/python tools/assignments.py build $(if $(EXCHANGE),--exchange $(EXCHANGE))

# OPENBLAS_CORETYPE is unset only here, for benchmark timing on the course machine.
bench: $(VENV)/.crosscheck
	env -u OPENBLAS_CORETYPE $(BIN)/python benchmarks/mlp_step.py
	env -u OPENBLAS_CORETYPE $(BIN)/python benchmarks/train_step.py

pretrain: $(VENV)/.installed
	$(BIN)/python -m lora_np.pretrain

# Each script writes small results under lora_np/results/ (committed, shipped with the package);
# a test reruns one point of each. Each script pins one BLAS thread per process itself
# (backend.set_blas_threads), which makes a run bit-reproducible on one machine.
experiments: $(VENV)/.installed
	@set -e; for script in experiments/[0-9]*.py; do \
		echo "== $$script"; $(BIN)/python $$script; \
	done

# The website renders the stored notebooks without running them; each page offers its
# notebook's student edition (and, with solutions, the teacher's). The default build shows the
# solutions, folded, and says so on every page; SOLUTIONS=0 builds the site to hand to learners.
# REPOSITORY=URL sets the clone address on the home page (default: pyproject's project.urls).
.PHONY: site site-test
$(VENV)/.site: $(VENV)/.installed
	$(BIN)/python -m pip install -e ".[site]"
	touch $@

site: $(VENV)/.site
	$(BIN)/python tools/build_site.py $(if $(filter 0,$(SOLUTIONS)),--no-solutions) \
		$(if $(REPOSITORY),--repository "$(REPOSITORY)")

site-test: $(VENV)/.site
	$(BIN)/pytest tests/test_site.py -q -p no:cacheprovider
	$(BIN)/python tools/check_site.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
