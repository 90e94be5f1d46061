#!/usr/bin/env bash
# Creates a virtual environment (default .venv; VENV=... for another) and installs promptlabel with
# the given extras (default: all; "base" for none, the device install). CI, the Makefile and the
# Docker images all install through this script, so what CI tests is what they ship.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
if [ "$extras" = "base" ]; then
  "$venv/bin/python" -m pip install --quiet -e .
else
  # No pin on torch: pip resolves the newest build (see README, "Installing").
  "$venv/bin/python" -m pip install --quiet -e ".[${extras}]"
fi
