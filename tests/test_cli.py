"""The command line: bad invocations, daemon and foreground life cycles,
signals, live SOURCE changes, lazy session opening, -d logging."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.conftest import (
    EXIT_TIMEOUT,
    channel_files,
    descendants,
    fuse_unmount,
    is_mounted,
    mef3fs_cmd,
    mounted_paths,
    proc_table,
    read_stats,
    subprocess_env,
    wait_gone,
)
from tests.sessions import add_session_atomically, build_small_session, reference

CLI_TIMEOUT = 60


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    """SOURCE with several small sessions (one nested)."""
    src = tmp_path_factory.mktemp("cli") / "source"
    src.mkdir()
    for k, name in enumerate(("a.mefd", "b.mefd", "c.mefd")):
        build_small_session(src / name, 2000 + k, seconds=5)
    (src / "sub").mkdir()
    build_small_session(src / "sub" / "d.mefd", 2010, seconds=5)
    return src


def run_cli(*args, timeout=CLI_TIMEOUT):
    """Run mef3fs with pipes (as a script would) and return CompletedProcess."""
    try:
        return subprocess.run(mef3fs_cmd(*args), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, env=subprocess_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mef3fs {args} did not return within {timeout} s (or kept its "
                    f"stdout/stderr open): {exc}", pytrace=False)


def _mounts_touching(*paths):
    """Mount table entries (mountpoint, fs source) that involve any of
    ``paths`` -- other mounts on the machine (other test runs, benchmarks)
    are none of this test's business."""
    keys = [str(p) for p in paths]
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            mp = fields[4] if len(fields) > 4 else ""
            src = post.split()[1] if len(post.split()) > 1 else ""
            if any(k in mp or k in src for k in keys):
                out.append((mp, src))
    return sorted(out)


def _assert_one_error_line(res):
    lines = res.stderr.strip("\n").splitlines()
    assert res.returncode == 2, f"exit {res.returncode}, stderr: {res.stderr!r}"
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}: {res.stderr!r}"
    assert lines[0].startswith("mef3fs: error:"), lines[0]


def _emergency_cleanup(mp):
    """Unmount and kill whatever serves ``mp`` (used when a test failed midway)."""
    table = proc_table()
    pids = {p for p, row in table.items() if str(mp) in row["cmdline"] and p != os.getpid()}
    for p in list(pids):
        pids |= descendants(p, table)
    if is_mounted(mp):
        fuse_unmount(mp)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------
# bad command lines: exit 2, one line, nothing mounted
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["source-missing", "source-plain-file", "mountpoint-missing",
                                  "mountpoint-not-empty", "unknown-option",
                                  "unknown-option-foreground", "missing-arguments"])
def test_bad_command_line(tmp_path, small_source, case):
    mp = tmp_path / "mnt"
    mp.mkdir()
    src = small_source
    before = _mounts_touching(tmp_path, small_source)
    log = tmp_path / "log.txt"
    if case == "source-missing":
        args = ["--log-file", log, tmp_path / "no-such-source", mp]
    elif case == "source-plain-file":
        plain = tmp_path / "notes.txt"
        plain.write_text("not a session\n")
        args = ["--log-file", log, plain, mp]
    elif case == "mountpoint-missing":
        args = ["--log-file", log, src, tmp_path / "no-such-mnt"]
    elif case == "mountpoint-not-empty":
        (mp / "something").write_text("x")
        args = ["--log-file", log, src, mp]
    elif case == "unknown-option":
        args = ["--no-such-option", src, mp]
    elif case == "unknown-option-foreground":
        args = ["-f", "--bogus=1", src, mp]
    else:
        args = [src]
    try:
        res = run_cli(*args)
        _assert_one_error_line(res)
        assert not is_mounted(mp)
        assert _mounts_touching(tmp_path, small_source) == before, "something was mounted"
    finally:
        _emergency_cleanup(mp)


def test_mountpoint_already_a_mount(mount_fs, small_source):
    m = mount_fs(small_source)
    before = _mounts_touching(m.root, small_source)
    res = run_cli("--log-file", m.root.parent / "second.log", small_source, m.root)
    try:
        _assert_one_error_line(res)
        assert mounted_paths().count(str(m.root)) == 1, "mounted twice"
        assert _mounts_touching(m.root, small_source) == before
        # the first mount is unaffected
        assert json.loads((m.root / "a.mefd" / "info.json").read_bytes())
        assert m.proc.poll() is None
    finally:
        if mounted_paths().count(str(m.root)) > 1:
            fuse_unmount(m.root)


