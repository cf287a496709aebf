#!/usr/bin/env bash
# Set everything up, then run the whole test suite (real FUSE mounts, the
# Docker image built and run with podman, mounts by ordinary users).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-octave --with-podman
exec .venv/bin/python -m pytest "$@"
