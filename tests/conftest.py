"""Shared fixtures for the mef3fs test suite: real mounts of real sessions.

Fixture and helper names here are used by test files all over the project;
keep them stable.

* ``mount_fs`` (function scope) and ``module_mount_fs`` (module scope):
  factories ``mount_fs(source, *extra_cli_args, foreground=True) -> Mount``.
  They run ``python -m mef3fs [-f] --log-file LOG *extra SOURCE MOUNTPOINT``
  in its own process group, wait (bounded) until MOUNTPOINT is a mount, and
  always unmount on teardown.
* ``corpus`` / ``encrypted`` / ``damaged`` (session scope): SOURCE trees built
  with the real writers by ``tests/sessions.py``.
* ``reference`` and friends are re-exported from ``tests/sessions.py``.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.sessions import (  # noqa: E402  (re-exported for other test files)
    Grid,
    build_corpus,
    build_damaged,
    build_encrypted,
    channels_of,
    reference,
    reference_bytes,
    session_grid,
)

MOUNT_TIMEOUT = 20.0  # seconds to wait for a mount to appear
EXIT_TIMEOUT = 15.0  # seconds to wait for the daemon to end after unmount
STATS_FILE = ".mef3fs-stats.json"

__all__ = [
    "Mount", "Grid", "reference", "reference_bytes", "session_grid", "channels_of",
    "mounted_paths", "is_mounted", "proc_table", "descendants", "group_members",
    "wait_gone", "fuse_unmount", "read_info", "channel_files", "read_stats",
    "mef3fs_cmd", "STATS_FILE",
]


# ---------------------------------------------------------------------------
# process and mount-table helpers
# ---------------------------------------------------------------------------

def _unescape_mountinfo(field):
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounted_paths():
    """Mount points from /proc/self/mountinfo (sees dead FUSE mounts too,
    which os.path.ismount does not: stat on them fails with ENOTCONN)."""
    paths = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                paths.append(_unescape_mountinfo(fields[4]))
    return paths


def is_mounted(path):
    return os.path.realpath(str(path)) in mounted_paths() or str(path) in mounted_paths()


def proc_table():
    """pid -> dict(ppid, pgid, state, start, cmdline) for every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        # fields after "(comm)": state ppid pgrp session ... starttime is field 22
        table[pid] = {"state": rest[0], "ppid": int(rest[1]), "pgid": int(rest[2]),
                      "start": int(rest[19]), "cmdline": cmdline}
    return table


def descendants(pid, table=None):
    table = proc_table() if table is None else table
    out, frontier = set(), {pid}
    while frontier:
        nxt = {p for p, row in table.items() if row["ppid"] in frontier and p not in out}
        out |= nxt
        frontier = nxt
    return out


def group_members(pgid, table=None):
    table = proc_table() if table is None else table
    return {p for p, row in table.items() if row["pgid"] == pgid and row["state"] != "Z"}


def _identity(pids, table):
    return {p: table[p]["start"] for p in pids if p in table}


def alive(identities):
    """The subset of {pid: starttime} still running (same pid AND same start)."""
    table = proc_table()
    return {p: table[p]["cmdline"] for p, start in identities.items()
            if p in table and table[p]["start"] == start and table[p]["state"] != "Z"}


def wait_gone(identities, timeout=EXIT_TIMEOUT):
    deadline = time.monotonic() + timeout
    left = alive(identities)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = alive(identities)
    return left


def fuse_unmount(path):
    """fusermount3 -u, falling back to fusermount -u. Returns the last result."""
    res = None
    for tool in ("fusermount3", "fusermount"):
        try:
            res = subprocess.run([tool, "-u", str(path)], capture_output=True, text=True,
                                 timeout=30)
        except FileNotFoundError:
            continue
        if res.returncode == 0:
            return res
    return res


def mef3fs_cmd(*args):
    return [sys.executable, "-m", "mef3fs", *map(str, args)]


def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# ---------------------------------------------------------------------------
# Mount
# ---------------------------------------------------------------------------

