# Two commands for a fresh machine with Python 3.11+ and make:
#   make run    the bundle locally (embedded PostgreSQL unless DATABASE_URL is set)
#   make test   every test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)
export SAM_CLI_TELEMETRY := 0

.PHONY: run test invoke migrate lint build validate sam-cli bench clean

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
# A python3.13 (the runtime's version), if this machine has one, compiles the artifacts'
# bytecode: /opt and /var/task are read-only on Lambda, so without .pyc every cold start
# compiles every module again (~160 ms measured, benchmarks/README.md). Optional.
export LAMBDA_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13 \
	/usr/local/bin/python3.13 /usr/bin/python3.13))

$(SAM_STAMP): requirements-sam.txt
	@echo "==> installing the SAM CLI into $(SAM_VENV), once (~60 MB of wheels from PyPI, ~340 MB on disk)"
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python $(PIP_INSTALL) --quiet --upgrade pip
	$(SAM_VENV)/bin/python $(PIP_INSTALL) -r requirements-sam.txt
	@touch $(SAM_STAMP)
	@echo "==> $(SAM_VENV) ready: call the SAM CLI as $(SAM)"

sam-cli: $(SAM_STAMP)  ## the SAM CLI in .venv-sam

run: $(STAMP)  ## local gateway on 127.0.0.1:3000 (PORT=…) with the real handlers
	@$(PY) -m tools.serve

invoke: $(STAMP)  ## make invoke FN=RetentionFunction EVENT=events/retention-scheduler.json
	@$(PY) -m tools.invoke $(FN) $(if $(EVENT),--event $(EVENT))

migrate: $(STAMP)  ## migrations on DATABASE_URL, else DB_SECRET_ARN, else make run's database
	@$(PY) -m tools.migrate

test: $(STAMP) $(SAM_STAMP)  ## every test: unit, database, template, build, promtool (SAM CLI installed first, visibly)
	$(PY) -m pytest $(PYTEST_ARGS)

# mypy checks each function on its own: every function has a module named `app`.
lint: $(STAMP)  ## ruff, and mypy --strict on the layer and every function
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy layers/ops/ops
	@for fn in functions/*/; do echo "$(VENV)/bin/mypy $$fn"; $(VENV)/bin/mypy $$fn || exit 1; done

build: $(SAM_STAMP)  ## sam build: arm64/python3.13 artifacts in .aws-sam/build (no Docker)
	$(SAM) build $(SAM_BUILD_ARGS)

validate: $(SAM_STAMP) $(STAMP)  ## sam validate --lint and cfn-lint with the serverless rules
	$(SAM) validate --lint
	$(VENV)/bin/cfn-lint

bench: $(STAMP)  ## benchmarks; results go to benchmarks/README.md
	$(PY) -m benchmarks $(SUITES)

clean:
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .pytest_cache .ruff_cache .mypy_cache
