"""One MEF session as the folder a user sees: metadata read at listing, files laid out by the views.

Opening a session reads only what listing needs (meta.py); block indexes
are read when a channel is first read (index.py). A session that cannot be
opened becomes a folder with only an info.json that says why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

from . import __version__
from .jsontext import json_bytes
from .meta import read_meta
from .readable import is_permission_problem, readable_view
from .views import info as info_view, lay_out
from .views.files import StaticFile

log = logging.getLogger("mef3fs.session")


@dataclass
class Session:
    """What the namespace serves for one session folder, as it was when last read.

    A session that grows while mounted is read again (refresh.py): the new
    Session has the next `generation` and the old one points to it
    (`superseded_by`); `compatible` says whether files of the old one keep
    their byte layout in the new one. A session written anew in place gets
    a new `epoch`: none of its tiles, indexes or pages is reused."""
    path: str                     # real path we open
    shown_path: str               # the path the user knows (host path under --host-root)
    error: str | None = None
    identity: tuple = ()          # (device, inode, mtime) of the folder or archive when read
    generation: int = 0
    epoch: int = 0
    signature: object = None      # refresh.Signature once in use (None: not taken yet)
    meta: object = None           # meta.SessionMeta
    files: dict = field(default_factory=dict)    # relative path -> file object
    dirs: dict = field(default_factory=dict)     # relative dir path -> sorted entry names
    listings: dict = field(default_factory=dict)  # relative dir path -> fuselib.Listing, once listed
    last_used: float = 0.0        # monotonic time of the last lookup inside it
    read_at: float = field(default_factory=time.time)   # wall clock when its metadata was read
    superseded_by: "Session | None" = None
    compatible: bool = False
    doubt: tuple | None = None    # (signature, since): a read said "written anew" while its files said "grew"
    # (path, identity) its metadata reader was opened with: a readable view's (readable.py)
    # when a channel folder was closed to us; what a refresh compares it through
    reader_at: tuple | None = None
    ahead: bool = False           # opened (by the statahead or a request) and not yet used by a request
    on_files_changed: object = lambda rels: None    # the namespace drops the kernel's caches of these
    _lock: object = field(default_factory=threading.Lock, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def decode_identity(self) -> tuple:
        """What decoders check before reading: a later generation opens new readers."""
        return self.identity + (self.generation,) if self.identity else ()

    @property
    def keyspace(self) -> tuple:
        """What tile and index keys are made of: the same for every generation of an epoch."""
        return self.identity[:2] + (self.epoch,)

    def report_damage(self, damage: dict, quiet: bool = False) -> None:
        """A range found unreadable while reading (a .tdat cut short, a damaged
        block): info.json says it from now on, and one log line (unless the
        caller said it already)."""
        with self._lock:
            if self.meta is None or damage in self.meta.damaged:
                return
            self.meta.damaged.append(damage)
            self.files["info.json"] = info_view.remade(self.files["info.json"], self.meta)
            self.listings.clear()
        if not quiet:
            log.warning("session %s: channel %s uUTC %s-%s cannot be read (EIO): %s", self.shown_path,
                        damage["channel"], damage.get("start_uutc"), damage.get("end_uutc"),
                        damage["reason"])
        self.on_files_changed(["info.json"])

    def knows_damage(self, channel, span) -> bool:
        """Was a range overlapping this one already found unreadable (and said)?"""
        if self.meta is None or channel is None or span is None:
            return False
        return any(d["channel"] == channel and "start_uutc" in d
                   and d["start_uutc"] < span[1] and span[0] < d["end_uutc"] for d in self.meta.damaged)

    def newest(self) -> "Session":
        s = self
        while s.superseded_by is not None:
            s = s.superseded_by
        return s


@dataclass
class Opener:
    """How every session of the mount is opened: the settings they share."""
    password: str
    tile_seconds: float | None    # None: the default of tiles.tile_target
    readers: object               # index.MetaReaders: opens them (metadata only)
    index: object                 # index.IndexCache: loads their tiles on first read
    inside: object = lambda real: True    # may a file at this real path be shown?
    no_password: str = "no password was given"   # what to say when a session needs one
    scratch: str | None = None    # where readable views of partly unreadable sessions go (readable.py)

    def open(self, path: str, shown_path: str, identity: tuple = (), previous: Session | None = None,
             signature=None, generation: int = 0, epoch: int = 0) -> Session:
        """Read a session's metadata and lay out its files. Never raises for a bad session.

        A channel whose segments resolve outside SOURCE (a symbolic link
        leading out) or that cannot be read is left out and info.json says
        why. `previous` is the session this one replaces when it grew:
        pieces that did not change keep their tiles.
        """
        # The signature (refresh.py) costs a stat of every file: a listing must not
        # pay it. It is taken when the session is first in use, or was just now.
        session = Session(path, shown_path, identity=identity, generation=generation, epoch=epoch,
                          signature=signature)
        try:
            _check_readable(path)
            open_path, decode_identity, denied = path, session.decode_identity, []
            session.reader_at = (open_path, decode_identity)
            try:
                reader = self.readers.get(path, decode_identity)
            except Exception as exc:
                if self.scratch is None or not os.path.isdir(path) or not is_permission_problem(exc):
                    raise
                open_path, denied = readable_view(path, self.scratch)
                decode_identity = session_identity(open_path) + (generation,)
                session.reader_at = (open_path, decode_identity)
                reader = self.readers.get(open_path, decode_identity)
            meta = read_meta(reader, path, shown_path, session.keyspace, decode_identity,
                             self.password, self.tile_seconds, self.index, self.inside,
                             previous=previous.meta if previous is not None and previous.ok else None,
                             no_password=self.no_password, report=_reporter(session),
                             open_path=open_path, denied=denied)
            session.meta = meta
            layout = lay_out(meta, reader, self.readers, self.index)
            session.files, session.dirs = layout.files, layout.dirs()
            for item in meta.left_out:
                log.warning("session %s: channel %s not shown: %s", shown_path, item["name"], item["reason"])
            for item in meta.damaged:
                log.warning("session %s: channel %s segment %s cannot be read: %s", shown_path,
                            item["channel"], item["segment"], item["reason"])
        except Exception as exc:  # damaged metadata, wrong password, not MEF at all
            session.error = _explain(exc, self.password, self.no_password)
            session.files = {"info.json": StaticFile(json_bytes(_error_info(session)), f"{shown_path}/info.json")}
            session.dirs = {"": ["info.json"]}
            log.warning("session %s cannot be opened: %s", shown_path, session.error)
        return session


def _reporter(session: Session):
    """How a session's tiles report damage without holding the session: that one
    reference back made every session a cycle, which only Python's collector frees,
    so sessions let go (beyond MAX_SESSIONS) stayed in memory until it ran."""
    ref = weakref.ref(session)

    def report(damage: dict) -> None:
        s = ref()
        if s is not None:
            s.report_damage(damage)
    return report


def _check_readable(path: str) -> None:
    """Say 'permission denied' plainly; mef3io reports only that it could not open."""
    if os.path.isdir(path):
        os.listdir(path)
    else:
        with open(path, "rb"):
            pass
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the session's path is not valid UTF-8, which mef3io cannot open") from None


def _explain(exc: Exception, password: str, no_password: str) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ in ("PasswordError", "SessionLocked"):
        hint = no_password if not password else "the password given does not open it"
        return f"encrypted session: {hint} (use --password or --password-file). {text}"
    return text


def _error_info(session: Session) -> dict:
    return {"mef3fs_version": __version__, "session": session.shown_path,
            "status": "error", "error": session.error, "channels": [], "files": ["info.json"]}


def session_identity(real: str, st: os.stat_result | None = None) -> tuple:
    """What tells a session from another one later put at the same path."""
    st = st if st is not None else os.stat(real)
    return st.st_dev, st.st_ino, st.st_mtime_ns