class Mount:
    """One running mef3fs mount (foreground process, or a daemon)."""

    def __init__(self, source, mountpoint, extra, log_path, foreground, workdir):
        self.source = Path(source)
        self.root = Path(mountpoint)
        self.extra = tuple(map(str, extra))
        self.log_path = Path(log_path)
        self.foreground = foreground
        self.stdout_path = Path(workdir) / "stdout.txt"
        self.stderr_path = Path(workdir) / "stderr.txt"
        self.cmd = mef3fs_cmd(*(["-f"] if foreground else []), "--log-file", self.log_path,
                              *self.extra, self.source, self.root)
        self.proc = None
        self.returncode = None  # the foreground process's exit code once it ended
        self._tracked = {}  # pid -> starttime of every process seen serving this mount
        self._unmounted = False

    # -- start ---------------------------------------------------------------

    def start(self):
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=str(REPO), env=subprocess_env())
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if os.path.ismount(self.root):
                self.track()
                return self
            rc = self.proc.poll()
            if rc is not None and (self.foreground or rc != 0):
                self._fail(f"mef3fs exited with {rc} before the mount appeared")
            time.sleep(0.05)
        self._fail(f"no mount at {self.root} within {MOUNT_TIMEOUT} s")

    def _fail(self, why):
        # leave nothing behind, then report with everything we know
        try:
            self._force_cleanup()
        finally:
            pytest.fail(f"{why}\ncommand: {self.cmd}\n{self.diagnostics()}", pytrace=False)

    def diagnostics(self):
        parts = []
        for label, p in (("log", self.log_path), ("stdout", self.stdout_path),
                         ("stderr", self.stderr_path)):
            try:
                text = p.read_text(errors="replace")
            except OSError:
                text = "<missing>"
            parts.append(f"--- {label} ({p}) ---\n{text[-6000:]}")
        return "\n".join(parts)

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- processes -------------------------------------------------------------

    def server_pids(self, table=None):
        """The process(es) serving this mount and all their descendants."""
        table = proc_table() if table is None else table
        roots = set()
        if self.proc is not None:
            roots.add(self.proc.pid)
            roots |= group_members(self.proc.pid, table)
        mp = str(self.root)
        roots |= {p for p, row in table.items()
                  if mp in row["cmdline"] and "mef3fs" in row["cmdline"] and p != os.getpid()}
        pids = set(roots)
        for r in roots:
            pids |= descendants(r, table)
        pids.discard(os.getpid())
        return {p for p in pids if p in table and table[p]["state"] != "Z"}

    def track(self):
        """Remember every process now serving the mount (call after reads, when
        worker processes exist); unmount() checks each of them has ended."""
        table = proc_table()
        self._tracked.update(_identity(self.server_pids(table), table))
        return dict(self._tracked)

    @property
    def pgid(self):
        return self.proc.pid if self.proc is not None else None

    def wait_exit(self, timeout=EXIT_TIMEOUT):
        """Wait for the launched process to end; returns its exit code or None."""
        if self.proc is None:
            return None
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def leftovers(self, timeout=EXIT_TIMEOUT):
        """Processes of this mount still alive after waiting up to ``timeout``."""
        left = wait_gone(self._tracked, timeout)
        deadline = time.monotonic() + timeout
        group = group_members(self.pgid) if self.pgid else set()
        while group and time.monotonic() < deadline:
            time.sleep(0.1)
            group = group_members(self.pgid)
        table = proc_table()
        for p in group:
            if p in table:
                left[p] = table[p]["cmdline"]
        return left

    # -- stop ------------------------------------------------------------------

    def unmount(self):
        """fusermount3 -u (fallback fusermount -u), wait for the process(es) to
        end (kill the group after EXIT_TIMEOUT), assert nothing is left."""
        if self._unmounted:
            return self.returncode
        self._unmounted = True
        self.track()
        problems = []
        if is_mounted(self.root):
            res = fuse_unmount(self.root)
            if is_mounted(self.root):
                problems.append(f"still mounted after fusermount -u: "
                                f"{res.stderr if res is not None else ''}")
                subprocess.run(["fusermount3", "-uz", str(self.root)], capture_output=True)
                subprocess.run(["umount", "-l", str(self.root)], capture_output=True)
        if self.foreground:
            rc = self.wait_exit(EXIT_TIMEOUT)
            if rc is None:
                problems.append(f"mef3fs (pid {self.proc.pid}) still running "
                                f"{EXIT_TIMEOUT} s after unmount; killed")
        left = self.leftovers(EXIT_TIMEOUT if not problems else 2.0)
        if left:
            problems.append(f"processes left after unmount: {left}")
        self._force_cleanup()
        if problems:
            raise AssertionError("; ".join(problems) + "\n" + self.diagnostics())
        return self.returncode

    def _force_cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.pgid:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in alive(self._tracked):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if is_mounted(self.root):
            fuse_unmount(self.root)
        if is_mounted(self.root):
            subprocess.run(["fusermount3", "-uz", str(self.root)], capture_output=True)
        if self.proc is not None and self.proc.poll() is not None:
            self.returncode = self.proc.returncode

    def __repr__(self):
        return f"Mount({self.source} -> {self.root}, extra={self.extra})"


class Mounter:
    """Creates mounts under ``base`` and tears every one of them down."""

    def __init__(self, base):
        self.base = Path(base)
        self.mounts = []
        self._n = 0

    def __call__(self, source, *extra, foreground=True, mountpoint=None):
        self._n += 1
        work = self.base / f"mount{self._n}"
        work.mkdir(parents=True, exist_ok=True)
        mp = Path(mountpoint) if mountpoint is not None else work / "mnt"
        mp.mkdir(exist_ok=True)
        m = Mount(source, mp, extra, work / "mef3fs.log", foreground, work)
        self.mounts.append(m)
        return m.start()

    def close(self):
        errors = []
        for m in reversed(self.mounts):
            try:
                m.unmount()
            except AssertionError as exc:
                errors.append(f"{m}: {exc}")
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                errors.append(f"{m}: {type(exc).__name__}: {exc}")
        self.mounts.clear()
        return errors


