#!/usr/bin/env bash
# Creates .venv (if needed) and installs linewatch with its model, runtimes, dev and local-stack extras.
# Sourced by scripts/test.sh and scripts/demo.sh so both work on a fresh machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LINEWATCH_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.linewatch-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[model,runtimes,dev,local]"
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
