"""`mef3fs [options] SOURCE MOUNTPOINT`: check everything, then mount.

Without -f the command forks a daemon and returns only when the mount is
ready (exit 0) or has failed (exit 1, one line). A bad command line exits 2
with one line and mounts nothing. Nothing heavy is imported at module level:
spawned decoder workers re-import the entry point.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys

from . import __version__
from .hostroot import HOST_ROOT_ENV, HostRoot
from .mounts import mount_type_at

log = logging.getLogger("mef3fs")

ATTR_TIMEOUT = 10      # seconds the kernel may trust a lookup or stat
MIN_INDEX_BUDGET = 16 << 20


def index_budget(cache_size: int) -> int:
    """Block indexes get an eighth of the tile cache's budget, at least 16 MiB
    (a channel-hour of 1 s blocks is about 9 KiB of tiles and gaps)."""
    return max(MIN_INDEX_BUDGET, cache_size // 8)
LOG_FORMAT = "%(asctime)s mef3fs[%(process)d] %(levelname)s %(message)s"


class UsageError(Exception):
    """A bad command line: exit 2 before anything is mounted."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .decoders import DECODERS
    from .engine import default_workers
    p = _Parser(prog="mef3fs", description="Mount MEF 3.0 sessions as folders of raw float32 "
                "channel files (read-only).", epilog="Unmount with: fusermount3 -u MOUNTPOINT")
    p.add_argument("source", metavar="SOURCE", help="a folder holding sessions, or one session "
                   "(NAME.mefd folder or NAME.mefd.tar)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty folder")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true",
                   help="log every FUSE call and cache decision (implies -f)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="FUSE mount options, e.g. allow_other")
    p.add_argument("--decoder", choices=DECODERS, default="mef3io", help="default: mef3io")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password", help="password for encrypted sessions (visible in ps: "
                    "prefer --password-file)")
    pw.add_argument("--password-file", metavar="FILE", help="read the password from FILE's first line")
    p.add_argument("--tile-seconds", type=_positive_float, default=10.0,
                   help="target tile length in seconds (default 10: one mef3io block)")
    p.add_argument("--cache-size", type=parse_size, default=parse_size("512M"),
                   metavar="SIZE", help="tile cache budget, e.g. 512M (default)")
    p.add_argument("--index-size", type=parse_size, default=None, metavar="SIZE",
                   help="memory for block indexes, shared by all sessions (default: an eighth of "
                   "--cache-size, at least 16M); the least recently used are dropped and read again")
    p.add_argument("--cache-ttl", type=_positive_float, default=300.0, metavar="SECONDS",
                   help="drop tiles idle this long (default 300)")
    p.add_argument("--refresh", type=_non_negative_float, default=1.0, metavar="SECONDS",
                   help="how often a session in use is checked for new data (default 1; 0: never)")
    p.add_argument("--workers", type=_count, default=default_workers(), metavar="N",
                   help="decoder processes (default: CPU count; 0 decodes in the daemon)")
    p.add_argument("--readahead", type=parse_size, default=parse_size("64M"), metavar="SIZE",
                   help="largest read-ahead window per sequential stream (default 64M, 0: off)")
    p.add_argument("--host-root", metavar="DIR", default=None,
                   help=f"SOURCE is a host path under DIR (env {HOST_ROOT_ENV}; the Docker image "
                   "sets /host_root)")
    p.add_argument("--log-file", metavar="FILE", help="log here (default: stderr, which a "
                   "daemon closes once mounted)")
    p.add_argument("--version", action="version", version=f"mef3fs {__version__}")
    return p


def fuse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        for opt in filter(None, (s.strip() for s in item.split(","))):
            key, sep, value = opt.partition("=")
            out[key] = value if sep else True
    return out


def _check_mountpoint(path: str) -> str:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"MOUNTPOINT {path!r} does not exist")
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise UsageError(f"MOUNTPOINT {path!r} is a dead FUSE mount (its daemon was killed): "
                             f"clear it with 'fusermount3 -u {path}'")
        raise UsageError(f"MOUNTPOINT {path!r}: {exc.strerror}")
    import stat as _stat
    if not _stat.S_ISDIR(st.st_mode):
        raise UsageError(f"MOUNTPOINT {path!r} is not a folder")
    if (mount_type_at(path) or "").startswith("fuse"):
        # Any other mount (the bind mount Docker puts on a container's
        # mountpoint) is fine to mount over.
        raise UsageError(f"MOUNTPOINT {path!r} is already a mount point "
                         f"(unmount it first: fusermount3 -u {path})")
    if os.listdir(path):
        raise UsageError(f"MOUNTPOINT {path!r} is not empty")
    return os.path.abspath(path)


