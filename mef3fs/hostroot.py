"""Host-root mapping: SOURCE is a path on the host, read through a bind mount.

In the Docker image the host's ``/`` is bind-mounted read-only at
``/host_root`` and ``MEF3FS_HOST_ROOT=/host_root`` is set, so a user types the
host path they know (``/data/study``) and the daemon opens
``/host_root/data/study``.  Paths shown back to the user (info.json, logs,
errors) are the host paths, via :func:`display`.

The mapping is explicit: ``--host-root DIR`` or the environment variable
``MEF3FS_HOST_ROOT``.  It is never guessed from ``/.dockerenv`` (that file
exists on machines that are not the image).

Symbolic links are resolved here, one component at a time, the way the host
would resolve them: a link written on the host as ``/data -> /mnt/disk1/data``
means ``DIR/mnt/disk1/data``, not ``/mnt/disk1/data`` in the container.  A
``..`` or a link that would leave DIR is refused with a ``ValueError`` naming
the host path the user typed.

Pure standard library; no FUSE or MEF imports, so it can be imported (and
tested) on its own.
"""

from __future__ import annotations

import os
import posixpath
from typing import Mapping, Optional, Tuple

__all__ = [
    "HOST_ROOT_ENV",
    "HostRoot",
    "host_root_from",
    "resolve",
    "display",
    "shown_path",
]

#: Environment variable that names the host root (the image sets /host_root).
HOST_ROOT_ENV = "MEF3FS_HOST_ROOT"

# Same limit as Linux's MAXSYMLINKS (ELOOP after 40 links in one lookup).
_MAX_SYMLINKS = 40