def test_version_and_help():
    res = run_cli("--version")
    assert res.returncode == 0, res.stderr
    assert "mef3fs" in (res.stdout + res.stderr)
    res = run_cli("--help")
    assert res.returncode == 0, res.stderr
    assert "SOURCE" in res.stdout and "MOUNTPOINT" in res.stdout
    for opt in ("--foreground", "--debug", "--decoder", "--password", "--password-file",
                "--log-file", "--workers"):
        assert opt in res.stdout, opt


# ---------------------------------------------------------------------------
# daemon mode
# ---------------------------------------------------------------------------

def test_daemon_mode(tmp_path, small_source):
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "daemon.log"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    try:
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen(mef3fs_cmd("--log-file", log, small_source, mp), stdout=o,
                                    stderr=e, stdin=subprocess.DEVNULL, env=subprocess_env())
        try:
            rc = proc.wait(timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"the command did not return within {CLI_TIMEOUT} s", pytrace=False)
        mounted_now = os.path.ismount(mp)  # immediately after the command returned
        assert rc == 0, f"exit {rc}: {err.read_text()!r}"
        assert mounted_now, "the command returned before the mount was ready"

        # reads work
        f = channel_files(mp / "a.mefd")["C1"]
        assert f.read_bytes() == reference(small_source / "a.mefd", "C1").tobytes()
        f = channel_files(mp / "sub" / "d.mefd")["C2"]
        assert f.read_bytes() == reference(small_source / "sub" / "d.mefd", "C2").tobytes()

        # every process serving the mount: the daemon (its command line names
        # the mountpoint), its descendants, and the workers the stats list
        table = proc_table()
        daemons = {p for p, row in table.items()
                   if str(mp) in row["cmdline"] and "mef3fs" in row["cmdline"]}
        assert daemons, "no daemon process found"
        pids = set(daemons)
        for p in daemons:
            pids |= descendants(p, table)
        try:
            stats = json.loads((mp / ".mef3fs-stats.json").read_bytes())
            pids |= {p for p in stats.get("worker_pids", []) if p in table}
        except (OSError, ValueError):
            pass
        ident = {p: table[p]["start"] for p in pids if p in table}

        res = subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert not is_mounted(mp)
        left = wait_gone(ident, EXIT_TIMEOUT)
        assert not left, f"processes left {EXIT_TIMEOUT} s after fusermount3 -u: {left}"
        table = proc_table()
        mention = {p: row["cmdline"] for p, row in table.items()
                   if str(mp) in row["cmdline"] and row["state"] != "Z" and p != os.getpid()}
        assert not mention, f"processes still mention the mountpoint: {mention}"
    finally:
        _emergency_cleanup(mp)


# ---------------------------------------------------------------------------
# foreground mode and signals
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sig,target", [(signal.SIGTERM, "pid"), (signal.SIGINT, "pid"),
                                        (signal.SIGINT, "group")],
                         ids=["SIGTERM", "SIGINT", "SIGINT-to-group(Ctrl-C)"])
def test_signal_unmounts_cleanly(mount_fs, small_source, sig, target):
    m = mount_fs(small_source)
    # make it busy enough that worker processes exist
    for rel in ("a.mefd", "b.mefd", "sub/d.mefd"):
        for p in channel_files(m.root / rel).values():
            p.read_bytes()
    m.track()
    if target == "group":
        os.killpg(m.pgid, sig)
    else:
        m.proc.send_signal(sig)
    rc = m.wait_exit(EXIT_TIMEOUT)
    assert rc is not None, f"mef3fs still running {EXIT_TIMEOUT} s after {sig.name}"
    assert rc == 0, f"exit code {rc} after {sig.name}\n{m.diagnostics()}"
    assert not is_mounted(m.root), f"still mounted after {sig.name}"
    left = m.leftovers()
    assert not left, f"processes left after {sig.name}: {left}"

    # the same mountpoint can be used again at once
    assert os.listdir(m.root) == []
    m2 = mount_fs(small_source, mountpoint=m.root)
    f = channel_files(m2.root / "b.mefd")["C2"]
    assert f.read_bytes() == reference(small_source / "b.mefd", "C2").tobytes()


