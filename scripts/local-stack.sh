#!/usr/bin/env bash
# Starts/stops the local stack (tansu broker + local or embedded Redis, topics created).
#   ./scripts/local-stack.sh up|down|status [--kafka-port N] [--partitions N]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec python -m devtools.local_stack "$@"
