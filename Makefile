# comcoco — two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
COMCOCO := $(VENV)/bin/comcoco
STAMP := $(VENV)/.setup-stamp
DEMO_DIR ?= demo
DEMO_IMAGES ?= 200
SEED ?= 0
WORKERS ?= 2
PYTEST_ARGS ?=
PREFECT_PORT ?= 4200

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup demo test lint bench lock clean prefect-server label-studio label-studio-stop label-studio-status

setup: $(STAMP)

# Re-runs only when the dependency lists change; torch first so pip takes the local CPU wheel.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing into $(VENV) (log: $(VENV)/pip.log)"
	@$(PY) -m pip install --disable-pip-version-check --upgrade pip > $(VENV)/pip.log 2>&1 || { tail -40 $(VENV)/pip.log; exit 1; }
	@$(PY) -m pip install --disable-pip-version-check torch==2.13.0 >> $(VENV)/pip.log 2>&1 || { tail -40 $(VENV)/pip.log; exit 1; }
	@$(PY) -m pip install --disable-pip-version-check -c requirements.lock -e '.[dev]' >> $(VENV)/pip.log 2>&1 || { tail -40 $(VENV)/pip.log; exit 1; }
	$(PY) -c "import comcoco, torch, prefect, pycocotools, cv2"
	touch $(STAMP)

# The full pipeline on the embedded demo source: generate → build (→ release once available).
demo: setup
	$(COMCOCO) demo-source $(DEMO_DIR)/source --images $(DEMO_IMAGES) --seed $(SEED)
	$(COMCOCO) inspect $(DEMO_DIR)/source --deep
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} $(COMCOCO) build $(DEMO_DIR)/source -o $(DEMO_DIR)/work --seed $(SEED) --workers $(WORKERS)
	@echo
	@echo "Results:"
	@echo "  source:      $(DEMO_DIR)/source      (comcoco inspect $(DEMO_DIR)/source)"
	@echo "  composites:  $(DEMO_DIR)/work/shards/*/images/   ground truth: */gt/   masks: */masks/"
	@echo "  every sample: $(DEMO_DIR)/work/status.parquet   checksums: $(DEMO_DIR)/work/manifest.json"

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check comcoco pipelines tests benchmarks

bench: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# A Prefect server with its UI on 127.0.0.1; then `export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api`.
prefect-server: setup
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# Label Studio in its own virtualenv (.label-studio/venv), on 127.0.0.1; see docs/review.md.
label-studio:
	scripts/label_studio.sh install
	scripts/label_studio.sh start

label-studio-stop:
	scripts/label_studio.sh stop

label-studio-status:
	scripts/label_studio.sh status

# Refresh requirements.lock from the current environment (after editing pyproject.toml).
lock: setup
	$(PY) -m pip freeze --exclude-editable | grep -vE '^torch==' > requirements.lock.new
	{ head -2 requirements.lock; cat requirements.lock.new; } > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock && rm requirements.lock.new

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .prefect
