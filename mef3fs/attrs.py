"""Owners, modes and times of what the mount shows: the source's, as a bind mount would.

Nobody may read through the mount what SOURCE denies them, and the mount
uses `default_permissions`, so the kernel enforces the modes reported here:

* SOURCE's folders, session folders and files shown as they are keep their
  owner, group, mode and times; write bits (and setuid/setgid/sticky) are
  dropped, the mount is read-only. A `.mefd.tar` session is a folder that
  may be entered by whoever may read the archive.
* A file decoded from a session belongs to the session's owner and group; a
  class of users (owner, group, others) may read it only if that class may
  read what it is decoded from: the session folder and, for a channel's
  files, the channel's folder, its segment folders and their metadata
  (`.tmet`) files (a matrix: every channel's). Its times are the newest of
  those: a writer that appends blocks rewrites the segment's `.tmet`. The
  data and index files are not looked at: nothing else in a listing reads
  their inodes, and on a cold cache each one is a read from disk (a cold
  ls -lR of 100 sessions x 64 channels paid 12,800 of them).
* The decoded files of an encrypted session opened with the password belong
  to the user who mounted it, mode 0444 & ~umask: the password, not the
  source's modes, kept others out, and it is the mounting user's to share.
  The umask is 077 (only that user) unless `-o umask=M` says otherwise.

Stats of the source are reused for SOURCE_TTL seconds (the kernel itself
trusts ours for the mount's attr_timeout); so are folder listings that carry
attributes (readdirplus), see `fresh`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time

BLOCK = 4096
DEFAULT_UMASK = 0o077          # decoded files of an encrypted session: the mounting user's only
# seconds a walk of a session's files is reused: as long as the kernel trusts what we
# answered (cli.ATTR_TIMEOUT); shorter re-walked every file of every session on each
# ls -lR (a warm ls -lR of 100 sessions x 64 channels went from 1 s to 4-5 s)
SOURCE_TTL = 10.0
READ, ENTER = 0o4, 0o5         # what reading a file / a folder's files needs: r / r-x
# stands for what the daemon itself cannot read: mode 0, no times
_NOBODY = os.stat_result((0,) * 10, {"st_atime_ns": 0, "st_mtime_ns": 0, "st_ctime_ns": 0})
KEEP_WALKS = 64                # more than this many: the stale ones are dropped


def parse_umask(text) -> int:
    """`-o umask=M`: an octal mode mask, 0..777."""
    try:
        value = int(str(text), 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise ValueError(f"-o umask={text}: expected an octal mask such as 077 or 022")
    return value


def _fserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _readers(base: os.stat_result, chain) -> int:
    """Read bits (a subset of 0444) for base's owner, base's group and others: set
    for a class only if that class may read every (stat, need) of the chain."""
    user = group = other = True
    for st, need in chain:
        m = st.st_mode
        ubits = m >> 6 if st.st_uid == base.st_uid else m >> 3 if st.st_gid == base.st_gid else m
        gbits = m >> 3 if st.st_gid == base.st_gid else m
        user = user and ubits & need == need
        group = group and gbits & need == need
        other = other and m & need == need
    return (0o400 if user else 0) | (0o040 if group else 0) | (0o004 if other else 0)


def _enter(read_bits: int) -> int:
    """A folder anyone may read may also be entered: r -> r-x."""
    return read_bits | read_bits >> 2


def _newest(stats) -> tuple[int, int, int]:
    stats = list(stats)
    return (max(s.st_atime_ns for s in stats), max(s.st_mtime_ns for s in stats),
            max(s.st_ctime_ns for s in stats))


class _Walk:
    """One look at a session's files: its folder and its own files at once, each
    channel's tree when first asked for (a stat of one file walks one channel)."""

    def __init__(self, path: str):
        self.made = time.monotonic()
        self.base = os.stat(path)
        self.archive = not stat.S_ISDIR(self.base.st_mode)
        self.top: list = [(self.base, READ if self.archive else ENTER)]
        self._folders: dict[str, str] = {}        # channel folder name, lower case -> path
        self._trees: dict[str, list] = {}
        self.answers: dict[tuple, tuple] = {}     # (session identity, channels) -> owner, bits, times
        if self.archive:
            return
        try:
            entries = list(os.scandir(path))
        except OSError:
            entries = []
        for entry in entries:
            try:
                if entry.name.lower().endswith(".timd") and entry.is_dir():
                    self._folders[entry.name[:-5].lower()] = entry.path
                elif entry.is_file():
                    self.top.append((entry.stat(), READ))
            except OSError:
                continue

    def _tree(self, name: str) -> list:
        """(stat, need) of a channel folder, its segment folders and their `.tmet`
        files; a part the daemon cannot read itself is read by nobody (mode 0)."""
        tree = self._trees.get(name)
        if tree is not None:
            return tree
        folder = self._folders[name]
        try:
            tree = [(os.stat(folder), ENTER)]
            for entry in os.scandir(folder):
                if entry.is_dir(follow_symlinks=False):
                    tree.append((entry.stat(), ENTER))
                    tmet = os.path.join(entry.path, entry.name[:-len(".segd")] + ".tmet")
                    with contextlib.suppress(FileNotFoundError):
                        tree.append((os.stat(tmet), READ))
                elif entry.name.endswith((".rdat", ".ridx")):
                    tree.append((entry.stat(), READ))
        except OSError:
            tree = [(_NOBODY, READ)]
        self._trees[name] = tree
        return tree

    def everything(self) -> list:
        return self.top + [item for name in self._folders for item in self._tree(name)]

    def chain(self, channels) -> list:
        """What a file decoded from these channels (none: session metadata) comes from."""
        if self.archive or not channels:
            return self.top
        out = [self.top[0]]
        for name in channels:
            if name.lower() not in self._folders:   # not found by name: all, to be safe
                return self.everything()
            out += self._tree(name.lower())
        return out


