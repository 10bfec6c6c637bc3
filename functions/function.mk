# The one Makefile of every function (each function folder links to it as its Makefile).
# Built by `sam build` (BuildMethod: makefile): `make build-<LogicalId>` runs in a copy
# of this folder with ARTIFACTS_DIR set. The function ships only its own modules (no
# tests); third-party code comes from the ops layer, boto3 from the runtime. Should a
# function ever need a dependency of its own, requirements.txt is resolved for the
# Lambda runtime (python3.13, arm64), not for the building machine.
BUILD_PYTHON ?= python3
# See layers/ops/Makefile: bytecode for the runtime's Python when LAMBDA_PYTHON names one.
compile_bytecode = if [ -n "$(LAMBDA_PYTHON)" ]; then \
	"$(LAMBDA_PYTHON)" -m compileall -q -j0 --invalidation-mode unchecked-hash "$(1)"; \
	else echo "LAMBDA_PYTHON unset: shipping without bytecode (slower cold starts)" >&2; true; fi

build-%:
	for f in *.py; do \
		case "$$f" in test_*|*_test.py|conftest.py) ;; *) cp "$$f" "$(ARTIFACTS_DIR)/" ;; esac; \
	done
	@if grep -qE '^[^#[:space:]]' requirements.txt 2>/dev/null; then \
		$(BUILD_PYTHON) -m pip install --quiet --disable-pip-version-check --no-compile \
			--platform manylinux2014_aarch64 --python-version 3.13 --implementation cp \
			--only-binary=:all: --target "$(ARTIFACTS_DIR)" -r requirements.txt; \
	fi
	@$(call compile_bytecode,$(ARTIFACTS_DIR))
