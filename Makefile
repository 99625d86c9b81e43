# fineflow: `make run` runs the whole pipeline on the bundled sample; `make test` tests it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch that this machine carries; a GPU machine keeps the torch it has.
TORCH_CPU ?= torch==2.13.0

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup run test test-slow lint ui clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: setup
	$(VENV)/bin/fineflow run $(ARGS)

test: setup
	$(VENV)/bin/pytest -q

test-slow: setup
	$(VENV)/bin/pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# The Prefect UI on http://127.0.0.1:4200; in another shell:
#   export PREFECT_API_URL=http://127.0.0.1:4200/api && make run
ui: setup
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf data test-output
