#!/bin/bash
# Runs check_cargo_bazel_deps.py from the runfiles root (where Cargo.toml and rust/*/ lie).
set -euo pipefail
exec /usr/bin/python3 tools/build/check_cargo_bazel_deps.py
