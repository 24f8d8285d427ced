#!/usr/bin/env bash
# Install this example plugin into an environment that has raytide (with its test extra) and run its tests.
# Usage: PY=/path/to/venv/bin/python docs/examples/raytide-policy-example/check.sh
set -euo pipefail
PY="${PY:-python}"
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The build backend (setuptools) comes from the package index, in an isolated build environment.
"$PY" -m pip install -q --no-deps -e "$DIR"
# From the plugin's own directory, so pytest uses neither raytide's configuration nor its test paths.
cd "$DIR"
"$PY" -m pytest -q "$DIR/tests"
