"""`mef3fs [options] SOURCE MOUNTPOINT`: check everything, then mount.

Without -f the command forks a daemon and returns only when the mount is
ready (exit 0) or has failed (exit 1, one line). A bad command line exits 2
with one line and mounts nothing. Nothing heavy is imported at module level:
spawned decoder workers re-import the entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import math
import logging
import os
import re
import shutil
import sys
import tempfile

from . import __version__
from .hostroot import HOST_ROOT_ENV, HostRoot, resolve as hostroot_resolve
from .mounts import mount_type_at

log = logging.getLogger("mef3fs")

ATTR_TIMEOUT = 10      # seconds the kernel may trust a lookup or stat
MIN_INDEX_BUDGET = 16 << 20


def index_budget(cache_size: int) -> int:
    """Block indexes get an eighth of the tile cache's budget, at least 16 MiB: our
    tile tables (a channel-hour of 1 s blocks is about 9 KiB), and in each process
    the indexes mef3io's open readers keep (about 200 KiB per channel-hour)."""
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


def _number(text: str, kind=float, what: str = "a number") -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def _count(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def _workers(text: str) -> int:
    from .engine import WORKERS_PER_CPU, cpu_count, max_workers
    value = _count(text)
    if value > max_workers():
        raise argparse.ArgumentTypeError(
            f"{value} is more than {max_workers()} ({WORKERS_PER_CPU} per CPU, {cpu_count()} CPUs here): "
            "more decoder processes only compete for the same cores")
    return value


# -o options we pass to libfuse (but umask, which is mef3fs's own: attrs.py).
# Anything else is refused before mounting: a typo would otherwise reach
# libfuse, which fails with lines of its own, and some options (rw,
# direct_io) would break what the mount promises.
FUSE_OPTIONS = {
    "allow_other", "allow_root", "auto_unmount", "default_permissions", "ro", "nosuid", "nodev",
    "noexec", "noatime", "fsname", "subtype", "uid", "gid", "umask", "max_read", "attr_timeout",
    "entry_timeout", "negative_timeout", "max_idle_threads", "max_threads",
}


def build_parser() -> argparse.ArgumentParser:
    from .decoders import DECODERS
    from .engine import default_workers
    p = _Parser(prog="mef3fs", description="Mount MEF 3.0 sessions as folders of raw float32 "
                "channel files (read-only).", epilog="Unmount with: fusermount3 -u MOUNTPOINT")
    # '--cache-size -5M' is a bad value, not a missing one: values that start
    # with a minus and a digit are values
    p._negative_number_matcher = re.compile(r"^-\d")
    p.add_argument("source", metavar="SOURCE", help="a folder holding sessions, or one session "
                   "(NAME.mefd folder or NAME.mefd.tar)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty folder")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true",
                   help="log every FUSE call and cache decision (implies -f)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="FUSE mount options, e.g. allow_other; umask=M (octal): who may read "
                   "what an encrypted session decodes to (default 077: only you)")
    p.add_argument("--decoder", choices=DECODERS, default="mef3io", help="default: mef3io")
    p.add_argument("--sessions-only", action="store_true",
                   help="show only sessions and the folders leading to them, not SOURCE's own "
                   "files (BIDS sidecars, README, ...)")
    pw = p.add_mutually_exclusive_group()
    pw.add_argument("--password", help="password for encrypted sessions (visible in ps: "
                    "prefer --password-file)")
    pw.add_argument("--password-file", metavar="FILE", help="read the password from FILE's first line")
    p.add_argument("--tile-seconds", type=_positive_float, default=None,
                   help="target tile length in seconds (default 10, or 50,000 samples if fewer; at "
                   "least one MEF block)")
    p.add_argument("--cache-size", type=parse_size, default=parse_size("512M"),
                   metavar="SIZE", help="tile cache budget, e.g. 512M (default)")
    p.add_argument("--index-size", type=parse_size, default=None, metavar="SIZE",
                   help="memory for block indexes, shared by all sessions (default: an eighth of "
                   "--cache-size, at least 16M); the least recently used are dropped and read again")
    p.add_argument("--cache-ttl", type=_non_negative_float, default=300.0, metavar="SECONDS",
                   help="drop tiles idle this long (default 300; 0: never)")
    p.add_argument("--refresh", type=_non_negative_float, default=1.0, metavar="SECONDS",
                   help="how often a session in use is checked for new data (default 1; 0: never)")
    p.add_argument("--workers", type=_workers, default=None, metavar="N",
                   help="decoder processes (default: 0 with mef3io, which decodes in threads "
                   f"of the daemon; {default_workers('mef_tools')}, the CPU count, with mef_tools)")
    p.add_argument("--statahead", type=_count, default=None, metavar="N",
                   help="sessions a walk of SOURCE (ls -lR, find) reaches next that are opened "
                   "ahead of it (default 2; 0: off)")
    p.add_argument("--readahead", type=parse_size, default=parse_size("64M"), metavar="SIZE",
                   help="largest read-ahead window per sequential stream (default 64M, 0: off)")
    p.add_argument("--host-root", metavar="DIR", default=None,
                   help=f"SOURCE is a host path under DIR (env {HOST_ROOT_ENV}; the Docker image "
                   "sets /host_root)")
    p.add_argument("--log-file", metavar="FILE", help="log here (default: stderr, which a "
                   "daemon closes once mounted)")
    p.add_argument("--trace", metavar="FILE", help="append one JSON line per FUSE read to FILE: "
                   "how long it waited, for which tiles, served how")
    p.add_argument("--version", action="version", version=f"mef3fs {__version__}")
    return p


