# Everyday steps. Every target sets itself up: the venv from the pinned requirements, then
# .local/env.sh (PostgreSQL found or started, databases, Fernet key, Airflow settings).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ENV := . .local/env.sh &&
# Lint parses dbt without a warehouse (nothing is queried): no .local/env.sh needed.
ENV_LINT := DBT_SEND_ANONYMOUS_USAGE_STATS=False

.PHONY: help venv env airflow-db warehouse-db dbt-parse demo test test-fast test-deployment lint airflow deploy-up deploy-down deploy-status bench clean cli docs

help:
	@echo "make demo      run the whole pipeline on the embedded demo (fake Sage, 3 companies)"
	@echo "make test      set up and run the whole test suite"
	@echo "make airflow   airflow standalone with these DAGs (UI on :8080)"
	@echo "make deploy-up the CeleryExecutor deployment here, no Docker (make deploy-down stops it)"
	@echo "make lint      ruff, sqlfluff, the dbt project rules, ruff format --check"
	@echo "make bench     benchmarks (figures in bench/RESULTS.md)"
	@echo "make cli ARGS='status'   the sage_sync CLI (python -m sage_sync) in this checkout's settings"
	@echo "make warehouse-db        create or update the warehouse schemas (the only step that runs DDL)"
	@echo "make docs      dbt docs generate, then serve them (DOCS_PORT, default 8081)"

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.txt
	touch $@

# The venv's python finds sage_sync without PYTHONPATH (`.venv/bin/python -m sage_sync` from a fresh shell).
$(VENV)/.paths: $(BIN)/.installed
	$(BIN)/python -c "import pathlib, site; pathlib.Path(site.getsitepackages()[0], 'sage_sync_plugins.pth').write_text('$(CURDIR)/plugins\n')"
	touch $@

venv: $(BIN)/.installed $(VENV)/.paths

env: venv
	$(BIN)/python scripts/devenv.py >/dev/null

airflow-db: env
	$(ENV) $(BIN)/airflow db migrate >/dev/null
	$(ENV) $(BIN)/python -m sage_sync.orchestration.pools

# The warehouse's schemas: set-up is the one step that migrates (reads and syncs never run DDL).
# It waits a bounded time for each table lock and retries (sage_sync.warehouse.migrate).
warehouse-db: env
	$(ENV) $(BIN)/python -m sage_sync migrate

dbt-parse: env
	$(ENV) $(BIN)/dbt parse --project-dir dbt --quiet

demo: airflow-db warehouse-db dbt-parse
	$(ENV) $(BIN)/python scripts/demo.py

# Tests run Airflow against a metadata DB of their own (SAGE_TEST_AIRFLOW_DB_URL).
TEST_ENV := $(ENV) export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$$SAGE_TEST_AIRFLOW_DB_URL" &&

# The deployment test (tests/deployment: the CeleryExecutor deployment, its own databases, Redis
# and processes) runs alongside the rest of the suite, in a pytest process of its own; its log is
# printed at the end. DEPLOYMENT=0 leaves it out. CI on a clean clone with both: 22 min 51 s on
# 2026-12-07 (suite 1,190 s in two workers, deployment test 676 s beside it), against CI's 25.
DEPLOYMENT ?= 1
# The suite runs in TEST_WORKERS pytest-xdist workers, a test file per worker at a time (a file's
# tests share its fake Sage and run in order); each worker has its own warehouse and metadata DBs
# (tests/conftest.py). One pytest process left a core idle: 14 min there, 8.5 min in two workers
# (2026-12-04, 2 cores). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
DEPLOY_LOG := .local/test-deployment.log
test: env dbt-parse
	$(TEST_ENV) $(BIN)/airflow db migrate >/dev/null
	$(TEST_ENV) $(BIN)/python -m sage_sync.orchestration.pools
	if [ "$(DEPLOYMENT)" = 1 ]; then \
	  ( $(TEST_ENV) $(BIN)/python -m pytest -m deployment -p no:cacheprovider $(PYTEST_ARGS) >$(DEPLOY_LOG) 2>&1 ) & deploy=$$!; \
	fi; \
	suite=0; $(TEST_ENV) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS) || suite=$$?; \
	dep=0; if [ "$(DEPLOYMENT)" = 1 ]; then \
	  echo "== waiting for the deployment test ($(DEPLOY_LOG))"; wait $$deploy || dep=$$?; \
	  tail -n 40 $(DEPLOY_LOG); [ $$dep = 5 ] && dep=0; \
	fi; \
	if [ "$(DEPLOYMENT)" = 1 ]; then echo "suite exit $$suite, deployment test exit $$dep"; \
	else echo "suite exit $$suite (the deployment test was not run: DEPLOYMENT=0)"; fi; \
	[ $$suite = 0 ] && [ $$dep = 0 ]

# The CeleryExecutor deployment test alone: real scheduler, two workers, faults (see tests/deployment).
test-deployment: env dbt-parse
	$(TEST_ENV) $(BIN)/airflow db migrate >/dev/null
	$(TEST_ENV) $(BIN)/python -m pytest -m deployment $(PYTEST_ARGS)

# ruff, then sqlfluff on the dbt SQL (dbt templater), then dbt-project-evaluator's rules on the
# manifest of `dbt parse` (scripts/check_dbt_project.py) and the registry's dbt copy; the format
# check is last. None of it needs a database.
lint: venv
	$(BIN)/ruff check .
	$(ENV_LINT) $(BIN)/sqlfluff lint dbt --processes 2
	$(ENV_LINT) $(BIN)/dbt parse --project-dir dbt --profiles-dir dbt --quiet --target-path target/lint
	$(BIN)/python scripts/check_dbt_project.py --manifest dbt/target/lint/manifest.json
	$(BIN)/python scripts/gen_dbt_streams.py --check
	$(BIN)/ruff format --check .

airflow: airflow-db warehouse-db dbt-parse
	$(ENV) $(BIN)/python scripts/standalone.py

cli: env
	$(ENV) $(BIN)/python -m sage_sync $(ARGS)

DOCS_PORT ?= 8081
docs: env dbt-parse
	$(ENV) $(BIN)/dbt docs generate --project-dir dbt --quiet
	$(ENV) $(BIN)/dbt docs serve --project-dir dbt --port $(DOCS_PORT)

# The CeleryExecutor deployment of docker-compose.yaml as local processes (scripts/deployment.py).
deploy-up: env dbt-parse
	$(ENV) $(BIN)/python scripts/deployment.py up $(DEPLOY_ARGS)

deploy-down: venv
	$(BIN)/python scripts/deployment.py down

deploy-status: venv
	$(BIN)/python scripts/deployment.py status

bench: env dbt-parse
	$(ENV) $(BIN)/python -m bench

clean:
	rm -rf .local dbt/target dbt/logs
