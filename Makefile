# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench chart clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,test]'
	touch $(STAMP)

# A real distributed job on this machine: 1 chief, 2 workers, 1 parameter server. It starts
# afresh each time (a job that finds checkpoints in its model dir resumes from them instead).
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/pmlctl submit --name demo --workers 2 --ps 1 --epochs 3 --model-dir runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Everything but the tests that start TensorFlow processes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/cli_startup.py

# values.yaml and values.schema.json of the chart are generated from JobSpec; a test checks them.
chart: $(STAMP)
	$(BIN)/python -m deploy.chart

clean:
	rm -rf $(VENV) runs
