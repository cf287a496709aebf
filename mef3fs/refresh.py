"""Recordings that change while mounted: sessions in use are read again when their files change.

MEF 3 is written during acquisition, for days. Every `--refresh` seconds each
session in use (a file of it open; a session only looked at lately, every
LISTED_EVERY periods) has its signature taken: the inode, size and time of every file below it, a few
hundred stat calls and no read. When that changed, the namespace opens the
session again (namespace.py) and swaps it in; the kernel's cached pages and
attributes of its files are dropped, so sizes, info.json and NaN samples
that turned into data are seen, and open handles follow the new session.

Whether a change is growth or a different session is growth.py's question.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time

import numpy as np

from .growth import GROWING
from .index import INDEX_ENTRY, INDEX_HEADER

log = logging.getLogger("mef3fs.refresh")

DEFAULT_PERIOD = 1.0          # seconds between checks of a session in use
IN_USE = 30.0                 # seconds after its last lookup that a session still counts as in use
# A session only listed (no file open) is checked every this many periods: an ls -lR
# of 100 sessions made them all "in use", and walking each every second (32,000 stats
# a second) took the CPU and the GIL from the FUSE threads for 30 s (warm ls -lR 1.3 s)
LISTED_EVERY = 10
LISTED_WALKS = 4              # and at most this many of them are walked per period
CLOCK_SLACK = 2.0             # seconds: file times and our clock may disagree by this much
MEF_FILES = GROWING + (".tmet", ".rdat", ".ridx")   # writers' temporary files are not looked at


class Signature:
    """(inode, size, mtime) of every MEF file of a session, compact: sessions stay
    open by the hundred, and a dict of tuples costs ~200 bytes a file."""

    __slots__ = ("names", "values")

    def __init__(self, files: dict):
        names = sorted(files)
        self.names = "\0".join(names)
        self.values = np.array([files[n] for n in names], dtype=np.int64).reshape(len(names), 3)

    def __eq__(self, other) -> bool:
        return (isinstance(other, Signature) and self.names == other.names
                and np.array_equal(self.values, other.values))

    def newest(self) -> float:
        """The latest modification time of any of the files, in seconds (0: none)."""
        return float(self.values[:, 2].max()) / 1e9 if len(self.values) else 0.0

    def half_written(self) -> bool:
        """Is an index file's last entry (or its header) not all there yet?"""
        return any(name.endswith(".tidx") and (size < INDEX_HEADER or (size - INDEX_HEADER) % INDEX_ENTRY)
                   for name, (_, size, _) in self.files().items())

    def files(self) -> dict:
        names = self.names.split("\0") if self.names else []
        return {n: tuple(int(v) for v in row) for n, row in zip(names, self.values)}


def signature(path: str) -> Signature:
    """What changes when a session is written; OSError if it is gone.

    A `.mefd.tar` is one file. A folder is walked to the depth MEF uses
    (session / channel.timd / segment.segd)."""
    st = os.stat(path)
    if stat.S_ISREG(st.st_mode):
        return Signature({"": (st.st_ino, st.st_size, st.st_mtime_ns)})
    out = {}
    todo = [("", path, 0)]
    while todo:
        rel, folder, depth = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except PermissionError:          # a channel folder we may not read: left out, not looked at
            continue
        for e in entries:
            name = f"{rel}/{e.name}" if rel else e.name
            try:
                if e.is_dir():
                    if depth < 2:
                        todo.append((name, e.path, depth + 1))
                    continue
                if not e.name.endswith(MEF_FILES):
                    continue
                s = e.stat()
            except OSError:            # vanished while we looked: the next check sees it
                continue
            out[name] = (s.st_ino, s.st_size, s.st_mtime_ns)
    return Signature(out)


class Refresher:
    """The thread that checks sessions in use, and drops the kernel's caches of what changed.

    `invalidate(mount_path)` is the FUSE layer's: it drops the kernel's
    cached pages and attributes of one file or folder."""

    def __init__(self, namespace, period: float, invalidate):
        self._ns = namespace
        self.period = period              # 0: sessions are not checked (folders changing still are)
        self.invalidate = invalidate
        self._stop = threading.Event()
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._thread = None
        self._checks = 0
        self._listed_due: dict = {}       # session path -> the check count it is next due at

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mef3fs-refresh", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def drop_cached(self, paths) -> None:
        """Invalidate these mount paths from this thread, never from a FUSE request's
        (a notification about an inode that request holds would wait for it)."""
        with self._lock:
            self._pending.extend(paths)

    def _run(self) -> None:
        while not self._stop.wait(self.period or DEFAULT_PERIOD):
            try:
                self.check()
            except Exception:      # never let the thread die: the next period tries again
                log.exception("refresh failed")

    def check(self) -> None:
        now = time.monotonic()
        self._checks += 1
        due, walks = {}, 0
        for session, is_open in self._ns.sessions_in_use(now - IN_USE) if self.period else ():
            if not is_open:
                at = self._listed_due.get(session.path, self._checks)
                if at > self._checks or walks >= LISTED_WALKS:
                    due[session.path] = max(at, self._checks + 1)
                    continue
                due[session.path] = self._checks + LISTED_EVERY
                walks += 1
            try:
                sig = signature(session.path)
            except OSError:
                continue           # gone: the next lookup says ENOENT
            if session.signature is None:
                # first in use: is it still what was read at listing? (then watch from here)
                # Not a question if no file was written since (a fresh reader costs what
                # opening the session did: an ls -lR of 100 sessions paid it 100 times)
                if sig.newest() >= session.read_at - CLOCK_SLACK and self._ns.changed_since_read(session):
                    self._ns.refresh(session, sig)
                else:
                    session.signature = sig
            elif sig != session.signature:
                self._ns.refresh(session, sig)      # which calls drop_cached (on_changed)
        self._listed_due = due
        with self._lock:
            pending, self._pending = self._pending, []
        for path in pending:
            self.invalidate(path)
        if pending:
            log.debug("refresh: dropped the kernel's caches of %d files", len(pending))
