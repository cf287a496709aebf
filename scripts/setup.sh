#!/usr/bin/env bash
# Everything mef3fs needs on a fresh Debian/Ubuntu machine, as root:
# FUSE (libfuse3 + fusermount3), getfattr, python3 with venv, and the Python
# environment in .venv/. For the tests (scripts/test.sh): --with-octave, GNU
# Octave for the MATLAB example (and BioSig, a BrainVision reader, for the
# BrainVision test); --with-podman, a container engine that builds and runs
# the Dockerfile (tests/test_image.py). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3 python3-venv fuse3 libfuse3-3 attr)
for arg in "$@"; do
    case "$arg" in
        --with-octave) packages+=(octave octave-biosig) ;;   # BioSig: a BrainVision reader in Octave
        # runc: crun 1.8 refuses hybrid cgroups; catatonit: `run --init`;
        # mmdebstrap: the image's base where no image registry is reachable
        --with-podman) packages+=(podman runc catatonit mmdebstrap) ;;
        *) echo "setup: unknown option $arg (--with-octave, --with-podman)" >&2; exit 2 ;;
    esac
done

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: need root to install: ${missing[*]}" >&2; exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing (in Docker: --device /dev/fuse --cap-add SYS_ADMIN)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# pip's and the build backend's chatter goes to a log, shown only on failure
if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip &&
       .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"; } > .venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    echo "setup: pip install failed (log above)" >&2
    exit 1
fi
echo "setup: ready ($(.venv/bin/mef3fs --version), $(dpkg-query -W -f='libfuse3 ${Version}' libfuse3-3))"
