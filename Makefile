# Two commands for learners: `make lab` (set up, then open the course) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export MPLBACKEND ?= Agg

COMPAT ?= .venv-compat
TLENV  ?= .venv-tl

.PHONY: setup lab test test-compat test-tl unit notebooks bench model model-facts

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install everything (once; later runs need no internet)

lab: setup  ## open JupyterLab on your own copies of the notebooks (in my_work/, never overwritten)
	$(PY) tools/learner_copies.py
	MPLBACKEND= $(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/my_work \
		$(if $(filter 0,$(shell id -u)),--allow-root)

test: setup  ## unit tests, then every notebook (solutions and learner versions) under nbval
	$(PY) -m pytest -q tests solutions notebooks --nbval-lax --nbval-current-env --nbval-cell-timeout=600

test-compat:  ## the library's tests against the oldest supported transformers (4.57)
	@test -x $(COMPAT)/bin/python || python3 -m venv $(COMPAT)
	$(COMPAT)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 transformers==4.57.6 \
		"tokenizers<0.23" safetensors matplotlib circuitsvis ipywidgets tqdm psutil pytest
	PYTHONPATH="$(CURDIR)" $(COMPAT)/bin/python -m pytest -q tests/test_hooked_model.py tests/test_hook_points.py tests/test_cache.py tests/test_lens.py \
		tests/test_loading.py tests/test_bundled_model.py tests/test_plotting.py

test-tl:  ## ARENA-style code gives the numbers of TransformerLens 3.9's HookedTransformer on the same weights
	@test -x $(TLENV)/bin/python || python3 -m venv $(TLENV)
	$(TLENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(TLENV)/bin/python -m pip install -q --disable-pip-version-check -c requirements.txt transformer_lens==3.9.0 \
		transformers tokenizers safetensors numpy matplotlib circuitsvis ipywidgets tqdm pytest
	PYTHONPATH="$(CURDIR)" $(TLENV)/bin/python -m pytest -q tests/test_transformer_lens.py -W ignore::DeprecationWarning

unit: setup
	$(PY) -m pytest -q tests

notebooks: setup  ## write notebooks/ from solutions/
	$(PY) tools/build_notebooks.py

bench: setup  ## speed and memory of hooks, caching and each notebook
	$(PY) tools/bench.py

model: setup  ## retrain the bundled model (about an hour on 2 CPU cores, minutes on a GPU)
	$(PY) -m course_utils.train

model-facts: setup  ## re-measure the bundled model's interpretability facts
	$(PY) -m course_utils.model_facts
