"""Ordinary users for the tests that mount or read as someone other than root.

* Two users, made once with useradd and reused by later runs (idempotent).
* What a standard system gives them and ours does not: /dev/fuse mode 0666
  (ours is 0600), and for `-o allow_other` the line `user_allow_other` in
  /etc/fuse.conf. Both are set for a test and put back afterwards.
* A Python they can run: the project's may live in root's home (pyenv), so
  they get a venv made from /usr/bin/python3 with this package installed
  (from a copy of the sources, so nothing is built inside the repository).
* Probes run as a user with /usr/bin/python3 and report what happened
  ("sha256:<digest>", "EACCES", ...), never raising.
"""
from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
FUSE_CONF = Path("/etc/fuse.conf")
FUSE_DEVICE = "/dev/fuse"
ALICE, BOB = "mef3fs-alice", "mef3fs-bob"
MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


def need_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (to add users and set up /dev/fuse)")
    for tool in ("useradd", "fusermount3", SYSTEM_PYTHON):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if not os.path.exists(FUSE_DEVICE):
        pytest.skip("no /dev/fuse")


def ensure_user(name: str) -> User:
    """The user, added (with a group of the same name) if not there yet."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True, timeout=60)
        pw = pwd.getpwnam(name)
    return User(name, pw.pw_uid, pw.pw_gid)


def group_name(gid: int) -> str:
    return grp.getgrgid(gid).gr_name


def user_env(home) -> dict:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def as_user(user: User) -> dict:
    """subprocess keyword arguments that run a command as the user (no extra groups)."""
    return {"user": user.uid, "group": user.gid, "extra_groups": [], "cwd": "/",
            "env": user_env("/nonexistent"), "stdin": subprocess.DEVNULL}


def run_as(user: User, argv, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True,
                          timeout=timeout, **as_user(user))


# ---------------------------------------------------------------------------
# what a user can do with a path
# ---------------------------------------------------------------------------

_PROBE = r"""
import errno, hashlib, json, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "read":
        with open(path, "rb") as f:
            out = "sha256:" + hashlib.sha256(f.read()).hexdigest()
    elif op == "list":
        out = "names:" + json.dumps(sorted(os.listdir(path)))
    elif op == "stat":
        st = os.stat(path)
        out = "stat:%o:%d:%d" % (st.st_mode, st.st_uid, st.st_gid)
except OSError as exc:
    out = errno.errorcode.get(exc.errno, str(exc.errno))
print(out)
"""


def probe(user: User, op: str, path) -> str:
    """'read' -> 'sha256:<hex>', 'list' -> 'names:[...]', 'stat' -> 'stat:<mode>:<uid>:<gid>';
    an error -> its errno name ('EACCES', 'ENOENT', ...)."""
    out = run_as(user, [SYSTEM_PYTHON, "-c", _PROBE, op, path])
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def sha256(data: bytes) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# the machine as a standard system has it
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def fuse_device_for_everyone():
    """/dev/fuse mode 0666 (Debian's default; our machines give 0600), then put back."""
    before = stat.S_IMODE(os.stat(FUSE_DEVICE).st_mode)
    os.chmod(FUSE_DEVICE, 0o666)
    try:
        yield
    finally:
        os.chmod(FUSE_DEVICE, before)


@contextlib.contextmanager
def user_allow_other(enabled: bool):
    """/etc/fuse.conf with or without `user_allow_other`, then put back as it was."""
    before = FUSE_CONF.read_text() if FUSE_CONF.exists() else None
    lines = [ln for ln in (before or "").splitlines() if ln.strip() != "user_allow_other"]
    if enabled:
        lines.append("user_allow_other")
    FUSE_CONF.write_text("\n".join(lines) + "\n")
    try:
        yield
    finally:
        if before is None:
            FUSE_CONF.unlink()
        else:
            FUSE_CONF.write_text(before)


def shared_tmpdir(prefix: str) -> Path:
    """A folder under /tmp that every user may enter (pytest's own is root's only)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def make_user_venv(dest: Path) -> Path:
    """A venv from /usr/bin/python3 with this package installed; returns its python."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "mef3fs", src / "mef3fs",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = dest / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, capture_output=True,
                   timeout=300)
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", str(src)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"pip install into the users' venv failed:\n{out.stderr[-4000:]}"
    shutil.rmtree(src)
    for path in (dest, venv):
        path.chmod(0o755)
    return venv / "bin" / "python"


# ---------------------------------------------------------------------------
# a mount made by an ordinary user
# ---------------------------------------------------------------------------

def fuse_mount_at(path) -> str | None:
    """The mount options of the FUSE mount at path, or None (from the mount table:
    root cannot stat another user's FUSE mount without allow_other)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == str(path) and fields[sep + 1].startswith("fuse"):
                return fields[sep + 3]
    return None


class UserMount:
    """`mef3fs -f ... SOURCE MOUNTPOINT` run by `user` with the users' venv."""

    def __init__(self, user: User, python: Path, source, mountpoint, *extra, workdir):
        from tests.conftest import proc_table
        self.user, self.root = user, Path(mountpoint)
        self.log = Path(workdir) / f"{self.root.name}.log"
        self.log.touch()
        os.chown(self.log, user.uid, user.gid)
        self.cmd = [str(python), "-m", "mef3fs", "-f", "--log-file", str(self.log),
                    *map(str, extra), str(source), str(self.root)]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, **as_user(user))
        self._table = proc_table

    def wait_mounted(self) -> str:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            opts = fuse_mount_at(self.root)
            if opts is not None:
                return opts
            if self.proc.poll() is not None:
                pytest.fail(f"mef3fs as {self.user.name} exited {self.proc.returncode} before "
                            f"mounting:\n{self.output()}", pytrace=False)
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"no mount at {self.root} within {MOUNT_TIMEOUT} s:\n{self.output()}",
                    pytrace=False)

    def family(self) -> dict:
        from tests.conftest import descendants
        table = self._table()
        return {p: table[p]["start"] for p in {self.proc.pid} | descendants(self.proc.pid, table)
                if p in table}

    def output(self) -> str:
        text = ""
        if self.proc.poll() is not None and self.proc.stdout:
            text = self.proc.stdout.read().decode("utf-8", "replace")
        return text + "\n--- log ---\n" + self.log.read_text(errors="replace")

    def unmount(self) -> int:
        """fusermount3 -u as the user, as a user would; the daemon must end, and all it started."""
        from tests.conftest import wait_gone
        family = self.family()
        out = run_as(self.user, ["fusermount3", "-u", self.root])
        assert out.returncode == 0, out.stderr
        assert fuse_mount_at(self.root) is None
        rc = self.proc.wait(timeout=EXIT_TIMEOUT)
        left = wait_gone(family, timeout=EXIT_TIMEOUT)
        assert not left, f"processes left after unmount: {left}"
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if fuse_mount_at(self.root) is not None:
            subprocess.run(["fusermount3", "-uz", str(self.root)], capture_output=True)
        if self.proc.stdout:
            self.proc.stdout.close()


def chown_tree(path, user: User, gid: int | None = None) -> None:
    for root, dirs, files in os.walk(path):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.lchown(name, user.uid, user.gid if gid is None else gid)
