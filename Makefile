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

.PHONY: setup demo test lint bench lock clean prefect-server label-studio label-studio-stop label-studio-status card-screenshot chromium review-screenshot

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

# The full pipeline on the embedded demo source: generate → inspect → build → release (audited, validated by a
# short CPU run of SAHM and its blind twin) → verify, then what it showed. About 5 minutes on 2 idle cores
# (README: "What `make demo` does"); DEMO_VALIDATE_STEPS=0 skips the validation.
DEMO_VERSION ?= 0.1.0
DEMO_VALIDATE_STEPS ?= 300
demo: setup
	@mkdir -p $(DEMO_DIR) && date +%s > $(DEMO_DIR)/.started
	$(COMCOCO) demo-source -o $(DEMO_DIR)/source --images $(DEMO_IMAGES) --seed $(SEED)
	$(COMCOCO) inspect $(DEMO_DIR)/source --deep
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} $(COMCOCO) build $(DEMO_DIR)/source -o $(DEMO_DIR)/work --seed $(SEED) --workers $(WORKERS)
	test -d $(DEMO_DIR)/releases/comcoco-$(DEMO_VERSION) || PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} $(COMCOCO) release $(DEMO_DIR)/work -o $(DEMO_DIR)/releases --version $(DEMO_VERSION) $(if $(filter 0,$(DEMO_VALIDATE_STEPS)),,--validate --validate-steps $(DEMO_VALIDATE_STEPS))
	$(COMCOCO) verify $(DEMO_DIR)/releases/comcoco-$(DEMO_VERSION)
	@$(PY) scripts/demo_summary.py $(DEMO_DIR) $(DEMO_VERSION) $$(( $$(date +%s) - $$(cat $(DEMO_DIR)/.started) ))

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check comcoco pipelines tests benchmarks

bench: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# A Prefect server with its UI on 127.0.0.1:$(PREFECT_PORT); then `export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api`.
# `--port` alone moves the API but not the URL the UI calls (it would stay on 4200), so both are set here.
prefect-server: setup
	PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} PREFECT_SERVER_API_HOST=127.0.0.1 \
	PREFECT_SERVER_API_PORT=$(PREFECT_PORT) \
	PREFECT_SERVER_UI_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# Label Studio in its own virtualenv (.label-studio/venv), on 127.0.0.1; see docs/review.md.
label-studio:
	scripts/label_studio.sh install
	scripts/label_studio.sh start

label-studio-stop:
	scripts/label_studio.sh stop

label-studio-status:
	scripts/label_studio.sh status

# Headless Chromium from Debian's packages (for the card and review screenshots).
chromium:
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

# Render a release's card.html to RELEASE/card-screenshot.png.
card-screenshot: chromium
	@test -n "$(RELEASE)" || { echo "usage: make card-screenshot RELEASE=RELEASES/comcoco-X.Y.Z"; exit 2; }
	@tmp=$$(mktemp -d); chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
	  --disable-component-update --disable-sync --no-first-run --user-data-dir=$$tmp \
	  --screenshot=$(RELEASE)/card-screenshot.png --window-size=1280,2400 \
	  file://$$(realpath $(RELEASE))/card.html; rc=$$?; rm -rf $$tmp; exit $$rc

# What an annotator sees (both stages, a second look, the guidelines, the reject refusal), saved as
# runs/review-*.png: a demo build under the server's document root (runs/), pushed and answered once.
REVIEW_DEMO ?= runs/review-demo
review-screenshot: setup label-studio chromium
	@$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check "playwright==1.65.2"
	test -d $(REVIEW_DEMO)/source || $(COMCOCO) demo-source -o $(REVIEW_DEMO)/source --images 40 --seed $(SEED)
	test -f $(REVIEW_DEMO)/work/status.parquet || PREFECT_HOME=$${PREFECT_HOME:-$(CURDIR)/.prefect} $(COMCOCO) build $(REVIEW_DEMO)/source -o $(REVIEW_DEMO)/work --seed $(SEED) --limit 12 --workers $(WORKERS)
	$(PY) scripts/review_screenshot.py --workdir $(REVIEW_DEMO)/work --out-dir runs

# Refresh requirements.lock from the current environment (after editing pyproject.toml).
lock: setup
	$(PY) -m pip freeze --exclude-editable | grep -vE '^torch==' > requirements.lock.new
	{ head -2 requirements.lock; cat requirements.lock.new; } > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock && rm requirements.lock.new

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .prefect
