"""The image as shipped: built from the Dockerfile and run with README's own
`docker build` / `docker run` lines, by a real engine (podman, see
tests/containers.py), the mount checked from the host.

README's lines are taken from README.md and run with `podman` in place of
`docker`; only the two host paths (SOURCE, MOUNTPOINT) are this test's. The
image is built once per run (module fixture) and the build's cost printed.
The host mountpoint is made a shared bind mount first, as it is on a systemd
host (our machines' `/` is private, so `:rshared` alone would keep the mount
inside the container).
"""
from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import descendants, mef3fs_cmd, proc_table, subprocess_env, wait_gone
from tests.containers import Podman, new_root, require_engine, stand_in_base
from tests.sessions import build_small_session, reference_bytes
from tests.test_docker import docker_run_lines, parse_dockerfile, split_docker_run
from tests.users import BOB, ensure_user, fuse_mount_at, probe, sha256, shared_tmpdir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_SOURCE, README_MOUNTPOINT = "/data/study", "/mnt/mef3fs"
MOUNT_TIMEOUT = 90.0            # the container starts, imports numpy, mounts
STOP_GRACE = 10                 # docker/podman stop's default before SIGKILL


def readme_lines():
    """README's `docker build ...` and first `docker run ...` (continuations joined)."""
    text = README.read_text()
    builds = [ln.split("#")[0].strip() for ln in text.splitlines()
              if ln.strip().startswith("docker build ")]
    runs = docker_run_lines(text)
    assert builds and runs, "README's Docker section has a docker build and a docker run line"
    return builds[0], runs[0]


def say(request, text):
    """A line in the test output even under capture (the build's cost, for CI logs)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n[image] {text}", flush=True)


@pytest.fixture(scope="module")
def podman():
    require_engine()
    p = Podman(new_root())
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def image(podman, request):
    """README's `docker build -t mef3fs .`, with podman, on the stand-in base."""
    build, _ = readme_lines()
    tokens = shlex.split(build)
    assert tokens[:2] == ["docker", "build"] and tokens[-1] == "."
    tag = tokens[tokens.index("-t") + 1]
    base = next(a for i, a in parse_dockerfile() if i == "FROM").split()[0]
    times = stand_in_base(podman, base)
    t0 = time.monotonic()
    podman("build", *tokens[2:-1], REPO, timeout=1500)
    times["build"] = time.monotonic() - t0
    size = podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    say(request, "; ".join(f"{k} {v:.0f} s" for k, v in times.items())
        + f"; image {int(size) / 1e6:.0f} MB")
    return tag


