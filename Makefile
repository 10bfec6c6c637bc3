# Two commands for a fresh machine with Python 3.11+ and make:
#   make run    the bundle locally (embedded PostgreSQL unless DATABASE_URL is set)
#   make test   every test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The tools, the layer as Lambda's /opt/python, the functions' packages as /var/task
# (pyproject.toml gives pytest the same, tools.PYTHONPATH the child processes).
export PYTHONPATH := $(CURDIR):$(CURDIR)/layers/ops:$(CURDIR)/functions
export SAM_CLI_TELEMETRY := 0

.PHONY: help run test invoke migrate lint generate build bytecode-python validate sam-cli bench prom clean
.DEFAULT_GOAL := help

# pip shows what it fetches (a silent minute looks like a hang); no root or version nags.
PIP_INSTALL = -m pip install --progress-bar on --root-user-action=ignore --disable-pip-version-check

$(STAMP): requirements-dev.txt layers/ops/requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	@echo "==> first run: installing the dev tools into $(VENV) (~90 MB of wheels from PyPI, ~450 MB on disk; README: first run)"
	$(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_INSTALL) --quiet --upgrade pip
	$(PY) $(PIP_INSTALL) -r requirements-dev.txt
	@touch $(STAMP)
	@echo "==> $(VENV) ready"

# The SAM CLI lives in its own venv: it pins many packages the dev venv also uses.
SAM_VENV  := .venv-sam
SAM       := $(SAM_VENV)/bin/sam
SAM_STAMP := $(SAM_VENV)/.installed
# pip of the SAM venv installs the layer's wheels (for python3.13/arm64) during sam build.
export BUILD_PYTHON := $(CURDIR)/$(SAM_VENV)/bin/python

$(SAM_STAMP): requirements-sam.txt
	@echo "==> installing the SAM CLI into $(SAM_VENV), once (~60 MB of wheels from PyPI, ~340 MB on disk)"
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python $(PIP_INSTALL) --quiet --upgrade pip
	$(SAM_VENV)/bin/python $(PIP_INSTALL) -r requirements-sam.txt
	@touch $(SAM_STAMP)
	@echo "==> $(SAM_VENV) ready: call the SAM CLI as $(SAM)"

help:  ## this list (every target and what it does)
	@awk -F':.*## ' '/^[a-z-]+:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

sam-cli: $(SAM_STAMP)  ## the SAM CLI in .venv-sam

run: $(STAMP)  ## local gateway on 127.0.0.1:3000 (PORT=…) with the real handlers
	@$(PY) -m tools.runtime.serve

invoke: $(STAMP)  ## one function with an event, like sam local invoke: FN=HealthFunction EVENT=events/health.json
	@$(PY) -m tools.runtime.invoke $(FN) $(if $(EVENT),--event $(EVENT))

migrate: $(STAMP)  ## migrations on DATABASE_URL, else DB_SECRET_ARN, else make run's database
	@$(PY) -m tools.localdb.migrate

test: $(STAMP) $(SAM_STAMP)  ## every test: unit, database, template, build, promtool (SAM CLI installed first, visibly)
	$(PY) -m pytest $(PYTEST_ARGS)

# mypy's files and paths are in pyproject.toml: the layer, the functions, tools, benchmarks,
# infra and the tests, in one run.
lint: $(STAMP)  ## ruff, and mypy --strict on the whole tree
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# No venv check: it runs in clones that link the venv (tests/docs), and changes nothing else.
generate:  ## rewrite the generated files: README's settings table, slo.rules.yml, the dashboard
	$(PY) -m tools.docs.settings_doc
	$(PY) -m infra.monitoring.slo > infra/monitoring/slo.rules.yml.tmp
	mv infra/monitoring/slo.rules.yml.tmp infra/monitoring/slo.rules.yml
	$(PY) -m infra.monitoring.grafana_dashboard > infra/monitoring/grafana-dashboard.json.tmp
	mv infra/monitoring/grafana-dashboard.json.tmp infra/monitoring/grafana-dashboard.json

# The python3.13 check comes first: it fails in two lines, not after the SAM CLI install.
build: bytecode-python $(SAM_STAMP)  ## sam build: arm64/python3.13 artifacts with bytecode in .aws-sam/build (no Docker)
	$(SAM) build $(SAM_BUILD_ARGS)

bytecode-python:  ## check for the python3.13 that compiles the build's bytecode (LAMBDA_PYTHON=…)
	@sh tools/lambda_bytecode.sh check

validate: $(SAM_STAMP) $(STAMP)  ## sam validate --lint and cfn-lint with the serverless rules
	$(SAM) validate --lint
	$(VENV)/bin/cfn-lint

PROM_PORT ?= 9090
prom: $(STAMP)  ## Prometheus (Debian's) on 127.0.0.1:9090 (PROM_PORT=…) scraping make run, alert rules loaded
	@$(PY) -m tools.standins.prom --port $(PROM_PORT)

bench: $(STAMP)  ## benchmarks (SUITES=…); results go to benchmarks/README.md
	@$(PY) -m benchmarks $(SUITES)

clean:  ## remove both venvs and the build and tool caches (not .local, the local database)
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .pytest_cache .ruff_cache .mypy_cache
