"""The decoder pool's life cycle (issue 14, items 5 and 6), through real mounts.

* `--workers` above a few per CPU is refused before anything is mounted, with
  one line that names the option;
* SIGTERM while the workers are still starting ends the daemon within
  seconds, and every process it started is gone;
* nothing outlives the daemon, not even for a moment: the workers are plain
  subprocesses (no multiprocessing resource tracker) and are reaped before the
  daemon exits, so once it is gone none of them exists, not even as a zombie.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import descendants, mef3fs_cmd, proc_table, read_stats, subprocess_env
from tests.sessions import reference
from tests.test_engine import build_long_session, session_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    src = tmp_path_factory.mktemp("pool")
    build_long_session(src / "long.mefd")
    return src


def cap() -> int:
    from mef3fs.engine import max_workers
    return max_workers()


def test_too_many_workers_is_a_usage_error(source, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(mef3fs_cmd("--workers", "1000", source, mnt), capture_output=True, text=True,
                         timeout=60, env=subprocess_env(), cwd=REPO)
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mef3fs: error:") and "--workers" in lines[0], res.stderr
    assert str(cap()) in lines[0], res.stderr
    assert not os.path.ismount(mnt)


def _everyone(pid: int) -> dict:
    table = proc_table()
    return {p: table[p]["start"] for p in {pid} | descendants(pid, table) if p in table}


def _alive(identities: dict, zombies: bool = False) -> dict:
    """Those of {pid: start time} still there (zombies too, if asked)."""
    table = proc_table()
    return {p: table[p]["cmdline"][:100] for p, st in identities.items()
            if p in table and table[p]["start"] == st and (zombies or table[p]["state"] != "Z")}


def test_sigterm_while_workers_start_ends_promptly(mount_fs, source):
    """As many workers as allowed, SIGTERM the moment the mount is up: they are
    still importing. The daemon ends within seconds and leaves no process."""
    m = mount_fs(source, "--workers", str(cap()))
    seen = _everyone(m.proc.pid)
    os.kill(m.proc.pid, signal.SIGTERM)
    t = time.monotonic()
    while m.proc.poll() is None and time.monotonic() - t < 15:
        seen.update({p: s for p, s in _everyone(m.proc.pid).items() if p not in seen})
        time.sleep(0.02)
    took = time.monotonic() - t
    assert m.proc.returncode == 0, f"daemon still running {took:.1f} s after SIGTERM"
    assert took < 10, f"the daemon took {took:.1f} s to end after SIGTERM"
    assert len(seen) > 1, "no worker process was ever seen"
    assert not _alive(seen), f"left behind: {_alive(seen)}"


@pytest.mark.parametrize("workers", ("2", "0"))
def test_nothing_outlives_the_daemon(mount_fs, source, workers):
    """Daemon mode: read through the pool, unmount, and at the moment the daemon
    is gone every process it started is gone too (not a zombie either)."""
    m = mount_fs(source, "--workers", workers, foreground=False)
    d = session_dir(m, "long.mefd")
    with open(d / "k1.f32", "rb") as f:
        assert f.read(1 << 20) == reference(source / "long.mefd", "k1").tobytes()[:1 << 20]
    st = read_stats(m)
    assert len(st["worker_pids"]) == int(workers), st
    daemon = [p for p, row in proc_table().items() if str(m.root) in row["cmdline"]
              and "mef3fs" in row["cmdline"] and row["state"] != "Z"]
    assert len(daemon) == 1, daemon
    seen = _everyone(daemon[0])
    assert set(st["worker_pids"]) <= set(seen), (st["worker_pids"], seen)
    assert not any("resource_tracker" in c for c in _alive(seen).values()), _alive(seen)
    subprocess.run(["fusermount3", "-u", str(m.root)], check=True, timeout=30)
    t = time.monotonic()
    while daemon[0] in _alive({daemon[0]: seen[daemon[0]]}) and time.monotonic() - t < 15:
        time.sleep(0.005)
    children = {p: s for p, s in seen.items() if p != daemon[0]}
    left = _alive(children, zombies=True)
    assert not left, f"still there (or zombies) when the daemon was gone: {left}"
