"""Did a session that changed on disk grow, or is it another session now?

Growth keeps every file of the mount where it was: appended blocks, new
segments, new channels, new records. Anything else (a session written again
in place, a channel gone) is a new session, and that verdict cannot be taken
back: handles held open get ESTALE, and no tile, index or reader of the old
one is used again. So the file-level evidence (grew) is checked against a
read of the session (why_not_grown), and a read that contradicts the files
is believed only once they have stopped changing (settled): mef3io's Writer
appends a block in five steps (data, index entry, both headers rewritten in
place, metadata renamed), and a read between two of them can miss a channel
(CI saw a held handle get ESTALE from an append that way).
"""

from __future__ import annotations

import logging
import time

from .index import still_the_same

log = logging.getLogger("mef3fs.growth")

GROWING = (".tdat", ".tidx")  # files a writer only ever appends to
SETTLE = 0.5                  # seconds a session's files must stay unchanged before a contradicting read is believed
STUCK = 30.0                  # ... while an index entry is half written (a writer that died mid-append)


def grew(old, new) -> bool:
    """Could signature `new` be the same session as `old` with more written to it? Every
    data and index file still the same file, none shorter (metadata and record files
    are rewritten by writers, and may come and go). Without an old signature
    (never in use), only the blocks read from it can tell (why_not_grown)."""
    if old is None:
        return True
    old, new = old.files(), new.files()
    for name, (ino, size, _) in old.items():
        if name.endswith(GROWING) or name == "":
            now = new.get(name)
            if now is None or now[0] != ino or now[1] < size:
                return False
    return True


def why_not_grown(old, new, readers, index) -> str:
    """Why session `new`, read after its files grew, is not `old` with more in it
    ("" when it is): every file of `old` must keep its meaning, and every block read
    from it must still be there."""
    if old.meta is None or new.meta is None or old.meta.t0 != new.meta.t0:
        return "the grid start changed"
    rates = {c.name: c.fs for c in new.meta.channels}
    if any(rates.get(c.name) != c.fs for c in old.meta.channels):
        return "a channel is gone or changed its rate"
    try:
        if not still_the_same(old.meta, readers.get(*new.reader_at), index):
            return "blocks read from it before are not there now"
    except Exception as exc:            # cannot tell: then it is not the same session
        log.debug("comparing %s with what it was: %s", old.shown_path, exc)
        return f"it cannot be compared with what it was ({exc})"
    return ""


def settled(session, sig, now: float | None = None) -> bool:
    """May a read of signature `sig` that contradicts its files be believed? Only once
    the same signature has held for SETTLE seconds (STUCK with an index entry half
    written): a writer caught half-way makes the next check see other files."""
    now = time.monotonic() if now is None else now
    seen = session.doubt
    if seen is None or seen[0] != sig:
        session.doubt = (sig, now)
        return False
    return now - seen[1] >= (STUCK if sig.half_written() else SETTLE)


def changed_since_read(session, readers) -> bool:
    """Does the session on disk differ from its metadata as read (channels,
    segments, their blocks and samples)? A fresh reader's answer."""
    if not session.ok:
        return False
    try:
        reader = readers.fresh(session.reader_at[0])
        now = {n: [(s["segment"], s["start_time"], s["end_time"], s["number_of_samples"],
                    s["number_of_blocks"]) for s in reader.segments(n)] for n in reader.channels}
    except Exception:
        return True
    then = {c.name: [(s["segment"], s["start_time"], s["end_time"], s["number_of_samples"],
                      s["number_of_blocks"]) for s in c.segments] for c in session.meta.channels}
    return any(now.get(name) != segs for name, segs in then.items()) or \
        bool(set(now) - set(then) - {d["name"] for d in session.meta.left_out})
