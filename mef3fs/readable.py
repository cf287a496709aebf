"""A readable view of a session some of whose channel folders we may not read.

mef3io's lenient open skips channels it cannot decode, but not a channel
folder it may not list: the whole open fails. So, when that happens, the
session is opened through a private folder of symbolic links to the parts
that can be read, and each channel left out is named with the reason. The
views live under one scratch folder per mount, removed at unmount.
"""

from __future__ import annotations

import hashlib
import os
import shutil


def unreadable_part(folder: str) -> str | None:
    """The first path in a channel folder that cannot be listed or stat-ed."""
    todo = [folder]
    while todo:
        current = todo.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            return current
        for e in entries:
            try:
                if e.is_dir():
                    todo.append(e.path)
                elif not os.access(e.path, os.R_OK):
                    return e.path
            except OSError:
                return e.path
    return None


def readable_view(path: str, scratch: str) -> tuple[str, list[dict]]:
    """(a folder that mef3io can open in place of `path`, the channels left out of it)."""
    view = os.path.join(scratch, hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:16],
                        os.path.basename(path))
    shutil.rmtree(os.path.dirname(view), ignore_errors=True)
    os.makedirs(view)
    left_out = []
    for e in sorted(os.scandir(path), key=lambda e: e.name):
        if e.name.lower().endswith(".timd") and e.is_dir():
            problem = unreadable_part(e.path)
            if problem is not None:
                left_out.append({"name": e.name[:-len(".timd")],
                                 "reason": f"permission denied: {problem} cannot be read"})
                continue
        os.symlink(e.path, os.path.join(view, e.name))
    return view, left_out


def is_permission_problem(exc: Exception) -> bool:
    text = str(exc)
    return isinstance(exc, PermissionError) or "Permission denied" in text
