# Two commands for learners: `make lab` (set up, then open the course) and `make test`.
# `make help` lists every target. Options: TORCH=cpu (CPU-only torch), WHEELHOUSE=dir (offline).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3
TORCH  ?= default
# A wheelhouse/ folder next to this file (from `make wheelhouse`) means: install offline from it.
WHEELHOUSE ?= $(wildcard wheelhouse)
export HF_HUB_OFFLINE ?= 1
export MPLBACKEND ?= Agg

COMPAT ?= .venv-compat
TLENV  ?= .venv-tl
BROWSERENV ?= .venv-browser
COLABENV   ?= .venv-colab
# Colab's current versions (its preinstalled torch and transformers); Colab runs Python 3.12.
COLAB_TORCH        ?= 2.11.0
COLAB_TRANSFORMERS ?= 5.23.0
COLAB_PYTHON       ?= $(firstword $(shell command -v python3.12 >/dev/null 2>&1 && python3.12 -c '' 2>/dev/null && echo python3.12) \
                        $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(PYTHON))

.PHONY: help setup lab solutions take test test-compat test-tl test-browser test-colab test-offline wheelhouse \
	unit notebooks bench model model-facts doctor

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) tools/install.py --venv $(VENV) --torch $(TORCH) $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE))

setup: $(STAMP)  ## create .venv and install everything (once; TORCH=cpu for the CPU-only torch)

lab: setup  ## open JupyterLab on your own copies of the notebooks (my_work/, never overwritten)
	$(PY) tools/lab.py $(if $(SOLUTIONS),--solutions)

solutions:  ## copy the complete notebooks into my_work/solutions/ (for after the session)
	$(PYTHON) tools/learner_copies.py --solutions

take:  ## take the course's new version of a notebook: make take NB=04 (yours is kept, renamed)
	@test -n "$(NB)" || { echo "Say which notebook: make take NB=04"; exit 1; }
	$(PYTHON) tools/learner_copies.py --take $(NB) $(if $(SOLUTION),--solution)

doctor:  ## check Python, torch, transformers, GPU, memory, disk and offline readiness, with fixes
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) tools/doctor.py --venv $(VENV)

test: setup  ## unit tests, then every notebook (solutions and learner versions) under nbval
	$(PY) -m pytest -q tests solutions notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=600

wheelhouse:  ## download every pinned package and the course's wheel into wheelhouse/ (online; TORCH=cpu)
	$(PYTHON) tools/install.py --download wheelhouse --torch $(TORCH)

test-offline:  ## install a fresh venv from wheelhouse/ only, with no network, and import the course
	rm -rf build/offline-venv
	$(if $(shell unshare -n true 2>/dev/null && echo y),unshare -n,) \
		$(PYTHON) tools/install.py --venv build/offline-venv --wheelhouse wheelhouse
	cd /tmp && HF_HUB_OFFLINE=1 $(CURDIR)/build/offline-venv/bin/python -c \
		"import course_utils, torch; m = course_utils.load_model(); print('offline install works:', torch.__version__, m.cfg.n_layers, 'layers')"
	rm -rf build/offline-venv

test-browser: setup  ## every notebook in JupyterLab in headless Chromium (apt-get install chromium fonts-dejavu-core)
	@test -x $(BROWSERENV)/bin/python || $(PYTHON) -m venv $(BROWSERENV)
	$(BROWSERENV)/bin/python -m pip install -q --disable-pip-version-check playwright==1.65.2
	$(BROWSERENV)/bin/python tools/browser_test.py --python $(PY)

test-colab:  ## Colab's torch and transformers, the built wheel (not editable), notebooks run outside the repository
	$(COLAB_PYTHON) tools/colab_test.py --python $(COLAB_PYTHON) --venv $(COLABENV) \
		--torch $(COLAB_TORCH) --transformers $(COLAB_TRANSFORMERS)

test-compat:  ## the library's tests against the oldest supported transformers (4.57)
	@test -x $(COMPAT)/bin/python || $(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 transformers==4.57.6 \
		"tokenizers<0.23" safetensors matplotlib circuitsvis ipywidgets tqdm psutil pytest
	PYTHONPATH="$(CURDIR)" $(COMPAT)/bin/python -m pytest -q tests/test_hooked_model.py tests/test_hook_points.py tests/test_cache.py tests/test_lens.py \
		tests/test_loading.py tests/test_bundled_model.py tests/test_plotting.py

test-tl:  ## ARENA-style code gives the numbers of TransformerLens 3.9's HookedTransformer on the same weights
	@test -x $(TLENV)/bin/python || $(PYTHON) -m venv $(TLENV)
	$(TLENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(TLENV)/bin/python -m pip install -q --disable-pip-version-check -c requirements.txt transformer_lens==3.9.0 \
		transformers tokenizers safetensors numpy matplotlib circuitsvis ipywidgets tqdm pytest
	PYTHONPATH="$(CURDIR)" $(TLENV)/bin/python -m pytest -q tests/test_transformer_lens.py -W ignore::DeprecationWarning

unit: setup  ## the library's unit tests only
	$(PY) -m pytest -q tests

notebooks: setup  ## write notebooks/ from solutions/ (and the repository URL into every badge)
	$(PY) tools/build_notebooks.py

bench: setup  ## speed and memory of hooks, caching and each notebook
	$(PY) tools/bench.py

MODEL ?= course-2l
model: setup  ## retrain a bundled model: make model MODEL=course-2l|course-4l (1-3 h on 2 CPU cores)
	$(PY) -m course_utils.train --model $(MODEL)

model-facts: setup  ## re-measure the bundled models' interpretability facts
	$(PY) -m course_utils.model_facts