class Attributes:
    """st_* of every node the namespace hands out (namespace.Node)."""

    def __init__(self, password: str = "", umask: int | None = None, ttl: float = SOURCE_TTL):
        self.password = password
        self.umask = DEFAULT_UMASK if umask is None else umask
        self.ttl = ttl
        self.uid, self.gid = os.getuid(), os.getgid()
        self._walks: dict[str, _Walk] = {}
        self._encrypted: dict[tuple, bool] = {}
        self._lock = threading.Lock()

    def of(self, node) -> dict:
        if node.kind == "dir":
            return self._shown(self._stat(node.real), 2)
        if node.kind == "sessiondir" and not node.rel:
            st = self._stat(node.real)
            if stat.S_ISDIR(st.st_mode):
                return self._shown(st, 2)
            return self._make(stat.S_IFDIR | _enter(st.st_mode & 0o444), 0, st, _newest([st]), 2)
        session = getattr(node, "session", None)
        if session is None:
            if node.real and node.kind == "file":            # a SOURCE file shown as it is
                st = self._stat(node.real)
                return self._shown(st, 1, getattr(node.file, "size", st.st_size))
            now = time.time_ns()                             # the mount's own (stats) file
            return self._make(stat.S_IFREG | 0o444, node.file.size, None, (now, now, now), 1,
                              (self.uid, self.gid))
        return self._decoded(node, session)

    # -- decoded files and the folders inside a session ---------------------

    def _decoded(self, node, session) -> dict:
        walk = self._walk(session.path)
        rows = getattr(node.file, "rows", None) if node.kind == "file" else None
        if not rows:
            channels = ()
        elif len(rows) == 1:            # a channel's own file: most of a listing
            channels = (rows[0].channel,)
        else:
            channels = tuple(sorted({t.channel for t in rows}))
        key = (getattr(session, "identity", ()), channels)
        known = walk.answers.get(key)
        if known is None:
            chain = walk.chain(channels)
            # a channel's data changes with its own files; session metadata (info.json,
            # ...) with any channel's
            times = _newest(st for st, _ in (chain[1:] if channels and len(chain) > 1
                                             else walk.everything()))
            if self._locked(session):
                owner, bits = (self.uid, self.gid), 0o444 & ~self.umask
            else:
                owner, bits = (walk.base.st_uid, walk.base.st_gid), _readers(walk.base, chain)
            known = walk.answers[key] = (owner, bits, times)
        owner, bits, times = known
        if node.kind == "file":
            return self._make(stat.S_IFREG | bits, node.file.size, None, times, 1, owner)
        return self._make(stat.S_IFDIR | _enter(bits), 0, None, times, 2, owner)

    def fresh(self, made: float) -> bool:
        """Is what was answered at time.monotonic() `made` still what the source says?"""
        return time.monotonic() - made <= self.ttl

    def _locked(self, session) -> bool:
        """An encrypted session that the password opened: its decoded files are the mounter's."""
        if not self.password or not getattr(session, "ok", False):
            return False
        key = (session.path, getattr(session, "identity", ()))
        known = self._encrypted.get(key)
        if known is None:
            try:
                import mef3io
                known = bool(mef3io.inspect(session.path).encryption.get("encrypted", True))
            except Exception:      # cannot tell: treat it as encrypted
                known = True
            self._encrypted[key] = known
        return known

    def _walk(self, path: str) -> _Walk:
        with self._lock:
            walk = self._walks.get(path)
        if walk is None or time.monotonic() - walk.made > self.ttl:
            try:
                walk = _Walk(path)
            except OSError as exc:
                raise _fserror(exc.errno or errno.ENOENT)
            with self._lock:
                if len(self._walks) > KEEP_WALKS:
                    now = time.monotonic()
                    self._walks = {p: w for p, w in self._walks.items() if now - w.made <= self.ttl}
                self._walks[path] = walk
        return walk

    # -- building st_* --------------------------------------------------------

    @staticmethod
    def _stat(real: str) -> os.stat_result:
        try:
            return os.stat(real)
        except OSError as exc:
            raise _fserror(exc.errno or errno.ENOENT)

    def _shown(self, st: os.stat_result, nlink: int, size: int | None = None) -> dict:
        kind = stat.S_IFMT(st.st_mode)
        size = 0 if kind == stat.S_IFDIR else st.st_size if size is None else size
        return self._make(kind | (st.st_mode & 0o555), size, st, _newest([st]), nlink)

    @staticmethod
    def _make(mode: int, size: int, st, times, nlink: int, owner=None) -> dict:
        uid, gid = owner if owner else (st.st_uid, st.st_gid)
        atime, mtime, ctime = times
        return {"st_mode": mode, "st_nlink": nlink, "st_size": size, "st_uid": uid, "st_gid": gid,
                "st_atime": atime, "st_mtime": mtime, "st_ctime": ctime,
                "st_blksize": BLOCK, "st_blocks": (size + 511) // 512}
