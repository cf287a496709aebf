"""The mount table, read without touching any FUSE server.

/proc/self/mountinfo answers even for a dead mount (ENOTCONN), where a
stat of the mountpoint would fail or hang.
"""

from __future__ import annotations

import os
import re


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_type_at(path: str) -> str | None:
    """The filesystem type mounted exactly at path ('fuse.mef3fs', 'tmpfs', ...), or None."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            found = None
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4 and _unescape(fields[4]) == real:
                    found = fields[fields.index("-") + 1]   # the last mount there wins
            return found
    except OSError:  # no /proc: not Linux
        return "unknown" if os.path.ismount(path) else None
