#!/usr/bin/env bash
# The demo: installs everything on a fresh machine, starts the local stack (tansu +
# Redis), fits a model on synthetic good products, streams a synthetic sample video
# through a camera producer and an inference worker, prints a live summary.
#   ./scripts/demo.sh [--data DIR] [--frames N] [--fps F] [--size PX]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec python -m devtools.demo "$@"