def host_root_from(cli_value: Optional[str],
                   environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The host root in force: the CLI value wins, else the env var, else None.

    ``cli_value`` is the ``--host-root`` argument (None when not given).  An
    empty string given on the command line (``--host-root ''``) switches the
    mapping off even when the environment sets it; an empty environment
    variable counts as unset.  ``/.dockerenv`` is never consulted.
    """
    if environ is None:
        environ = os.environ
    if cli_value is not None:
        return cli_value or None
    return environ.get(HOST_ROOT_ENV) or None


def _root_dir(host_root: str) -> str:
    """Absolute, symlink-free form of DIR; ValueError if it is not a folder."""
    if not os.path.isdir(host_root):
        raise ValueError(f"host root {host_root!r} ({HOST_ROOT_ENV} or --host-root) "
                         "is not a folder")
    return os.path.realpath(host_root)


def _split(path: str) -> list:
    return [c for c in path.split("/") if c]


def resolve(user_path: str, host_root: Optional[str]) -> str:
    """The real path to open for ``user_path``.

    Without a host root: ``user_path`` made absolute (symlinks left alone).

    With a host root DIR: ``user_path`` must be an absolute host path; it maps
    to ``DIR/<path>`` with every symbolic link resolved as on the host
    (absolute targets are relative to DIR).  Components that do not exist are
    kept as typed, so the caller's own "not found" check reports them.
    Raises ``ValueError`` (message names ``user_path``) if the path is
    relative, or a ``..`` or symbolic link leads out of DIR, or links loop.
    """
    if host_root is None:
        return os.path.abspath(user_path)
    if not isinstance(user_path, str) or not user_path:
        raise ValueError("empty path given with a host root")
    if not user_path.startswith("/"):
        raise ValueError(
            f"{user_path!r} is not an absolute host path: with a host root "
            f"({host_root}) paths are host paths; give the full path "
            f"(e.g. \"$PWD/{user_path}\" on the host)")
    root = _root_dir(host_root)

    def refuse(why: str) -> ValueError:
        return ValueError(f"host path {user_path!r} leads outside the host root "
                          f"({why}); refused")

    done: list = []                 # resolved host components, no symlinks in them
    todo = _split(user_path)[::-1]  # components still to walk (stack, next last)
    links = 0
    last_link = ""                  # for the message: the link most recently followed
    while todo:
        comp = todo.pop()
        if comp == ".":
            continue
        if comp == "..":
            if not done:
                raise refuse(f"via symbolic link {last_link}" if last_link
                             else "'..' above '/'")
            done.pop()
            continue
        here = done + [comp]
        real = posixpath.join(root, *here)
        if os.path.islink(real):
            links += 1
            if links > _MAX_SYMLINKS:
                raise ValueError(f"host path {user_path!r}: too many levels of "
                                 "symbolic links")
            target = os.readlink(real)
            last_link = f"/{'/'.join(here)} -> {target}"
            if target.startswith("/"):
                done = []           # absolute on the host = relative to DIR
            # Walk the target's components next, then the rest of the path
            # (so a '..' after a link climbs from the link's target, as on Linux).
            todo.extend(reversed(_split(target)))
            continue
        done = here
    result = posixpath.join(root, *done) if done else root
    # Belt and braces: the walk above cannot leave root, but say so if it did.
    if result != root and not result.startswith(root.rstrip("/") + "/"):
        raise refuse("resolved to " + result)
    return result


def display(real_path: str, host_root: Optional[str],
            source: Optional[Tuple[str, str]] = None) -> str:
    """The host path a user sees for ``real_path`` (inverse of :func:`resolve`).

    ``source``, if given, is ``(real_source, shown_source)`` — the result of
    :func:`resolve` for SOURCE and the path the user typed (see
    :func:`shown_path`); paths under ``real_source`` are then shown under
    what the user typed, even when resolving went through symbolic links
    (``/data/x`` typed, ``/host_root/mnt/disk1/data/x`` opened: shown as
    ``/data/x/...``).  Otherwise a path under DIR is shown as ``/<rel>``.
    Without a host root, or for a path not under DIR, ``real_path`` itself.
    """
    if not real_path:
        return real_path
    path = posixpath.normpath(real_path)
    if source is not None:
        real_source, shown_source = source
        real_source = posixpath.normpath(real_source)
        if path == real_source:
            return shown_source
        if path.startswith(real_source.rstrip("/") + "/"):
            rest = path[len(real_source.rstrip("/")) + 1:]
            return posixpath.join(shown_source, rest)
    if host_root is None:
        return real_path
    host_path = _host_path_of(path, host_root)
    return real_path if host_path is None else host_path


def _host_path_of(path: str, host_root: str) -> Optional[str]:
    """``/<rel>`` if the normalised ``path`` is DIR or under it, else None."""
    roots = {posixpath.normpath(os.path.abspath(host_root)),
             os.path.realpath(host_root)}
    # Longest root first, so a root that is a prefix of the other cannot win.
    for root in sorted(roots, key=len, reverse=True):
        if path == root:
            return "/"
        prefix = root.rstrip("/") + "/"
        if path.startswith(prefix):
            return "/" + path[len(prefix):]
    return None


def shown_path(user_path: str) -> str:
    """What to show for a path the user typed: normalised, made absolute.

    (With a host root the typed path is already absolute; ``normpath`` only
    drops ``//``, ``.`` and trailing slashes.  Note ``normpath`` also folds
    ``a/../b`` lexically, which is what the user wrote, not what the host
    resolves; it is for display only.)
    """
    return posixpath.normpath(os.path.abspath(user_path))


class HostRoot:
    """Convenience holder for the CLI and the namespace.

        hr = HostRoot.from_cli(args.host_root)   # CLI value, else env, else None
        real_source = hr.resolve_source(args.source)   # ValueError -> exit 2
        ...open real_source...; show hr.display(some_real_path)
    """

    def __init__(self, root: Optional[str]):
        self.root = root
        self.source: Optional[Tuple[str, str]] = None

    @classmethod
    def from_cli(cls, cli_value: Optional[str],
                 environ: Optional[Mapping[str, str]] = None) -> "HostRoot":
        return cls(host_root_from(cli_value, environ))

    @property
    def active(self) -> bool:
        return self.root is not None

    def resolve(self, user_path: str) -> str:
        return resolve(user_path, self.root)

    def resolve_source(self, user_path: str) -> str:
        """resolve() that also remembers SOURCE so display() shows it as typed."""
        real = resolve(user_path, self.root)
        if ".." in user_path.split("/"):
            # A lexical fold of '..' can differ from what the host resolves
            # (after a symlink); show the resolved host path instead.
            shown = display(real, self.root)
        else:
            shown = shown_path(user_path)
        self.source = (real, shown)
        return real

    def display(self, real_path: str) -> str:
        return display(real_path, self.root, self.source)

    def realpath(self, real_path: str) -> Optional[str]:
        """``os.path.realpath`` with the host's meaning of symbolic links.

        For the namespace's walk inside SOURCE: under a host root, a link
        written on the host (``latest -> /data/study/2024``) is followed to
        ``DIR/data/study/2024``, not to the container's ``/data/study/2024``.
        None if the path leads out of DIR (treat as "outside SOURCE").
        Without a host root: plain ``os.path.realpath``.
        """
        if self.root is None:
            return os.path.realpath(real_path)
        host_path = _host_path_of(posixpath.normpath(os.path.abspath(real_path)),
                                  self.root)
        if host_path is None:
            return None             # not under DIR at all
        try:
            return resolve(host_path, self.root)
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"HostRoot({self.root!r})"
