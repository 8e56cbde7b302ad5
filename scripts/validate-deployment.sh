#!/usr/bin/env bash
# The guide's scripts/validate-deployment.sh: `invoke check` (services, database, migrations, Redis,
# backend health, uploads, newest verified backup, disk, interrupted update). Non-zero when a check fails.
# Arguments go to the task (--deep, --json). STACKOPS_ENV=prod picks prod.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../database/_stackops.sh"
stackops check "$@"