def _check_source(args) -> tuple[str, HostRoot]:
    from .namespace import session_kind
    try:
        host = HostRoot.from_cli(args.host_root)
        real = host.resolve_source(args.source)
    except ValueError as exc:
        raise UsageError(str(exc))
    shown = args.source
    if not os.path.exists(real):
        raise UsageError(f"SOURCE {shown!r} does not exist")
    if not os.access(real, os.R_OK):
        raise UsageError(f"SOURCE {shown!r} is not readable")
    if not (os.path.isdir(real) or session_kind(real)):
        raise UsageError(f"SOURCE {shown!r} is neither a folder nor a session (NAME.mefd.tar)")
    return real, host


def _password(args) -> str:
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"--password-file {args.password_file!r}: {exc.strerror}")
    return args.password or ""


def _setup_logging(args) -> None:
    handler = logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # A daemon logging to the terminal it leaves says only what went wrong.
    quiet = not (args.log_file or args.foreground)
    root.setLevel(logging.DEBUG if args.debug else logging.WARNING if quiet else logging.INFO)
    if not args.debug:
        logging.getLogger("fuse").setLevel(logging.WARNING)


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.debug:
            args.foreground = True
        source, host = _check_source(args)
        mountpoint = _check_mountpoint(args.mountpoint)
        password = _password(args)
        if args.log_file:
            open(args.log_file, "a").close()
    except UsageError as exc:
        print(f"mef3fs: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mef3fs: error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args)
    if args.foreground:
        return run(args, source, host, mountpoint, password, on_ready=None)
    from .daemon import daemonize
    return daemonize(lambda ready: run(args, source, host, mountpoint, password, on_ready=ready),
                     args.log_file)


def run(args, source: str, host: HostRoot, mountpoint: str, password: str, on_ready) -> int:
    """Mount and serve until unmounted or signalled; libfuse owns SIGINT/SIGTERM/SIGHUP."""
    from .fuselib import FUSE, fuse
    from .engine import Engine
    from .fuseops import DebugOperations, Mef3fsOperations
    from .index import IndexCache, MetaReaders
    from .namespace import Namespace
    from .refresh import Refresher
    from .views.files import DynamicFile

    engine = Engine(args.decoder, password, args.workers, args.cache_size, args.cache_ttl,
                    readahead=args.readahead > 0)
    stats_file = DynamicFile(engine.stats_json, ".mef3fs-stats.json")
    readers = MetaReaders(password)
    budget = args.index_size if args.index_size is not None else index_budget(args.cache_size)
    index = IndexCache(readers, budget, engine.stats,
                       on_first_load=engine.session_first_read)
    namespace = Namespace(source, host.display, password, args.tile_seconds, stats_file, readers, index)
    engine.reporters += [index.snapshot, lambda: {"sessions_open": namespace.sessions_open}]
    ops_class = DebugOperations if args.debug else Mef3fsOperations
    refresher = Refresher(namespace, args.refresh, None)
    namespace.on_changed = refresher.drop_cached
    ops = ops_class(namespace, engine, args.readahead, on_ready=on_ready, refresher=refresher)
    refresher.invalidate = ops.kernel.invalidate
    options = {"fsname": f"mef3fs:{args.source}", "subtype": "mef3fs", "ro": True,
               "default_permissions": True, "attr_timeout": ATTR_TIMEOUT,
               "entry_timeout": ATTR_TIMEOUT, "negative_timeout": 0}
    if fuse.fuse_version_major == 3:
        # libfuse 3.14's default (-1) is reported as invalid on every mount
        options["max_idle_threads"] = 10
    options.update(fuse_options(args.options))
    log.info("mounting %s at %s", args.source, mountpoint)
    try:
        FUSE(ops, mountpoint, foreground=True, nothreads=False, raw_fi=True, **options)
    except RuntimeError as exc:
        # mfusepy under libfuse3 reports a signal-triggered exit as an error too
        if not ops.mounted:
            log.error("mounting %s at %s failed (libfuse: %s)", args.source, mountpoint, exc)
            return 1
    return 0 if ops.mounted else 1
