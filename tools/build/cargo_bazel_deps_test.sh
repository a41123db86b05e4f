#!/bin/bash
# Runs check_cargo_bazel_deps.py from the runfiles root (where Cargo.toml and rust/*/ lie) with
# the build's python3 (@test_python, given as $1).
set -euo pipefail
exec "$1" tools/build/check_cargo_bazel_deps.py
