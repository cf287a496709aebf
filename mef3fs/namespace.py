"""The namespace: which FUSE path is which folder, session or file.

SOURCE's folders and regular files are mirrored, and every session in them
(a `*.mefd` folder or a `*.mefd.tar` archive) is a folder of decoded files;
with `sessions_only`, only the folders that lead to a session are shown,
and no file of SOURCE's own. The tree is read live, so a
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
import stat
import threading
import time
from dataclasses import dataclass

from .growth import changed_since_read, grew, settled, why_not_grown
from .passthrough import PassthroughFile
from .refresh import signature as take_signature
from .session import Opener, Session, session_identity

log = logging.getLogger("mef3fs.namespace")

STATS_FILE = ".mef3fs-stats.json"
SCAN_DEPTH = 12               # how deep "does this folder lead to a session" looks
SCAN_TTL = 2.0                # seconds a folder's answer is reused
MAX_SESSIONS = 256            # opened session folders kept; more are opened again when used
WALK_TTL = 0.25               # seconds a walk through SOURCE to a session is reused
MAX_WALKS = 4096


def session_kind(path: str, st: os.stat_result | None = None) -> bool:
    """Is this real path a session? A `.mefd` folder or a `.mefd.tar` file."""
    lower = os.path.basename(path).lower()
    if not lower.endswith((".mefd", ".mefd.tar")):
        return False
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            return False
    return stat.S_ISDIR(st.st_mode) if lower.endswith(".mefd") else stat.S_ISREG(st.st_mode)


def fserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@dataclass(slots=True)
class Node:
    kind: str                  # "dir" | "sessiondir" | "file"
    real: str = ""             # real folder (dir) or session path
    session: Session | None = None
    rel: str = ""              # path inside the session
    file: object = None


class Namespace:
    def __init__(self, source: str, display, opener: Opener, stats_file, max_sessions: int = MAX_SESSIONS,
                 sessions_only: bool = False):
        self.source = os.path.realpath(source)
        self.sessions_only = sessions_only
        self.single = session_kind(self.source)     # SOURCE is itself one session
        self._display = display
        self._opener = opener
        opener.inside = self._inside                # nothing resolving outside SOURCE is shown
        self._stats_file = stats_file
        self._max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._opening: dict[str, threading.Lock] = {}
        self._mount_paths: dict[str, set] = {}     # real session path -> mount paths it was seen at
        self._open_files: dict[str, int] = {}      # real session path -> open file handles
        self.on_changed = lambda mount_paths: None  # the kernel's caches of these must be dropped
        self.on_used = lambda real: None     # a request opened a session, or first used one opened ahead
        self._leads: dict[str, tuple[float, bool]] = {}
        self._walks: dict[str, tuple[float, str]] = {}   # mount path -> (when, real)
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
        """Real path of an entry of a SOURCE folder (itself a real path), or None if
        it leads outside SOURCE. Only a symbolic link needs resolving: one lstat
        instead of realpath's walk of every component (the cost of a lookup)."""
        path = os.path.join(folder, name)
        try:
            if not stat.S_ISLNK(os.lstat(path).st_mode):
                return path
        except OSError:
            return path                # not there: the caller's stat says so
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

    def shown_entries(self, folder: str) -> list[tuple[str, str]]:
        """(name, real path) of the entries of a SOURCE folder that are shown, sorted by
        name (listings, and statahead.py's predictions); OSError if it cannot be read."""
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            self._warn_once(folder, f"cannot read folder {self._display(folder)}: {exc.strerror}")
            raise fserror(exc.errno or errno.EIO)
        shown = []
        for name in names:
            real = self._child(folder, name)
            if real is not None and self._shown(real):
                shown.append((name, real))
        return shown

    def _shown(self, real: str, st: os.stat_result | None = None) -> bool:
        """Is this entry of a SOURCE folder (resolved inside SOURCE) shown?"""
        if st is None:
            try:
                st = os.stat(real)
            except OSError:
                return False
        if session_kind(real, st):
            return True
        if self.sessions_only:
            return stat.S_ISDIR(st.st_mode) and self._leads_to_session(real)
        return stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)

    # -- sessions -----------------------------------------------------------

    def session(self, real: str, identity=None, mount_path: str | None = None, ahead: bool = False) -> Session:
        """The opened session at a real path; opened once, concurrent callers
        wait. When its folder or archive changed on disk (another inode or
        mtime), it is read again: as the next generation if it only grew, as
        a different session if it was written anew (growth.py). `ahead`:
        opened by the statahead, not for a request (statahead.py)."""
        s = self._session(real, identity, mount_path, ahead)
        if s.ahead and not ahead:          # a request opened it, or first used one opened ahead
            s.ahead = False
            self.on_used(real)
        return s

    def _session(self, real: str, identity, mount_path: str | None, ahead: bool) -> Session:
        identity = identity or session_identity(real)
        with self._lock:
            s = self._sessions.get(real)
            if mount_path is not None:
                self._mount_paths.setdefault(real, set()).add(mount_path)
            if s is not None and s.identity == identity:
                self._sessions.move_to_end(real)
                s.last_used = time.monotonic()
                return s
            gate = self._opening.setdefault(real, threading.Lock())
        if s is not None:
            self.refresh(s)
            with self._lock:
                s = self._sessions.get(real)
            if s is not None:           # read again (or kept, when caught half-way through a write)
                s.last_used = time.monotonic()
                return s
        with gate:
            with self._lock:
                s = self._sessions.get(real)
            if s is None:
                s = self._opener.open(real, self._display(real), identity)
                s.ahead = True             # until a request uses it (then `session` says so)
                log.debug("session opened%s: %s (%s)", " ahead" if ahead else "", s.shown_path,
                          "ok" if s.ok else s.error)
                self._store(real, s)
            s.last_used = time.monotonic()
            return s

    def open_session(self, real: str) -> Session | None:
        """The session at a real path if it is open now; never opens it."""
        with self._lock:
            return self._sessions.get(real)

    def _store(self, real: str, s: Session) -> None:
        s.on_files_changed = lambda rels: self.on_changed(self._paths(real, rels))
        with self._lock:
            self._sessions[real] = s
            self._sessions.move_to_end(real)
            while len(self._sessions) > self._max_sessions:
                old, _ = self._sessions.popitem(last=False)
                log.debug("session let go (least recently used): %s", self._display(old))

    def refresh(self, old: Session, signature=None) -> list[str]:
        """Read a session again because its files changed; returns the mount paths
        whose kernel caches must be dropped. A session that only grew keeps its
        tiles where nothing changed; one written anew is a new session (a new
        epoch: no tile, index or reader of the old one is used again)."""
        real = old.path
        with self._lock:
            gate = self._opening.setdefault(real, threading.Lock())
        with gate:
            with self._lock:
                if self._sessions.get(real) is not old:
                    return []               # somebody read it again already
            try:
                identity = session_identity(real)
                signature = signature if signature is not None else take_signature(real)
            except OSError:                 # gone: the next lookup says ENOENT
                self.forget(real)
                paths = self._cached_paths(old)
                self.on_changed(paths)
                return paths
            growth = old.ok and grew(old.signature, signature)
            why = "" if growth else ("it could not be read before" if not old.ok
                                     else "a data or index file was replaced or shrank")

            def read_again(grown: bool) -> Session:
                return self._opener.open(real, self._display(real), identity,
                                         previous=old if grown else None, signature=signature,
                                         generation=old.generation + 1, epoch=old.epoch + (0 if grown else 1))
            new = read_again(growth)
            if growth and not new.ok:
                # caught half-way through a write: keep what we have, look again next time
                log.debug("refresh of %s postponed: %s", old.shown_path, new.error)
                if new.reader_at is not None:
                    self._opener.readers.discard(*new.reader_at)
                return []
            if growth:
                why = why_not_grown(old, new, self._opener.readers, self._opener.index)
                if why:
                    if not settled(old, signature):
                        log.debug("refresh of %s postponed: %s, but its files only grew; "
                                  "deciding once they stop changing", old.shown_path, why)
                        self._opener.readers.discard(*new.reader_at)
                        return []
                    growth = False
                    new = read_again(False)
            new.last_used = old.last_used
            old.compatible = growth
            old.superseded_by = new
            self._store(real, new)
            log.info("session %s %s (generation %d)", new.shown_path,
                     "grew" if growth else f"was written anew ({why}): a new session", new.generation)
            paths = self._cached_paths(old)
            self.on_changed(paths)
            return paths

    def _paths(self, real: str, rels) -> list[str]:
        """Mount paths of these files of the session at a real path."""
        with self._lock:
            roots = sorted(self._mount_paths.get(real, ()))
        return [root + "/" + rel for root in roots for rel in rels]

    def changed_since_read(self, session: Session) -> bool:
        return changed_since_read(session, self._opener.readers)

    def _cached_paths(self, session: Session) -> list[str]:
        """Mount paths of every file and folder of a session (what the kernel may cache)."""
        rels = list(session.files) + [d for d in session.dirs if d]
        with self._lock:
            roots = sorted(self._mount_paths.get(session.path, ()))
        return self._paths(session.path, rels) + [root or "/" for root in roots]

    def sessions_in_use(self, since: float) -> list[tuple[Session, bool]]:
        """(session, whether a file of it is open) for the sessions with a file open,
        or looked at since `since` (monotonic)."""
        with self._lock:
            return [(s, bool(self._open_files.get(real))) for real, s in self._sessions.items()
                    if self._open_files.get(real) or s.last_used >= since]

    def opened(self, session: Session) -> None:
        with self._lock:
            self._open_files[session.path] = self._open_files.get(session.path, 0) + 1

    def closed(self, session: Session) -> None:
        with self._lock:
            left = self._open_files.get(session.path, 0) - 1
            if left > 0:
                self._open_files[session.path] = left
            else:
                self._open_files.pop(session.path, None)

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
            return self._in_session(self.source, parts, "")
        walked = self._walked(parts)
        if walked is not None:
            # the folders above it are taken as walked; the session's own folder is
            # looked at again (one stat): removed, renamed or replaced a moment ago, it
            # must not be served on
            real, i = walked
            return self._in_session(real, parts[i + 1:], "/" + "/".join(parts[:i + 1]))
        folder = self.source
        for i, name in enumerate(parts):
            real = self._child(folder, name)
            if real is None:
                raise fserror(errno.ENOENT)
            try:
                st = os.stat(real)
            except PermissionError:
                self._warn_once(folder, f"cannot read folder {self._display(folder)}: permission denied")
                raise fserror(errno.EACCES)
            except OSError:
                raise fserror(errno.ENOENT)
            if session_kind(real, st):
                mount_path = "/" + "/".join(parts[:i + 1])
                if len(self._walks) >= MAX_WALKS:
                    self._walks.clear()
                self._walks[mount_path] = (time.monotonic(), real)
                return self._in_session(real, parts[i + 1:], mount_path, st)
            if not self._shown(real, st):
                raise fserror(errno.ENOENT)
            if not stat.S_ISDIR(st.st_mode):         # one of SOURCE's own files
                if i + 1 < len(parts):
                    raise fserror(errno.ENOTDIR)
                return Node("file", real=real, file=PassthroughFile(real, self._display(real)))
            folder = real
        return Node("dir", real=folder)

    def _walked(self, parts: list[str]):
        """(real session path, index of its part) when a lookup walked SOURCE
        to this session moments ago: every file opened in a session folder is
        looked up twice (the kernel's lookup, then open), and a viewer opens a
        session's files one after another. Staler than the kernel's own cache
        of the same entries never (WALK_TTL against its attribute timeout)."""
        key = ""
        for i, name in enumerate(parts):
            key += "/" + name
            got = self._walks.get(key)
            if got is not None:
                when, real = got
                return (real, i) if time.monotonic() - when < WALK_TTL else None
        return None

    def _in_session(self, real: str, parts: list[str], mount_path: str, st=None) -> Node:
        try:
            identity = session_identity(real, st)
        except OSError:                        # removed or renamed while mounted
            self.forget(real)
            raise fserror(errno.ENOENT)
        if not parts:
            return Node("sessiondir", real=real, rel="")
        session = self.session(real, identity, mount_path)
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
            for name, real in self.shown_entries(node.real):
                if session_kind(real):
                    out.append((name, Node("sessiondir", real=real)))
                elif os.path.isdir(real):
                    out.append((name, Node("dir", real=real)))
                else:
                    out.append((name, Node("file", real=real, file=PassthroughFile(real, self._display(real)))))
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

