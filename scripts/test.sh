#!/usr/bin/env bash
# The README's test command: installs everything on a fresh machine, then runs the suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
ruff check .
python -m pytest "$@"
