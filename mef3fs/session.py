"""One MEF session as the folder a user sees: metadata read at listing, files laid out by the views.

Opening a session reads only what listing needs (meta.py); block indexes
are read when a channel is first read (index.py). A session that cannot be
opened becomes a folder with only an info.json that says why.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from . import __version__
from .jsontext import json_bytes
from .meta import read_meta
from .views import lay_out
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
    signature: dict = field(default_factory=dict)   # refresh.signature() when read
    meta: object = None           # meta.SessionMeta
    files: dict = field(default_factory=dict)    # relative path -> file object
    dirs: dict = field(default_factory=dict)     # relative dir path -> sorted entry names
    listings: dict = field(default_factory=dict)  # relative dir path -> fuselib.Listing, once listed
    last_used: float = 0.0        # monotonic time of the last lookup inside it
    superseded_by: "Session | None" = None
    compatible: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def decode_identity(self) -> tuple:
        """What decoders check before reading: a later generation opens new readers."""
        return self.identity + (self.generation,)

    @property
    def keyspace(self) -> tuple:
        """What tile and index keys are made of: the same for every generation of an epoch."""
        return self.identity[:2] + (self.epoch,)

    def newest(self) -> "Session":
        s = self
        while s.superseded_by is not None:
            s = s.superseded_by
        return s


def open_session(path: str, shown_path: str, password: str, tile_seconds: float, readers, index,
                 inside=lambda real: True, identity: tuple = (), previous: Session | None = None,
                 signature: dict | None = None, generation: int = 0, epoch: int = 0) -> Session:
    """Read a session's metadata and lay out its files. Never raises for a bad session.

    `readers` (index.MetaReaders) opens it; `index` (index.IndexCache) will
    load its channels' tiles on first read. `inside(real_path)` says whether
    a file may be exposed: a channel whose segments resolve outside SOURCE
    (a symbolic link leading out) is left out. `previous` is the session this
    one replaces when it grew: pieces that did not change keep their tiles.
    """
    from .refresh import signature as take_signature
    session = Session(path, shown_path, identity=identity, generation=generation, epoch=epoch)
    try:
        session.signature = signature if signature is not None else take_signature(path)
    except OSError:
        session.signature = {}
    try:
        _check_readable(path)
        reader = readers.get(path, session.decode_identity)
        meta = read_meta(reader, path, shown_path, session.keyspace, session.decode_identity, password,
                         tile_seconds, index, inside,
                         previous=previous.meta if previous is not None and previous.ok else None)
        session.meta = meta
        layout = lay_out(meta, reader, readers, index)
        session.files, session.dirs = layout.files, layout.dirs()
        for item in meta.left_out:
            log.warning("session %s: channel %s %s; not shown", shown_path, item["name"], item["reason"])
    except Exception as exc:  # damaged metadata, wrong password, not MEF at all
        session.error = _explain(exc, password)
        session.files = {"info.json": StaticFile(json_bytes(_error_info(session)), f"{shown_path}/info.json")}
        session.dirs = {"": ["info.json"]}
        log.warning("session %s cannot be opened: %s", shown_path, session.error)
    return session


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


def _explain(exc: Exception, password: str) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "PasswordError":
        hint = "no password was given" if not password else "the password given does not open it"
        return f"encrypted session: {hint} (use --password or --password-file). {text}"
    return text


def _error_info(session: Session) -> dict:
    return {"mef3fs_version": __version__, "session": session.shown_path,
            "status": "error", "error": session.error, "channels": [], "files": ["info.json"]}
