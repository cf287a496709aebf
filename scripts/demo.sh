#!/usr/bin/env bash
# Set everything up, mount the bundled example recording, read it, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
