"""Python API: mount a source for the duration of a ``with`` block.

    import numpy as np
    import mef3fs

    with mef3fs.mount("/data/recordings", cache_size="1G") as root:
        x = np.load(root / "night1.mefd" / "LA1.npy", mmap_mode="r")

``mount`` runs the command line (``python -m mef3fs``) in its daemon mode,
which returns only once the filesystem is mounted (or failed), and unmounts
when the block ends, also when it ends with an exception.

This module imports nothing of the FUSE layer: ``import mef3fs`` stays light.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Iterator, List

from .mounts import mount_type_at

__all__ = ["mount", "MountError"]

#: Options that would keep the command in the foreground, so it would never
#: return "ready": mount() needs the daemon mode.
_FOREGROUND_OPTIONS = ("foreground", "f", "debug", "d")
#: Options that are FUSE ``-o`` options, joined with commas.
_FUSE_OPTION_KEYS = ("o", "fuse_options")


class MountError(RuntimeError):
    """The filesystem could not be mounted (or unmounted).

    ``returncode`` is the command's exit status (None if it did not end),
    ``stderr`` everything it wrote there, ``command`` the argument list
    (with a password replaced by ``***``).
    """

    def __init__(self, message, returncode=None, stderr="", command=None):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
        self.command = command


# --------------------------------------------------------------------------
# options -> command line


def _option_args(options) -> List[str]:
    """Turn ``mount(**options)`` into CLI arguments.

    ``cache_size="64M"`` -> ``--cache-size 64M``; ``True`` -> a bare flag,
    ``False``/``None`` -> nothing; a list/tuple -> the flag once per item;
    ``o=`` and ``fuse_options=`` (a string or a list) -> one ``-o a,b,c``.
    """
    fuse_opts: List[str] = []
    args: List[str] = []
    for key, value in options.items():
        if key in _FOREGROUND_OPTIONS:
            if value:
                raise ValueError(
                    f"mount(): option {key!r} keeps mef3fs in the foreground; "
                    "mount() needs the daemon mode (use log_file=... to see "
                    "the daemon's log, or run the mef3fs command yourself)")
            continue
        if key in _FUSE_OPTION_KEYS:
            if value is None or value is False:
                continue
            items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
            for item in items:
                fuse_opts.extend(p for p in str(os.fspath(item)).split(",") if p)
            continue
        flag = ("-" if len(key) == 1 else "--") + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        for item in values:
            args.extend([flag, str(os.fspath(item) if isinstance(item, os.PathLike) else item)])
    if fuse_opts:
        args = ["-o", ",".join(fuse_opts)] + args
    return args


def _redact(argv: List[str]) -> List[str]:
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a == "--password":
            out[i + 1] = "***"
    return out


# --------------------------------------------------------------------------
# mount table


def _is_mounted(path: str) -> bool:
    """True while path is a mount point, dead (ENOTCONN) ones included."""
    return mount_type_at(path) is not None


def _wait(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def _daemon_pids(argv: List[str]) -> List[int]:
    """Processes whose command line is exactly *argv* (the forked daemon)."""
    want = "\0".join(argv).encode("utf-8", "surrogateescape") + b"\0"
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read() == want:
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")  # a zombie has ended
    except (OSError, IndexError):
        return False


def _unmount(path: str, timeout: float = 10.0) -> bool:
    """Unmount *path* and wait until it has left the mount table.

    Returns False if only a lazy unmount (``-z``) worked: the mount is gone
    from the tree, but the daemon serves the files still open until they
    are closed.
    """
    tools = [t for t in ("fusermount3", "fusermount") if shutil.which(t)]
    commands = [[t, "-u"] for t in tools] or [["umount"]]
    lazy = [[t, "-u", "-z"] for t in tools] or [["umount", "-l"]]
    errors: List[str] = []

    def attempt(cmds) -> bool:
        for cmd in cmds:
            if not _is_mounted(path):
                return True
            r = subprocess.run(cmd + [path], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, errors="replace")
            if r.returncode == 0:
                return True
            errors.append(f"{' '.join(cmd)}: {r.stderr.strip()}")
        return not _is_mounted(path)

    # A busy mount (an open file, a memmap, a cwd inside) frees up shortly
    # after the block ends in most cases: retry briefly, then detach lazily.
    deadline = time.monotonic() + 2.0
    done = attempt(commands)
    while not done and time.monotonic() < deadline:
        time.sleep(0.1)
        done = attempt(commands)
    clean = done
    if not done:
        done = attempt(lazy)
    if not done or not _wait(lambda: not _is_mounted(path), timeout):
        raise MountError(f"could not unmount {path}: " + "; ".join(errors[-2:]))
    return clean


# --------------------------------------------------------------------------
# the context manager


@contextlib.contextmanager
def mount(source, mountpoint=None, *, timeout: float = 120.0,
          **options) -> Iterator[pathlib.Path]:
    """Mount *source* with mef3fs for the duration of a ``with`` block.

    Parameters
    ----------
    source : str or path
        A folder holding MEF 3.0 sessions, or a session (``.mefd`` folder or
        ``.mefd.tar``), as for the ``mef3fs`` command.
    mountpoint : str or path, optional
        An existing empty folder. Default: a new temporary folder, removed
        again after unmounting.
    timeout : float
        Seconds to wait for the mount to become ready.
    **options
        The command's options by their long names, ``_`` for ``-``:
        ``cache_size="64M"``, ``workers=2``, ``decoder="mef_tools"``,
        ``password="..."``, ``password_file=...``, ``tile_seconds=5``,
        ``cache_ttl=60``, ``readahead="16M"``, ``host_root=...``,
        ``log_file=...``. ``True`` gives a bare flag, ``False``/``None``
        leaves the option out. A ``password`` is handed over in a private
        temporary file (``--password-file``), not on the command line where
        ``ps`` shows it; the file is removed on unmount. FUSE options:
        ``o="allow_other"`` or
        ``fuse_options=["allow_other", ...]``. ``foreground``/``debug`` are
        refused (the daemon mode is what tells when the mount is ready).

    Yields
    ------
    pathlib.Path
        The mount root.

    Raises
    ------
    MountError
        The command failed (its one-line message is the error's message),
        did not become ready within *timeout*, or unmounting failed.
    """
    password = options.pop("password", None)
    args = _option_args(options)
    source = os.path.abspath(os.fspath(source))
    made_tmp = mountpoint is None
    if made_tmp:
        mountpoint = tempfile.mkdtemp(prefix="mef3fs-")
    mountpoint = os.path.realpath(os.path.abspath(os.fspath(mountpoint)))

    argv = [sys.executable, "-m", "mef3fs", *args, source, mountpoint]
    env = dict(os.environ)
    # Run the same mef3fs package as this process imported.
    pkg_parent = str(pathlib.Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])

    mounted = False
    daemon_pids: List[int] = []
    pwfile = None
    try:
        if password and ("\n" in password or "\r" in password):
            argv[3:3] = ["--password", password]  # a file holds one line only
        elif password:
            # Not on the command line, where `ps` would show it: a private
            # file that lives as long as the mount.
            fd, pwfile = tempfile.mkstemp(prefix="mef3fs-pw-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(password)
            argv[3:3] = ["--password-file", pwfile]
        # stderr to a file, not a pipe: the forked daemon may keep inherited
        # descriptors open, and a pipe would then never see EOF.
        with tempfile.TemporaryFile(mode="w+b") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    env=env, close_fds=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = None
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        if rc != 0:
            if _is_mounted(mountpoint):  # it got that far: undo it
                with contextlib.suppress(MountError):
                    _unmount(mountpoint)
            if rc is None:
                msg = f"mef3fs did not become ready within {timeout:g} s"
            else:
                msg = lines[-1] if lines else f"mef3fs exited with status {rc}"
            raise MountError(msg, returncode=rc, stderr=stderr, command=_redact(argv))
        if not _wait(lambda: _is_mounted(mountpoint), min(timeout, 10.0)):
            raise MountError(f"mef3fs reported success but {mountpoint} is not mounted",
                             returncode=rc, stderr=stderr, command=_redact(argv))
        mounted = True
        daemon_pids = _daemon_pids(argv)

        try:
            yield pathlib.Path(mountpoint)
        except BaseException:
            # Unmount, but never let a failure to do so hide the real error.
            try:
                _unmount(mountpoint)
                mounted = False
            except MountError as exc:
                warnings.warn(str(exc), RuntimeWarning, stacklevel=3)
            raise
        clean = _unmount(mountpoint)
        mounted = False
        if clean:
            # The daemon ends on its own once unmounted; give it time to
            # finish (its workers end with it), so a script does not exit
            # under it. After a lazy unmount it ends when the last open file
            # of the mount is closed, which may be much later.
            _wait(lambda: not any(_pid_alive(p) for p in daemon_pids), 10.0)
    finally:
        if pwfile is not None:
            with contextlib.suppress(OSError):
                os.unlink(pwfile)
        if made_tmp and not mounted:
            with contextlib.suppress(OSError):
                os.rmdir(mountpoint)
