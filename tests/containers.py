"""A container engine for the image tests that needs no image registry.

podman from Debian's packages, with everything it keeps (storage, state,
events) in one folder that the tests delete afterwards, so a run neither
reads nor leaves podman state elsewhere. What our machines need (see
docs/docker.md, "Built and run here"):

* runtime runc (crun 1.8 refuses the hybrid cgroups here), storage overlay;
* default ulimits that do not raise anything (raising is refused here);
* the Dockerfile's base image, `python:3.11-slim-bookworm`, cannot be pulled:
  a stand-in with the same name is made from Debian bookworm with mmdebstrap
  (python3 + a venv on PATH, as the real image has pip on PATH), carrying
  the host's CA certificates, because downloads go through a TLS-intercepting
  proxy. Where the real image is already in storage it is used instead.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PACKAGES = {"podman": "podman", "runc": "runc", "mmdebstrap": "mmdebstrap",
            "/usr/libexec/podman/catatonit": "catatonit"}
HOST_CA_GLOB = "/usr/local/share/ca-certificates/*.crt"
STAND_IN_PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def require_engine() -> None:
    """Skip without podman and its helpers; in CI (CI=true) that is a failure:
    scripts/setup.sh --with-podman installs them."""
    missing = [pkg for tool, pkg in PACKAGES.items()
               if not (os.path.exists(tool) if tool.startswith("/") else shutil.which(tool))]
    why = None
    if missing:
        why = f"not installed: {' '.join(missing)} (bash scripts/setup.sh --with-podman)"
    elif os.geteuid() != 0:
        why = "the image tests run podman as root"
    elif not os.path.exists("/dev/fuse"):
        why = "no /dev/fuse"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


class Podman:
    """`podman` with its own configuration and storage under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.root / "containers.conf"
        conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.root}/events.log"\n'
            f'tmp_dir = "{self.root}/tmp"\n'
            "[network]\n"
            f'network_config_dir = "{self.root}/cni"\n')
        storage = self.root / "storage.conf"
        storage.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.root}/storage"\n'
            f'runroot = "{self.root}/run"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf),
                        CONTAINERS_STORAGE_CONF=str(storage), TMPDIR=str(self.root / "tmp"))

    def __call__(self, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
        out = subprocess.run(["podman", *map(str, args)], capture_output=True, text=True,
                             env=self.env, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise AssertionError(f"podman {' '.join(map(str, args))} exited {out.returncode}:\n"
                                 f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out

    def close(self) -> None:
        """Remove every container and image, undo podman's mounts, delete the folder."""
        with contextlib.suppress(Exception):
            self("rm", "--all", "--force", "--time", "0", timeout=60, check=False)
        with contextlib.suppress(Exception):
            self("system", "reset", "--force", timeout=120, check=False)
        for target in sorted(self._mounts_under(), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _mounts_under(self) -> list[str]:
        prefix = str(self.root) + "/"
        with open("/proc/self/mountinfo") as f:
            return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def stand_in_base(podman: Podman, name: str) -> dict:
    """Make `name` (the Dockerfile's FROM) from Debian bookworm; returns timings (s)."""
    times = {}
    if podman("image", "exists", name, check=False).returncode == 0:
        return times
    rootfs = podman.root / "rootfs.tar"
    hooks = [
        'mkdir -p "$1/usr/local/share/ca-certificates"',
        *[f'cp {shlex.quote(ca)} "$1/usr/local/share/ca-certificates/"'
          for ca in sorted(glob.glob(HOST_CA_GLOB))],
        'chroot "$1" update-ca-certificates',
        'chroot "$1" python3 -m venv /opt/venv',
        'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
    ]
    t0 = time.monotonic()
    cmd = ["mmdebstrap", "--quiet", "--variant=minbase", "--mode=root",
           "--include=ca-certificates,python3,python3-venv"]
    cmd += [f"--customize-hook={h}" for h in hooks]
    cmd += ["bookworm", str(rootfs)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         env=dict(podman.env, TMPDIR=str(podman.root / "tmp")))
    assert out.returncode == 0, f"mmdebstrap failed:\n{out.stderr[-4000:]}"
    times["mmdebstrap"] = time.monotonic() - t0
    t0 = time.monotonic()
    podman("import", "--quiet", "--change", f"ENV PATH={STAND_IN_PATH}",
           "--change", 'CMD ["python3"]', rootfs, f"docker.io/library/{name}", timeout=600)
    rootfs.unlink()
    times["import"] = time.monotonic() - t0
    return times


def new_root() -> Path:
    """Where one run keeps its podman state: outside the repository (the build context)."""
    return Path(tempfile.mkdtemp(prefix="mef3fs-podman-", dir="/var/tmp"))
