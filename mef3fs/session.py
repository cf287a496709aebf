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
    """What the namespace serves for one session folder."""
    path: str                     # real path we open
    shown_path: str               # the path the user knows (host path under --host-root)
    error: str | None = None
    identity: tuple = ()          # (device, inode, mtime) of what was opened
    files: dict = field(default_factory=dict)    # relative path -> file object
    dirs: dict = field(default_factory=dict)     # relative dir path -> sorted entry names
    listings: dict = field(default_factory=dict)  # relative dir path -> fuselib.Listing, once listed

    @property
    def ok(self) -> bool:
        return self.error is None


def open_session(path: str, shown_path: str, password: str, tile_seconds: float, readers, index,
                 inside=lambda real: True, identity: tuple = ()) -> Session:
    """Read a session's metadata and lay out its files. Never raises for a bad session.

    `readers` (index.MetaReaders) opens it; `index` (index.IndexCache) will
    load its channels' tiles on first read. `inside(real_path)` says whether
    a file may be exposed: a channel whose segments resolve outside SOURCE
    (a symbolic link leading out) is left out.
    """
    session = Session(path, shown_path, identity=identity)
    try:
        _check_readable(path)
        reader = readers.get(path, identity)
        meta = read_meta(reader, path, shown_path, identity, password, tile_seconds, index, inside)
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