def test_unmount_ends_foreground_process(mount_fs, small_source):
    m = mount_fs(small_source)
    channel_files(m.root / "c.mefd")["C1"].read_bytes()
    rc = m.unmount()  # asserts no process of the group is left
    assert rc == 0


# ---------------------------------------------------------------------------
# the SOURCE tree is live, sessions are opened lazily
# ---------------------------------------------------------------------------

def test_session_added_while_mounted_appears(mount_fs, tmp_path):
    src = tmp_path / "live"
    src.mkdir()
    build_small_session(src / "first.mefd", 3000, seconds=5)
    m = mount_fs(src)
    assert set(os.listdir(m.root)) - {".mef3fs-stats.json"} == {"first.mefd"}
    channel_files(m.root / "first.mefd")["C1"].read_bytes()

    added = add_session_atomically(src, "second.mefd", seed=3001)
    nested = add_session_atomically(src, "sub-02/ses-1/third.mefd", seed=3002)
    want = {"first.mefd", "second.mefd", "sub-02"}
    deadline = time.monotonic() + 10
    seen = set()
    while time.monotonic() < deadline:
        seen = set(os.listdir(m.root)) - {".mef3fs-stats.json"}
        if seen == want:
            break
        time.sleep(0.2)
    assert seen == want, f"listing {sorted(seen)} after adding sessions"
    for rel, path in (("second.mefd", added), ("sub-02/ses-1/third.mefd", nested)):
        files = channel_files(m.root / rel)
        assert sorted(files) == ["C1", "C2"]
        for ch, p in files.items():
            assert p.read_bytes() == reference(path, ch).tobytes()


def test_sessions_open_lazily(mount_fs, small_source):
    m = mount_fs(small_source, "--statahead", "0")      # test_statahead.py: what it opens ahead
    assert read_stats(m)["sessions_open"] == 0, "sessions opened at mount time"
    # ls and ls -l of the folders that hold sessions open none of them
    for d in (m.root, m.root / "sub"):
        for name in os.listdir(d):
            os.stat(d / name)
    assert read_stats(m)["sessions_open"] == 0, "listing the mount opened sessions"
    json.loads((m.root / "b.mefd" / "info.json").read_bytes())
    assert read_stats(m)["sessions_open"] == 1
    json.loads((m.root / "b.mefd" / "info.json").read_bytes())
    assert read_stats(m)["sessions_open"] == 1


def test_debug_logs_fuse_calls(mount_fs, small_source):
    m = mount_fs(small_source, "-d")
    p = channel_files(m.root / "c.mefd")["C2"]
    p.read_bytes()
    fd = os.open(p, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.pread(fd, 100, 1234)
    finally:
        os.close(fd)
    text = m.log_text()
    rel = "/c.mefd/" + p.name
    reads = [ln for ln in text.splitlines() if rel in ln and "read" in ln.lower()]
    assert reads, f"-d log has no line for a read of {rel}:\n{text[-3000:]}"
    assert any("getattr" in ln.lower() or "lookup" in ln.lower() or "open" in ln.lower()
               for ln in text.splitlines() if rel in ln), "no other FUSE call logged for the path"


def test_daemon_returns_when_output_is_captured(tmp_path, small_source):
    """`out=$(mef3fs SOURCE MNT)` or subprocess.run(capture_output=True): the
    command must return once mounted, so no process that outlives it may
    keep the caller's stdout/stderr pipes open."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = subprocess.Popen(mef3fs_cmd("--log-file", tmp_path / "log.txt", small_source, mp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=subprocess_env())
    try:
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            holders = _pipe_holders(proc)
            mounted = os.path.ismount(mp)
            rc = proc.poll()
            # do not read the pipes again: whoever holds them keeps them open
            proc.stdout.close()
            proc.stderr.close()
            if rc is None:
                proc.kill()
                proc.wait()
            pytest.fail("the command's stdout/stderr stayed open after it returned "
                        f"(exit code {rc}, mounted: {mounted}); "
                        f"processes holding them: {holders}", pytrace=False)
        assert proc.returncode == 0, err
        assert os.path.ismount(mp)
    finally:
        _emergency_cleanup(mp)


def _pipe_holders(proc):
    inodes = {os.fstat(s.fileno()).st_ino for s in (proc.stdout, proc.stderr)}
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if any(link == f"pipe:[{i}]" for i in inodes):
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        out.setdefault(int(pid), f.read().replace(b"\0", b" ").decode()[:120])
        except OSError:
            continue
    return out