@pytest.fixture
def host(request):
    """A host folder with a session (SOURCE) and a mountpoint that is a shared bind
    mount, both reachable by every user (bob reads through allow_other)."""
    base = shared_tmpdir("mef3fs-image-")
    source, mp = base / "study", base / "mnt"
    source.mkdir()
    mp.mkdir()
    session = build_small_session(source / "sub-01" / "night1.mefd", 8801, seconds=30,
                                  channels=("LA1", "LA2", "LA3"))
    for path in [source, *source.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    subprocess.run(["mount", "--bind", str(mp), str(mp)], check=True)
    subprocess.run(["mount", "--make-shared", str(mp)], check=True)
    try:
        yield source, mp, Path(session)
    finally:
        for _ in range(3):
            if fuse_mount_at(mp) is None:
                break
            subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
        subprocess.run(["umount", str(mp)], capture_output=True)
        if os.path.ismount(mp):
            subprocess.run(["umount", "-l", str(mp)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def readme_run(podman, image, source, mp):
    """README's docker run line, with podman, our SOURCE and MOUNTPOINT."""
    _, line = readme_lines()
    opts, img, args = split_docker_run(line)
    assert img == image and args[-2:] == [README_SOURCE, README_MOUNTPOINT], line
    bind = f"{README_MOUNTPOINT}:{README_MOUNTPOINT}:rshared"
    assert bind in opts, line
    opts = [f"{mp}:{mp}:rshared" if o == bind else o for o in opts]
    name = opts[opts.index("--name") + 1]
    podman("rm", "--force", name, check=False)
    podman("run", *opts, img, *args[:-2], source, mp)
    return name


def wait_fuse(mp, podman, name):
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while time.monotonic() < deadline:
        if fuse_mount_at(mp) is not None:
            return
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state not in ("created", "running", "configured"):
            break
        time.sleep(0.2)
    logs = podman("logs", name, check=False)
    pytest.fail(f"no FUSE mount at {mp} on the host within {MOUNT_TIMEOUT} s "
                f"(container {state}):\n{logs.stdout}{logs.stderr}", pytrace=False)


def container_processes(podman, name):
    """Host pid -> start time of conmon, the container's init and all below them."""
    pids = podman("inspect", "--format", "{{.State.ConmonPid}} {{.State.Pid}}", name).stdout.split()
    table = proc_table()
    family = set()
    for pid in map(int, pids):
        if pid > 0:
            family |= {pid} | descendants(pid, table)
    return {p: table[p]["start"] for p in family if p in table}


def test_readme_docker_run_mounts_on_the_host_and_stops_clean(podman, image, host):
    source, mp, session = host
    name = readme_run(podman, image, source, mp)
    wait_fuse(mp, podman, name)
    # on the host, byte-exact against mef3io, every channel
    sdir = mp / "sub-01" / "night1.mefd"
    info = json.loads((sdir / "info.json").read_bytes())
    assert info["session"] == f"{source}/sub-01/night1.mefd", "host paths, not /host_root/..."
    assert [c["name"] for c in info["channels"]] == ["LA1", "LA2", "LA3"]
    for ch in info["channels"]:
        assert (sdir / ch["file"]).read_bytes() == reference_bytes(str(session), ch["name"])
    # -o allow_other: another host user reads it too (the source is world-readable)
    bob = ensure_user(BOB)
    assert probe(bob, "read", sdir / "LA1.f32") == sha256(reference_bytes(str(session), "LA1"))
    family = container_processes(podman, name)
    assert len(family) >= 3, family          # conmon, init (--init), mef3fs (+ workers)

    t0 = time.monotonic()
    podman("stop", name, timeout=STOP_GRACE + 30)             # README: docker stop mef3fs
    took = time.monotonic() - t0
    state = podman("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", name)
    logs = podman("logs", name).stderr
    assert state.stdout.split() == ["0", "false"], logs
    assert took < STOP_GRACE, f"stop took {took:.1f} s: SIGKILL, not a clean exit"
    assert fuse_mount_at(mp) is None, "the FUSE mount is still on the host"
    assert os.listdir(mp) == []
    left = wait_gone(family, timeout=10)
    assert not left, f"processes left after stop: {left}"
    assert "unmounted" in logs and "Traceback" not in logs, logs
    podman("rm", name)


def test_killed_container_leaves_a_dead_mount_that_fusermount3_clears(podman, image, host):
    """README: after a SIGKILL the host has a dead mount (ENOTCONN), mef3fs refuses it
    as a MOUNTPOINT saying how to clear it, and `fusermount3 -u` clears it."""
    source, mp, _ = host
    name = readme_run(podman, image, source, mp)
    wait_fuse(mp, podman, name)
    family = container_processes(podman, name)
    podman("kill", name)                                       # SIGKILL
    assert not wait_gone(family, timeout=20)
    with pytest.raises(OSError) as exc:
        os.listdir(mp)
    assert exc.value.errno == errno.ENOTCONN
    out = subprocess.run(mef3fs_cmd(source, mp), capture_output=True, text=True, timeout=60,
                         env=subprocess_env(), stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and f"fusermount3 -u {mp}" in out.stderr, out.stderr
    assert subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True).returncode == 0
    assert fuse_mount_at(mp) is None and os.listdir(mp) == []
    podman("rm", name)