def fuse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        for opt in filter(None, (s.strip() for s in item.split(","))):
            key, sep, value = opt.partition("=")
            if key not in FUSE_OPTIONS:
                raise UsageError(f"-o {opt}: not a mount option mef3fs passes on "
                                 f"(it takes: {', '.join(sorted(FUSE_OPTIONS))})")
            out[key] = value if sep else True
    return out


def _trusted_for(options: dict) -> float:
    """Seconds the kernel trusts what a lookup or a listing told it (0: unknown)."""
    try:
        return min(float(options["attr_timeout"]), float(options["entry_timeout"]))
    except (TypeError, ValueError):
        return 0.0


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


def _password(args) -> tuple[str, str]:
    """The password, and what to say of a session that needs one when it is empty."""
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"--password-file {args.password_file!r}: {exc.strerror}")
        if not password:
            return "", f"the password file given ({args.password_file}) is empty"
        return password, ""
    return args.password or "", "no password was given"


def _check_apart(source: str, mountpoint: str, host: HostRoot) -> None:
    """A mount inside what it shows would list itself: the first ls hangs."""
    src = os.path.realpath(source)
    seen = {os.path.realpath(mountpoint)}
    if host.root is not None:          # in a container: where the host's path for it leads
        with contextlib.suppress(ValueError, OSError):
            seen.add(os.path.realpath(hostroot_resolve(mountpoint, host.root)))
    for mp in seen:
        if mp == src or mp.startswith(src.rstrip("/") + "/"):
            raise UsageError(f"MOUNTPOINT {mountpoint!r} is inside SOURCE {source!r}: "
                             "the mount would show itself; choose a folder outside it")


def mount_warnings(namespace, args, no_password: str) -> list[str]:
    """What a user should hear before using the mount (never a reason to refuse it)."""
    out = []
    if args.password_file and no_password.startswith("the password file"):
        out.append(f"--password-file {args.password_file!r} is empty: encrypted sessions will not open")
    if namespace.single:
        s = namespace.session(namespace.source)
        if not s.ok:
            out.append(f"SOURCE {args.source!r} cannot be opened: {s.error}")
        elif s.meta.partial:
            left = [item["name"] for item in s.meta.left_out] + [d["channel"] for d in s.meta.damaged]
            out.append(f"SOURCE {args.source!r} opens only in part (see its info.json): "
                       f"{', '.join(dict.fromkeys(left))}")
    else:
        with os.scandir(namespace.source) as entries:
            if next(entries, None) is None:
                out.append(f"SOURCE {args.source!r} is empty: the mount shows nothing until "
                           "sessions are added")
    return out


