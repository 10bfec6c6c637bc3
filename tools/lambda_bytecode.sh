#!/bin/sh
# Bytecode for the Lambda runtime's Python (3.13), for `make build` and a plain `sam build`
# alike (the layer's and the functions' Makefiles call it). /opt and /var/task are
# read-only on Lambda, so without shipped .pyc every cold start compiles every module
# again (benchmarks/README.md); another Python's .pyc are useless there (their magic
# number differs), so a 3.13 compiles them, or the build stops and says so.
#
#   sh tools/lambda_bytecode.sh check        exit 2 with two lines when no python3.13 is found
#   sh tools/lambda_bytecode.sh compile DIR  compile DIR's modules for 3.13
#
# LAMBDA_PYTHON names the interpreter (LAMBDA_PYTHON=none: ship without bytecode, on
# purpose); unset, the first python3.13 of PATH, pyenv, /usr/local/bin, /usr/bin.
set -eu

is_313() {
  [ -n "$1" ] && "$1" -I -S -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' \
    >/dev/null 2>&1
}

find_313() {
  for exe in "$(command -v python3.13 || true)" \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 \
    /usr/local/bin/python3.13 /usr/bin/python3.13; do
    if is_313 "$exe"; then echo "$exe"; return 0; fi
  done
  return 1
}

fail() {
  echo "build: $1" >&2
  echo "  Install a Python 3.13 (pyenv install 3.13, uv python install 3.13, apt install python3.13)" \
    "or name one: make build LAMBDA_PYTHON=/path/to/python3.13 (LAMBDA_PYTHON=none: ship without)" >&2
  exit 2
}

lambda_python() {
  if [ -z "${LAMBDA_PYTHON:-}" ]; then
    find_313 || fail "no python3.13 found to compile the bytecode (without it every cold start compiles every module: slower)"
  elif [ "$LAMBDA_PYTHON" = none ]; then
    echo none
  elif is_313 "$LAMBDA_PYTHON"; then
    echo "$LAMBDA_PYTHON"
  else
    fail "LAMBDA_PYTHON=$LAMBDA_PYTHON is not a Python 3.13 (the runtime's: other versions' bytecode is useless there)"
  fi
}

case "${1:-}" in
  check) lambda_python >/dev/null ;;
  compile)
    exe=$(lambda_python)
    # unchecked-hash: valid whatever the files' mtimes become in the zip.
    [ "$exe" = none ] || "$exe" -m compileall -q -j0 --invalidation-mode unchecked-hash "$2"
    ;;
  *) echo "usage: $0 check | compile DIR" >&2; exit 2 ;;
esac
