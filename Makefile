# fineflow: `make run` runs the whole pipeline on the bundled sample; `make test` tests it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch that this machine carries; a GPU machine keeps the torch it has.
TORCH_CPU ?= torch==2.13.0

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup run ablate test test-slow lint ui ui-stop deploy chromium clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: setup
	$(VENV)/bin/fineflow run $(ARGS)

# The bundled ablation (fineflow/ablations/sample.yaml): 4 variants x 2 seeds on the sample.
ablate: setup
	$(VENV)/bin/fineflow ablate sample $(ARGS)

test: setup
	$(VENV)/bin/pytest -q

# The slow tests: a real Prefect server + worker, the UI in headless Chromium, crawl growth.
test-slow: setup chromium
	$(VENV)/bin/pytest -q -m slow

chromium:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/pytest -q tests/core/test_layers.py

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
	  PREFECT_API_URL=$(UI_API) FINEFLOW_DATA_ROOT=$(CURDIR)/data nohup env --default-signal=INT $(VENV)/bin/prefect worker start \
	    --pool $(POOL) --type process > $(UI_RUN)/worker.log 2>&1 & echo $$! > $(UI_RUN)/worker.pid; \
	fi
	@echo "Prefect UI: http://127.0.0.1:$(UI_PORT)  (server and worker logs in $(UI_RUN))"
	@echo "next: make deploy; or export PREFECT_API_URL=$(UI_API) && make run; stop: make ui-stop"

# The worker first, then the server: SIGTERM to the process, its process group when it
# leads one, and every descendant (the worker's flow runs, the server's services); SIGKILL
# to what is left after UI_STOP_S seconds; "stopped" only once none of them is alive (a
# zombie counts as gone). A pid file whose pid now runs something else is not obeyed.
# Last, the local server that `fineflow run` shares between runs (`fineflow server --stop`).
# Prefect's worker answers SIGTERM by sending itself SIGINT, which a process started in
# the background by a non-interactive shell (as `ui` does) ignores: it needs the SIGKILL.
UI_STOP_S ?= 10

ui-stop:
	@alive() { case "$$(ps -o stat= -p "$$1" 2>/dev/null)" in ''|Z*) return 1;; esac; }; \
	kids() { for q in "$$@"; do echo "$$q"; kids $$(ps -o pid= --ppid "$$q" 2>/dev/null); done; }; \
	group() { ps -eo pid=,pgid= | awk -v g="$$1" '$$2 == g { print $$1 }'; }; \
	living() { for q in "$$@"; do alive "$$q" && echo "$$q"; done; }; \
	settle() { n=$$1; shift; left=$$(living "$$@"); \
	  while [ -n "$$left" ] && [ "$$n" -gt 0 ]; do \
	    sleep 0.1; n=$$((n - 1)); \
	    left=$$(living $$(kids $$left | sort -un)); \
	  done; }; \
	status=0; \
	for p in worker server; do \
	  f=$(UI_RUN)/$$p.pid; [ -f "$$f" ] || continue; \
	  pid=$$(cat "$$f"); \
	  if ! alive "$$pid"; then echo "$$p was not running"; rm -f "$$f"; continue; fi; \
	  case "$$(ps -o args= -p "$$pid")" in *prefect*) ;; \
	    *) echo "$$p was not running (pid $$pid is another program now)"; rm -f "$$f"; continue;; \
	  esac; \
	  pgid=$$(ps -o pgid= -p "$$pid" | tr -d ' '); \
	  all=$$( { kids "$$pid"; [ "$$pgid" = "$$pid" ] && group "$$pid"; } | sort -un); \
	  kill -TERM $$all 2>/dev/null; \
	  settle $$(( $(UI_STOP_S) * 10 )) $$all; how=""; \
	  if [ -n "$$left" ]; then \
	    how=", SIGKILL after $(UI_STOP_S) s"; kill -KILL $$left 2>/dev/null; settle 50 $$left; \
	  fi; \
	  if [ -n "$$left" ]; then \
	    echo "$$p (pid $$pid) did not exit: still running:" $$left; status=1; \
	  else \
	    echo "stopped $$p (pid $$pid$$how)"; rm -f "$$f"; \
	  fi; \
	done; \
	$(VENV)/bin/fineflow server --stop || status=1; \
	exit $$status

# prefect.yaml's deployments on the server `make ui` started (flow code runs from this checkout).
deploy: setup
	PREFECT_API_URL=$(UI_API) FINEFLOW_DATA_ROOT=$(CURDIR)/data $(VENV)/bin/prefect --no-prompt deploy --all

clean:
	rm -rf data test-output