def _umask(args) -> int | None:
    """`-o umask=M` is ours, not libfuse's (which would override every mode): see attrs.py."""
    from .attrs import parse_umask
    value = fuse_options(args.options).get("umask")
    if value is None:
        return None
    try:
        return parse_umask(value)
    except ValueError as exc:
        raise UsageError(str(exc))


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
        _check_apart(source, mountpoint, host)
        password, no_password = _password(args)
        fuse_options(args.options)
        args.umask = _umask(args)
        if args.trace:
            args.trace = os.path.abspath(args.trace)      # a daemon leaves the current folder
        for path in (args.log_file, args.trace):
            if path:
                open(path, "a").close()
    except UsageError as exc:
        print(f"mef3fs: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mef3fs: error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args)
    if args.foreground:
        return run(args, source, host, mountpoint, password, no_password, on_ready=_tell_stderr)
    from .daemon import daemonize
    return daemonize(lambda ready: run(args, source, host, mountpoint, password, no_password,
                                       on_ready=ready), args.log_file)


def _tell_stderr(warnings: list[str]) -> None:
    """Foreground: warnings at mount go to the log, and to the terminal if the log is a file."""
    to_file = any(isinstance(h, logging.FileHandler) for h in logging.getLogger().handlers)
    for w in warnings:
        log.warning("%s", w)
        if to_file:
            print(f"mef3fs: warning: {w}", file=sys.stderr)


GC_THRESHOLDS = (50_000, 20, 20)


def run(args, source: str, host: HostRoot, mountpoint: str, password: str, no_password: str,
        on_ready) -> int:
    """Mount and serve until unmounted or signalled; libfuse owns SIGINT/SIGTERM/SIGHUP."""
    from .attrs import Attributes
    from .fuselib import FUSE, IDLE_THREADS, fuse
    from .engine import Engine
    from .fuseops import DebugOperations, Mef3fsOperations
    from .index import IndexCache, MetaReaders
    from .readers import BUDGET_ENV as READER_BUDGET_ENV
    from .namespace import Namespace
    from .refresh import Refresher
    from .statahead import AHEAD, Statahead
    from .session import Opener
    from .views.files import DynamicFile

    # The daemon keeps hundreds of thousands of objects (every open session's files) and
    # listing a session allocates tens of thousands more: at Python's default thresholds
    # (700, 10, 10) the collector walked the kept ones again and again (a cold ls -lR of
    # 100 x 64-channel sessions: 5.3-6.1 -> 4.4-4.9 s). Sessions hold no reference cycle
    # (session._reporter), so what is let go is freed without the collector.
    gc.set_threshold(*GC_THRESHOLDS)
    engine = Engine(args.decoder, password, args.workers, args.cache_size, args.cache_ttl or math.inf,
                    readahead=args.readahead > 0, mountpoint=mountpoint, trace=args.trace)
    stats_file = DynamicFile(engine.stats_json, ".mef3fs-stats.json")
    budget = args.index_size if args.index_size is not None else index_budget(args.cache_size)
    # every process's mef3io readers keep block indexes too: the same budget each
    # (decoder workers, spawned later, read it from the environment: readers.py)
    os.environ[READER_BUDGET_ENV] = str(budget)
    readers = MetaReaders(password, budget)
    index = IndexCache(readers, budget, engine.stats,
                       on_first_load=engine.session_first_read)
    scratch = tempfile.mkdtemp(prefix="mef3fs-views-")    # readable views (readable.py)
    opener = Opener(password, args.tile_seconds, readers, index, no_password=no_password, scratch=scratch)
    namespace = Namespace(source, host.display, opener, stats_file, sessions_only=args.sessions_only)
    engine.reporters += [index.snapshot, readers.snapshot, lambda: {"sessions_open": namespace.sessions_open}]
    ops_class = DebugOperations if args.debug else Mef3fsOperations
    refresher = Refresher(namespace, args.refresh, None)
    namespace.on_changed = refresher.drop_cached
    statahead = Statahead(namespace, engine.stats, AHEAD if args.statahead is None else args.statahead)
    namespace.on_used = statahead.used
    options = {"fsname": f"mef3fs:{args.source}", "subtype": "mef3fs", "ro": True,
               "default_permissions": True, "attr_timeout": ATTR_TIMEOUT,
               "entry_timeout": ATTR_TIMEOUT, "negative_timeout": 0}
    if fuse.fuse_version_major == 3:
        # libfuse 3.14's default (-1) is reported as invalid on every mount
        options["max_idle_threads"] = IDLE_THREADS
    options.update((k, v) for k, v in fuse_options(args.options).items() if k != "umask")
    ops = ops_class(namespace, engine, args.readahead, on_ready=on_ready, refresher=refresher,
                    statahead=statahead,
                    startup=lambda: mount_warnings(namespace, args, no_password),
                    attrs=Attributes(password, getattr(args, "umask", None)), mountpoint=mountpoint,
                    listing_ttl=_trusted_for(options))
    refresher.invalidate = ops.kernel.invalidate
    log.info("mounting %s at %s", args.source, mountpoint)
    try:
        FUSE(ops, mountpoint, foreground=True, nothreads=False, raw_fi=True, **options)
    except RuntimeError as exc:
        # mfusepy under libfuse3 reports a signal-triggered exit as an error too
        if not ops.mounted:
            log.error("mounting %s at %s failed (libfuse: %s)", args.source, mountpoint, exc)
            return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if ops.mounted else 1
