"""The namespace: which FUSE path is which folder, session or file.

SOURCE's folders are mirrored, but only those that lead to a session
(a `*.mefd` folder or a `*.mefd.tar` archive). The tree is read live, so a
session added while mounted appears; sessions are opened on first use, so
mounting a thousand costs nothing, and the least recently used are let go
beyond MAX_SESSIONS, so walking an archive larger than memory works (an open
file keeps what it reads). Nothing that resolves outside SOURCE is ever
shown.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass

from .session import Session, open_session

log = logging.getLogger("mef3fs.namespace")

STATS_FILE = ".mef3fs-stats.json"
SCAN_DEPTH = 12               # how deep "does this folder lead to a session" looks
SCAN_TTL = 2.0                # seconds a folder's answer is reused
MAX_SESSIONS = 256            # opened session folders kept; more are opened again when used


def session_kind(path: str) -> bool:
    """Is this real path a session? A `.mefd` folder or a `.mefd.tar` file."""
    lower = os.path.basename(path).lower()
    if lower.endswith(".mefd"):
        return os.path.isdir(path)
    if lower.endswith(".mefd.tar"):
        return os.path.isfile(path)
    return False


def session_identity(real: str) -> tuple:
    """What tells a session from another one later put at the same path."""
    st = os.stat(real)
    return st.st_dev, st.st_ino, st.st_mtime_ns


def fserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass
class Node:
    kind: str                  # "dir" | "sessiondir" | "file"
    real: str = ""             # real folder (dir) or session path
    session: Session | None = None
    rel: str = ""              # path inside the session
    file: object = None


class Namespace:
    def __init__(self, source: str, display, password: str, tile_seconds: float, stats_file,
                 readers, index, max_sessions: int = MAX_SESSIONS):
        self.source = os.path.realpath(source)
        self.single = session_kind(self.source)     # SOURCE is itself one session
        self._display = display
        self._password = password
        self._tile_seconds = tile_seconds
        self._stats_file = stats_file
        self._readers = readers                     # index.MetaReaders
        self._index = index                         # index.IndexCache
        self._max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._opening: dict[str, threading.Lock] = {}
        self._leads: dict[str, tuple[float, bool]] = {}
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    @property
    def sessions_open(self) -> int:
        return len(self._sessions)

    # -- SOURCE tree --------------------------------------------------------

    def _inside(self, real: str) -> bool:
        return real == self.source or real.startswith(self.source.rstrip("/") + "/")

    def _child(self, folder: str, name: str) -> str | None:
        """Real path of an entry of a SOURCE folder, or None if it leads outside SOURCE."""
        path = os.path.join(folder, name)
        real = os.path.realpath(path)
        return real if self._inside(real) else None

    def _leads_to_session(self, folder: str, depth: int = 0) -> bool:
        now = time.monotonic()
        cached = self._leads.get(folder)
        if cached and now - cached[0] < SCAN_TTL:
            return cached[1]
        found = False
        if depth < SCAN_DEPTH:
            try:
                names = os.listdir(folder)
            except PermissionError:
                # it may lead to sessions: show it, and let entering it say EACCES
                self._leads[folder] = (now, True)
                return True
            except OSError:
                names = []
            for name in names:
                real = self._child(folder, name)
                if real is None:
                    continue
                if session_kind(real) or (os.path.isdir(real) and real != folder
                                          and self._leads_to_session(real, depth + 1)):
                    found = True
                    break
        self._leads[folder] = (now, found)
        return found

    def _visible_entries(self, folder: str) -> list[tuple[str, str]]:
        """(name, real path) of the entries of a SOURCE folder that are shown."""
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            self._warn_once(folder, f"cannot read folder {self._display(folder)}: {exc.strerror}")
            raise fserror(exc.errno or errno.EIO)
        shown = []
        for name in names:
            real = self._child(folder, name)
            if real is None:
                continue
            if session_kind(real) or (os.path.isdir(real) and self._leads_to_session(real)):
                shown.append((name, real))
        return shown

    # -- sessions -----------------------------------------------------------

    def session(self, real: str, identity=None) -> Session:
        """The opened session at a real path; opened once, concurrent callers
        wait. A different folder or archive put at the same path (another
        inode or mtime) is a different session and is opened anew."""
        identity = identity or session_identity(real)
        with self._lock:
            s = self._sessions.get(real)
            if s is not None and s.identity == identity:
                self._sessions.move_to_end(real)
                return s
            gate = self._opening.setdefault(real, threading.Lock())
        with gate:
            with self._lock:
                s = self._sessions.get(real)
            if s is None or s.identity != identity:
                s = open_session(real, self._display(real), self._password, self._tile_seconds,
                                 self._readers, self._index, self._inside, identity)
                log.debug("session opened: %s (%s)", s.shown_path, "ok" if s.ok else s.error)
                with self._lock:
                    self._sessions[real] = s
                    while len(self._sessions) > self._max_sessions:
                        old, _ = self._sessions.popitem(last=False)
                        log.debug("session let go (least recently used): %s", self._display(old))
            return s

    def forget(self, real: str) -> None:
        with self._lock:
            self._sessions.pop(real, None)

    # -- lookups ------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise fserror(errno.ENOENT)
        if parts == [STATS_FILE]:
            return Node("file", file=self._stats_file)
        if self.single:
            return self._in_session(self.source, parts)
        folder = self.source
        for i, name in enumerate(parts):
            real = self._child(folder, name)
            if real is None:
                raise fserror(errno.ENOENT)
            try:
                os.stat(real)
            except PermissionError:
                self._warn_once(folder, f"cannot read folder {self._display(folder)}: permission denied")
                raise fserror(errno.EACCES)
            except OSError:
                raise fserror(errno.ENOENT)
            if session_kind(real):
                return self._in_session(real, parts[i + 1:])
            if not os.path.isdir(real) or not self._leads_to_session(real):
                raise fserror(errno.ENOENT)
            folder = real
        return Node("dir", real=folder)

    def _in_session(self, real: str, parts: list[str]) -> Node:
        try:
            identity = session_identity(real)
        except OSError:                        # removed or renamed while mounted
            self.forget(real)
            raise fserror(errno.ENOENT)
        if not parts:
            return Node("sessiondir", real=real, rel="")
        session = self.session(real, identity)
        rel = "/".join(parts)
        if rel in session.dirs:
            return Node("sessiondir", real=real, session=session, rel=rel)
        f = session.files.get(rel)
        if f is None:
            raise fserror(errno.ENOENT)
        return Node("file", real=real, session=session, rel=rel, file=f)

    def entries(self, node: Node) -> list[tuple[str, Node]]:
        """(name, node) of every entry of a folder: a listing answers each
        entry's attributes too (readdirplus), instead of one lookup per file."""
        out = []
        if node.kind == "dir":
            if node.real == self.source:
                out.append((STATS_FILE, Node("file", file=self._stats_file)))
            for name, real in self._visible_entries(node.real):
                out.append((name, Node("sessiondir" if session_kind(real) else "dir", real=real)))
            return out
        if node.kind != "sessiondir":
            raise fserror(errno.ENOTDIR)
        session = node.session or self.session(node.real)
        if self.single and node.rel == "":
            out.append((STATS_FILE, Node("file", file=self._stats_file)))
        prefix = node.rel + "/" if node.rel else ""
        for name in session.dirs.get(node.rel, []):
            rel = prefix + name
            if rel in session.dirs:
                out.append((name, Node("sessiondir", real=node.real, session=session, rel=rel)))
            else:
                out.append((name, Node("file", real=node.real, session=session, rel=rel,
                                       file=session.files[rel])))
        return out
