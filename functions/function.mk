# The one Makefile of every function (each function folder links to it as its Makefile).
# Built by `sam build` (BuildMethod: makefile): `make build-<LogicalId>` runs in a copy
# of this folder with ARTIFACTS_DIR set. The function ships only its own modules (no
# tests); third-party code comes from the ops layer, boto3 from the runtime. Should a
# function ever need a dependency of its own, requirements.txt is resolved for the
# Lambda runtime (python3.13, arm64), not for the building machine.
BUILD_PYTHON ?= python3
# Bytecode for the runtime's Python, as in layers/ops/Makefile (the realpath is this file's).
BYTECODE := $(dir $(realpath $(firstword $(MAKEFILE_LIST))))../tools/lambda_bytecode.sh

build-%:
	for f in *.py; do \
		case "$$f" in test_*|*_test.py|conftest.py) ;; *) cp "$$f" "$(ARTIFACTS_DIR)/" ;; esac; \
	done
	@if grep -qE '^[^#[:space:]]' requirements.txt 2>/dev/null; then \
		$(BUILD_PYTHON) -m pip install --quiet --disable-pip-version-check --no-compile \
			--platform manylinux2014_aarch64 --python-version 3.13 --implementation cp \
			--only-binary=:all: --target "$(ARTIFACTS_DIR)" -r requirements.txt; \
	fi
	@sh "$(BYTECODE)" compile "$(ARTIFACTS_DIR)"
