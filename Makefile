# fineflow: `make run` runs the whole pipeline on the bundled sample; `make test` tests it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch that this machine carries; a GPU machine keeps the torch it has.
TORCH_CPU ?= torch==2.13.0

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup run test test-slow lint ui ui-stop deploy chromium clean

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

# The slow tests: a real Prefect server + worker, the UI in headless Chromium, crawl growth.
test-slow: setup chromium
	$(VENV)/bin/pytest -q -m slow

chromium:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# A local Prefect server on http://127.0.0.1:4200 and a worker for the `fineflow-process`
# pool, both in the background (pids and logs in $(UI_RUN)); `make ui-stop` stops both.
# Then `make deploy` registers prefect.yaml's deployments, and in another shell
#   export PREFECT_API_URL=http://127.0.0.1:4200/api && make run
UI_PORT ?= 4200
UI_API  := http://127.0.0.1:$(UI_PORT)/api
UI_RUN  := $(VENV)/fineflow-ui
POOL    := fineflow-process

ui: setup
	@mkdir -p $(UI_RUN)
	@if kill -0 "$$(cat $(UI_RUN)/server.pid 2>/dev/null)" 2>/dev/null; then \
	  echo "server already running (pid $$(cat $(UI_RUN)/server.pid))"; \
	else \
	  nohup $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(UI_PORT) \
	    > $(UI_RUN)/server.log 2>&1 & echo $$! > $(UI_RUN)/server.pid; \
	fi
	@for i in $$(seq 90); do \
	  $(PY) -c "import urllib.request as u; u.urlopen('$(UI_API)/health', timeout=2)" 2>/dev/null \
	    && break; \
	  [ $$i = 90 ] && { echo "no server after 90 s: see $(UI_RUN)/server.log"; exit 1; }; sleep 1; \
	done
	@PREFECT_API_URL=$(UI_API) $(VENV)/bin/prefect work-pool inspect $(POOL) >/dev/null 2>&1 || \
	  PREFECT_API_URL=$(UI_API) $(VENV)/bin/prefect work-pool create $(POOL) --type process >/dev/null
	@if kill -0 "$$(cat $(UI_RUN)/worker.pid 2>/dev/null)" 2>/dev/null; then \
	  echo "worker already running (pid $$(cat $(UI_RUN)/worker.pid))"; \
	else \
	  PREFECT_API_URL=$(UI_API) FINEFLOW_HOME=$(CURDIR) nohup $(VENV)/bin/prefect worker start \
	    --pool $(POOL) --type process > $(UI_RUN)/worker.log 2>&1 & echo $$! > $(UI_RUN)/worker.pid; \
	fi
	@echo "Prefect UI: http://127.0.0.1:$(UI_PORT)  (server and worker logs in $(UI_RUN))"
	@echo "next: make deploy; or export PREFECT_API_URL=$(UI_API) && make run; stop: make ui-stop"

ui-stop:
	@for p in worker server; do \
	  if [ -f $(UI_RUN)/$$p.pid ]; then \
	    kill "$$(cat $(UI_RUN)/$$p.pid)" 2>/dev/null && echo "stopped $$p" || echo "$$p was not running"; \
	    rm -f $(UI_RUN)/$$p.pid; \
	  fi; \
	done

# prefect.yaml's deployments on the server `make ui` started (flow code runs from this checkout).
deploy: setup
	PREFECT_API_URL=$(UI_API) FINEFLOW_HOME=$(CURDIR) $(VENV)/bin/prefect --no-prompt deploy --all

clean:
	rm -rf data test-output
