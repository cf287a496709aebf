"""The Python API: ``with mef3fs.mount(source, mountpoint=None, **options) as root``.

Everything through a real mount: the context manager runs the real command
in daemon mode. Checked here: the temporary mountpoint is made and removed,
an explicit one is left as it was, an exception inside the ``with`` still
unmounts and is re-raised unchanged, the options reach the daemon (seen in
.mef3fs-stats.json, the mount table, info.json), failures raise MountError
with the command's one line, the daemon and its workers end after the
block, and ``import mef3fs`` stays light.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import mef3fs
from mef3fs import MountError
from tests.conftest import (REPO, is_mounted, proc_table, read_info, read_stats,
                            reference, subprocess_env, wait_gone)

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


class Boom(Exception):
    """Raised inside the with-block by the tests."""


def mount_options(path):
    """The FUSE mount's options from /proc/self/mountinfo (both option fields)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == real:
                sep = fields.index("-")
                return set(fields[5].split(",")) | set(fields[sep + 3].split(","))
    return None


def all_server_processes(mountpoint):
    """The daemon(s) for this mountpoint and all their descendants (workers)."""
    table = proc_table()
    roots = {p for p, row in table.items()
             if str(mountpoint) in row["cmdline"] and "mef3fs" in row["cmdline"]
             and p != os.getpid()}
    out = set(roots)
    frontier = set(roots)
    while frontier:
        frontier = {p for p, row in table.items() if row["ppid"] in frontier and p not in out}
        out |= frontier
    return {p: table[p]["start"] for p in out if table[p]["state"] != "Z"}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder, for this test only: what mount() leaves there shows."""
    d = tmp_path / "tempdir"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture(scope="module")
def night1(corpus):
    """A small session (two 256 Hz channels, 10 s) inside folders of SOURCE."""
    rel = "sub-01/ses-1/night1.mefd"
    return corpus.source, rel, corpus.sessions[rel]


# ---------------------------------------------------------------------------
# mount / unmount
# ---------------------------------------------------------------------------

def test_temporary_mountpoint_is_mounted_then_removed(night1, private_tmp):
    source, rel, session = night1
    with mef3fs.mount(source, workers=1) as root:
        assert isinstance(root, Path)
        assert root.is_absolute()
        assert root.parent == private_tmp.resolve()
        assert is_mounted(root), "mount() returned before the mount was in the mount table"
        info = read_info(root / rel)
        assert info["status"] == "ok"
        ch = info["channels"][0]
        data = np.fromfile(root / rel / ch["file"], dtype="<f4")
        assert data.tobytes() == reference(session, ch["name"]).tobytes()
        daemons = all_server_processes(root)
        assert daemons, "no process serves the mount?"
    assert not is_mounted(root)
    assert not root.exists(), "the temporary mountpoint was not removed"
    assert os.listdir(private_tmp) == []
    left = wait_gone(daemons, timeout=10)
    assert not left, f"processes of the mount still alive after the with-block: {left}"


def test_given_mountpoint_is_kept(night1, tmp_path):
    source, rel, _ = night1
    mp = tmp_path / "mnt here"  # a space: escaped in /proc/self/mountinfo
    mp.mkdir()
    with mef3fs.mount(str(source), str(mp), workers=1) as root:
        assert root == mp.resolve()
        assert is_mounted(mp)
        assert (root / rel / "info.json").is_file()
    assert not is_mounted(mp)
    assert mp.is_dir() and os.listdir(mp) == [], "a given mountpoint must be left as it was"


def test_exception_inside_with_unmounts_and_reraises(night1):
    source, rel, _ = night1
    seen = {}
    with pytest.raises(Boom, match="inside the block") as excinfo:
        with mef3fs.mount(source, workers=1) as root:
            seen["root"] = root
            seen["procs"] = all_server_processes(root)
            np.load(root / rel / "C1.npy", mmap_mode="r")[:100].copy()
            raise Boom("inside the block")
    assert type(excinfo.value) is Boom
    root = seen["root"]
    assert not is_mounted(root)
    assert not root.exists()
    assert not wait_gone(seen["procs"], timeout=10)


def test_keyboard_interrupt_inside_with_unmounts(night1):
    source, _, _ = night1
    seen = {}
    with pytest.raises(KeyboardInterrupt):
        with mef3fs.mount(source, workers=1) as root:
            seen["root"] = root
            raise KeyboardInterrupt
    assert not is_mounted(seen["root"])
    assert not seen["root"].exists()


def test_file_still_open_after_the_block_detaches(night1):
    """A file held open past the block makes the mount busy: mount() retries,
    then detaches lazily, so the tree is gone from the mount table at once;
    the daemon ends once the file is closed."""
    source, rel, session = night1
    with mef3fs.mount(source, workers=1) as root:
        procs = all_server_processes(root)
        f = open(root / rel / "C2.f32", "rb")
    try:
        assert not is_mounted(root)
        # the open file is still served, byte for byte
        assert f.read(4000) == reference(session, "C2").tobytes()[:4000]
    finally:
        f.close()
    assert not wait_gone(procs, timeout=15)


def test_two_mounts_at_once(night1, corpus):
    source, rel, _ = night1
    with mef3fs.mount(source, workers=1) as a, \
            mef3fs.mount(corpus.sessions["gaps.mefd"], workers=1) as b:
        assert a != b
        assert (a / rel / "info.json").is_file()
        assert (b / "info.json").is_file()  # SOURCE is one session: its files at the root
    assert not is_mounted(a) and not is_mounted(b)


# ---------------------------------------------------------------------------
# options reach the command
# ---------------------------------------------------------------------------

def test_options_are_passed_through(night1):
    source, rel, _ = night1
    with mef3fs.mount(source, cache_size="64M", workers=2, decoder="mef_tools",
                      fuse_options=["allow_other"]) as root:
        s = read_stats(root)
        assert s["cache_budget"] == 64 * 2**20, s
        if "decoder" in s:
            assert s["decoder"] == "mef_tools", s
        opts = mount_options(root)
        assert opts is not None and "allow_other" in opts, opts
        # some reads so that the workers exist
        for name in ("C1", "C2"):
            np.fromfile(root / rel / f"{name}.f32", dtype="<f4")
        s = read_stats(root)
        assert len(s["worker_pids"]) == 2, s


def test_option_spelling():
    from mef3fs.api import _option_args
    assert _option_args({"cache_size": "64M", "workers": 2, "o": "allow_other",
                         "fuse_options": ["ro", "max_read=65536"], "readahead": 0,
                         "host_root": Path("/h"), "some_flag": True, "off": False,
                         "unset": None}) == [
        "-o", "allow_other,ro,max_read=65536", "--cache-size", "64M", "--workers", "2",
        "--readahead", "0", "--host-root", "/h", "--some-flag"]


def test_sizes_as_numbers_and_flags(night1, tmp_path):
    source, _, _ = night1
    log = tmp_path / "daemon.log"
    with mef3fs.mount(source, cache_size=3 * 2**20, workers=0, readahead=0,
                      log_file=log) as root:
        s = read_stats(root)
        assert s["cache_budget"] == 3 * 2**20
        assert s["worker_pids"] == []
    assert log.exists(), "log_file= did not reach the daemon"


def test_password_is_passed_and_not_on_the_command_line(encrypted, private_tmp):
    with mef3fs.mount(encrypted.source, password=encrypted.password2, workers=1) as root:
        info = read_info(root / encrypted.rel)
        assert info["status"] == "ok", info
        for ch in info["channels"]:
            got = np.fromfile(root / encrypted.rel / ch["file"], dtype="<f4")
            want = reference(encrypted.session, ch["name"], encrypted.password2)
            assert got.tobytes() == want.tobytes()
        cmdlines = [row["cmdline"] for row in proc_table().values()]
        assert not any(encrypted.password2 in c for c in cmdlines), \
            "the password is visible in a process's command line"
    assert os.listdir(private_tmp) == [], \
        "the temporary password file or mountpoint was not removed with the mount"


def test_without_password_the_encrypted_session_says_why(encrypted):
    with mef3fs.mount(encrypted.source, workers=0) as root:
        info = read_info(root / encrypted.rel)
        assert info["status"] == "error"
        assert info["channels"] == []


# ---------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------

def test_missing_source_raises_mount_error(tmp_path, private_tmp):
    with pytest.raises(MountError) as excinfo:
        with mef3fs.mount(tmp_path / "no-such-source"):
            pytest.fail("the body must not run")
    err = excinfo.value
    assert isinstance(err, RuntimeError)
    assert "no-such-source" in str(err)
    assert "\n" not in str(err)
    assert err.returncode == 2
    assert os.listdir(private_tmp) == [], "a temporary mountpoint was left behind"


def test_unknown_option_raises_mount_error(night1):
    source, _, _ = night1
    with pytest.raises(MountError, match="no_such_option|no-such-option") as excinfo:
        with mef3fs.mount(source, no_such_option=1):
            pytest.fail("the body must not run")
    assert excinfo.value.returncode == 2


def test_busy_mountpoint_raises_mount_error(night1, tmp_path):
    source, _, _ = night1
    mp = tmp_path / "mp"
    mp.mkdir()
    (mp / "something").write_text("x")
    with pytest.raises(MountError, match="not empty"):
        with mef3fs.mount(source, mp):
            pytest.fail("the body must not run")
    assert (mp / "something").read_text() == "x"


def test_foreground_is_refused(night1):
    source, _, _ = night1
    with pytest.raises(ValueError, match="foreground"):
        with mef3fs.mount(source, foreground=True):
            pytest.fail("the body must not run")
    with pytest.raises(ValueError, match="debug"):
        with mef3fs.mount(source, debug=True):
            pytest.fail("the body must not run")


# ---------------------------------------------------------------------------
# import stays light
# ---------------------------------------------------------------------------

def test_import_is_light():
    code = ("import sys, mef3fs\n"
            "assert callable(mef3fs.mount)\n"
            "assert issubclass(mef3fs.MountError, RuntimeError)\n"
            "heavy = [m for m in ('mfusepy', 'fuse', 'mef3io', 'mef_tools', 'pymef', 'numpy')\n"
            "         if m in sys.modules]\n"
            "print(heavy)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(REPO), env=subprocess_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", f"import mef3fs; mef3fs.mount pulled in {res.stdout}"
