#!/usr/bin/env bash
# Stops the throw-away test server that scripts/start_postgres.sh started and deletes its folder
# (same environment: PROMPTLABEL_PG_PORT, PROMPTLABEL_PG_DIR).
set -euo pipefail
exec bash "$(dirname "$0")/start_postgres.sh" stop