@pytest.fixture
def mount_fs(tmp_path):
    """Factory: ``mount_fs(source, *extra_cli_args, foreground=True) -> Mount``."""
    m = Mounter(tmp_path / "mounts")
    yield m
    errors = m.close()
    if errors:
        pytest.fail("unmount at teardown failed:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture(scope="module")
def module_mount_fs(tmp_path_factory):
    """Like ``mount_fs`` but the mounts live for the whole test module."""
    m = Mounter(tmp_path_factory.mktemp("module-mounts"))
    yield m
    errors = m.close()
    if errors:
        pytest.fail("unmount at teardown failed:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def wrapped_mount(tmp_path):
    """Like ``mount_fs`` but the command runs under a wrapper (prlimit, setpriv):
    ``wrapped_mount(source, *extra, prefix=[...])``. The wrappers exec, so the
    process we track is the daemon itself."""
    made = []

    def start(source, *extra, prefix=(), mountpoint=None):
        work = tmp_path / f"wrapped{len(made) + 1}"
        work.mkdir(parents=True, exist_ok=True)
        mp = Path(mountpoint) if mountpoint is not None else work / "mnt"
        mp.mkdir(exist_ok=True)
        m = Mount(source, mp, extra, work / "mef3fs.log", True, work)
        m.cmd = [*prefix, *m.cmd]
        made.append(m)
        return m.start()

    yield start
    errors = []
    for m in reversed(made):
        try:
            m.unmount()
        except AssertionError as exc:
            errors.append(f"{m}: {exc}")
    if errors:
        pytest.fail("unmount at teardown failed:\n" + "\n".join(errors), pytrace=False)


# ---------------------------------------------------------------------------
# sessions
# ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """SOURCE with every readable kind of session (see tests/sessions.py)."""
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def encrypted(tmp_path_factory):
    return build_encrypted(tmp_path_factory.mktemp("encrypted"))


@pytest.fixture(scope="session")
def damaged(tmp_path_factory):
    return build_damaged(tmp_path_factory.mktemp("damaged"))


# ---------------------------------------------------------------------------
# reading what the mount shows
# ---------------------------------------------------------------------------

def read_info(session_dir):
    with open(Path(session_dir) / "info.json", "rb") as f:
        return json.loads(f.read().decode("utf-8"))


def channel_files(session_dir):
    """channel name -> Path of its .f32 file, from info.json's channel list
    (DESIGN.md: info.json gives the name <-> file-name mapping)."""
    info = read_info(session_dir)
    out = {}
    for ch in info["channels"]:
        out[ch["name"]] = Path(session_dir) / ch["file"]
    return out


def read_f32(path):
    """A channel file as float32, through read(): unlike np.fromfile, which
    does not raise on a failing read (EIO) and returns an array of junk,
    this raises the OSError."""
    import numpy as np

    with open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype="<f4")


def drop_page_cache(path):
    """Drop the kernel's cached pages of one file (so reads reach the daemon)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def random_reads(rng, size, n):
    """(offset, length) pairs: tiny, medium, large, crossing EOF, past EOF."""
    out = [(0, 1), (1, 3), (size - 1, 1), (size - 3, 7), (size, 1), (size, 4096),
           (size + 12345, 10), (max(0, size - 2), 2)]
    for _ in range(n):
        kind = rng.random()
        if kind < 0.35:
            off, ln = rng.integers(0, size), rng.integers(1, 65)
        elif kind < 0.65:
            off, ln = rng.integers(0, size), rng.integers(1, 70_000)
        elif kind < 0.75:
            off, ln = rng.integers(0, size), rng.integers(1, 3 << 19)
        elif kind < 0.88:  # crosses EOF: must be short
            off = rng.integers(max(0, size - 9000), size)
            ln = rng.integers(size - off + 1, size - off + 30_000)
        else:  # entirely past EOF: b""
            off, ln = rng.integers(size, size + 200_000), rng.integers(1, 5000)
        out.append((int(off), int(ln)))
    return out


def pread_full(fd, size, offset):
    """pread until `size` bytes or EOF (a short read is legal on any file)."""
    parts, got = [], 0
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_stats(mount):
    """The stats file of a Mount (or mount root path), read through a fresh descriptor."""
    root = mount if isinstance(mount, (str, os.PathLike)) else mount.root
    fd = os.open(Path(root) / STATS_FILE, os.O_RDONLY)
    try:
        chunks = []
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(fd)
    return json.loads(b"".join(chunks).decode("utf-8"))


def errno_of(fn, *args, **kwargs):
    """Run fn; return the errno it failed with, or None if it succeeded."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return None


__all__ += ["errno_of", "Mounter", "read_f32"]
_ = errno  # errno is re-exported for convenience in some test files
