"""Statahead: the sessions a walk of SOURCE reaches next are opened before it gets there.

`ls -lR`, `find`, file browsers and BIDS indexers walk SOURCE in name order
and enter each session after the one before. Opening one is first mef3io
reading its channels' metadata (disk reads and C code, which let the GIL
go) and then laying out its files (Python). A thread opens the next
AHEAD sessions in that order while the walk's own requests work on the
current one, so the reads of one overlap the Python of another: a
filesystem's statahead, as Lustre has for `ls -l`.

It follows requests, as read-ahead follows a stream: it starts when a
request uses a session predicted after the one used before (a walk), so
listing SOURCE's folders, a viewer opening one session or jumping between
sessions opens nothing ahead, and a walk that stops stops it.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .namespace import session_kind

log = logging.getLogger("mef3fs.statahead")

AHEAD = 2                  # sessions opened ahead of the one a request used last
LOOK_FOLDERS = 64          # folders looked into for one prediction at most
FOLDER_TTL = 2.0           # seconds a folder's sorted entries are reused for predictions
MAX_FOLDERS = 1024


class Statahead:
    """The thread that opens the sessions predicted after the last one a request used.

    One thread: a second one (to read one session while the other lays one
    out) made a cold ls -lR of 100 sessions slower (4.9-5.7 s against 4.5-5.4 s):
    the layout is Python, and the two only took the GIL from each other."""

    def __init__(self, namespace, stats=None, ahead: int = AHEAD):
        self._ns = namespace
        self._stats = stats
        self.ahead = ahead
        self._cursor: str | None = None        # the session a request used last (real path)
        self._moves = 0                         # how many times a request moved it
        self._expected: set[str] = set()        # what was predicted after the one before
        self._wake = threading.Condition()
        self._stop = False
        self._folders: dict[str, tuple[float, list]] = {}
        self._thread = None

    def start(self) -> None:
        if self.ahead > 0:
            self._thread = threading.Thread(target=self._run, name="mef3fs-statahead", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(5.0)

    def used(self, real: str) -> None:
        """A request opened this session, or used one opened ahead for the first time."""
        if self._thread is None:
            return
        with self._wake:
            self._cursor = real
            self._moves += 1
            self._wake.notify()

    def _moved(self, since: int) -> bool:
        with self._wake:
            return self._moves != since or self._stop

    def _run(self) -> None:
        seen = 0
        while True:
            with self._wake:
                while self._moves == seen and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                seen, cursor = self._moves, self._cursor
            try:
                self._open_after(cursor, seen)
            except Exception as exc:   # a prediction is only a guess: the walk's own request opens it
                log.debug("statahead after %s: %s", cursor, exc)

    def _open_after(self, cursor: str, seen: int) -> None:
        upcoming = self.after(cursor, self.ahead)
        walking, self._expected = cursor in self._expected, set(upcoming)
        if not walking:
            return                     # one session, or a jump: nothing to follow yet
        for real in upcoming:
            if self._moved(seen):
                return                 # the walk moved on: predict from where it is now
            if self._ns.open_session(real) is None:
                self._ns.session(real, ahead=True)
                if self._stats is not None:
                    self._stats.add("sessions_ahead")

    # -- what comes next ------------------------------------------------------

    def after(self, real: str, k: int) -> list[str]:
        """The next k sessions after this one in a walk of SOURCE in name order."""
        source = self._ns.source
        if not real.startswith(source.rstrip("/") + "/"):
            return []                  # SOURCE itself is the session, or not below it
        out: list[str] = []
        budget = [LOOK_FOLDERS]
        path = real
        while len(out) < k and path != source and os.path.dirname(path) != path:
            parent = os.path.dirname(path)
            name = os.path.basename(path)
            for child_name, child in self._entries(parent):
                if child_name > name:
                    self._collect(child, out, k, budget)
                    if len(out) >= k or budget[0] <= 0:
                        return out
            path = parent
        return out

    def _collect(self, real: str, out: list, k: int, budget: list) -> None:
        if session_kind(real):
            out.append(real)
            return
        if budget[0] <= 0 or not os.path.isdir(real):
            return
        budget[0] -= 1
        for _, child in self._entries(real):
            self._collect(child, out, k, budget)
            if len(out) >= k or budget[0] <= 0:
                return

    def _entries(self, folder: str) -> list:
        now = time.monotonic()
        known = self._folders.get(folder)
        if known is not None and now - known[0] < FOLDER_TTL:
            return known[1]
        try:
            entries = self._ns.shown_entries(folder)
        except OSError:
            entries = []
        if len(self._folders) >= MAX_FOLDERS:
            self._folders.clear()
        self._folders[folder] = (now, entries)
        return entries
