#!/usr/bin/env bash
# Set everything up, then run the whole test suite (real FUSE mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-octave
exec .venv/bin/python -m pytest "$@"
