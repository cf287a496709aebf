#!/usr/bin/env python3
"""Instructions the daemon's Python spends per session: laying it out, and listing it.

    .venv/bin/python bench/instructions.py [--repo DIR ...] [--sessions N] [--cache DIR]

The wall clock of a shared VM varies twofold within one run, so a change of
a few percent to Python code cannot be seen in seconds. valgrind's callgrind
counts the instructions that work executes, the same in every run
(PYTHONHASHSEED fixed). Each figure is the difference between a process that
does the work once and one that does it three times (a read: eleven), per
round: the start-up, the imports and the readers' opening cancel out. The
collector runs with the daemon's thresholds (cli.GC_THRESHOLDS). A read
needs the many passes: with four, one checkout's figure came out 15% above
what ten gave, some one-off cost spread over too few requests.

  layout   Opener.open of N sessions of set C (64 channels each) whose mef3io
           readers are already open: metadata, every view's files, info.json
  listing  a walk of those sessions as a cold `ls -lR` makes the daemon do
           it: every folder's entries, their attributes and their structs
  read     the daemon's read_into of one channel file of bench recording A
           (1 kHz, 10 s blocks) in 128 KiB requests, as the kernel sends a
           re-read, every tile already in the tile cache; per request. About
           131K of it is the copy itself: valgrind counts rep movsb per byte

--repo gives the checkout whose mef3fs is measured (default: this one); give
two to compare them side by side, e.g. a `git worktree` of the commit before.
Needs valgrind (`apt-get install valgrind`); runs a few minutes per repo.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TIMES = (1, 3)
READ_TIMES = (1, 11)          # passes over the channel file: 1,100 requests between the two counts
READ_BYTES = 128 << 10        # the kernel's readahead batch: what a re-read's requests are


def work(repo: str, what: str, sessions: list[str], times: int) -> None:
    """Run inside the measured process: `times` rounds of `what` over the sessions."""
    sys.path.insert(0, repo)
    import gc
    from mef3fs import cli
    gc.set_threshold(*getattr(cli, "GC_THRESHOLDS", gc.get_threshold()))   # the daemon's collector
    from mef3fs.attrs import Attributes
    from mef3fs.index import IndexCache, MetaReaders
    from mef3fs.namespace import Namespace
    from mef3fs.session import Opener, session_identity
    from mef3fs.stats import Stats
    from mef3fs.views.files import StaticFile
    import mef3fs.fuselib as fuselib

    import math
    from mef3fs.engine import Engine
    from mef3fs.fuseops import Mef3fsOperations
    readers = MetaReaders("", 1 << 30)

    def opener():
        return Opener("", None, readers, IndexCache(readers, 64 << 20, Stats()), no_password="", scratch="/tmp")

    def operations(source: str, engine, readahead: int = 0):
        return Mef3fsOperations(Namespace(source, lambda p: p, opener(), StaticFile(b"{}")), engine, readahead)
    if what == "read":
        engine = Engine("mef3io", "", 0, 1 << 30, math.inf)
        ops = operations(os.path.dirname(sessions[0]), engine, 64 << 20)      # --readahead's default
        engine.start()
        _read(ops, "/" + os.path.basename(sessions[0]), times)
    if what == "layout":
        for path in sessions:
            readers.get(path, session_identity(path))
        for _ in range(times):
            op = opener()
            for path in sessions:
                op.open(path, path, session_identity(path))
        return
    # the daemon's own listing: opendir, readdir_entries, the structs readdir sends
    source = os.path.commonpath(sessions)
    ops = operations(source, Engine("mef3io", "", 0, 64 << 20, math.inf))     # never started
    ns = ops.ns
    shown = ["/" + os.path.relpath(p, source) for p in sessions]
    for s in shown:
        ns.lookup(s + "/info.json")

    class FS:                                          # what structs() asks of mfusepy's FUSE
        use_ns, encoding, errors = True, "utf-8", "surrogateescape"

    def walk(path):
        listing = ops.readdir_entries(path, ops.opendir(path))
        listing.structs(FS)
        for name, _, file in listing.entries:
            if file is None and name not in (".", ".."):
                walk(path + "/" + name)
    for _ in range(times):
        getattr(fuselib, "_TEMPLATES", {}).clear()     # other sessions, other times: no template of theirs
        ops.attrs = Attributes()
        for s in shown:
            ns.session(ns.lookup(s).real).listings.clear()     # a cold walk: nothing listed yet
            walk(s)


def _read(ops, folder: str, times: int) -> None:
    """`times` passes over a channel file whose tiles were all decoded by a first pass."""
    import numpy as np
    path = folder + "/" + sorted(n for n in ops.readdir_entries(folder, ops.opendir(folder)).names()
                                 if n.endswith(".f32"))[0]

    class FI:                                           # what mfusepy's raw_fi hands read_into
        flags, fh, keep_cache, direct_io = os.O_RDONLY, 0, 0, 0
    dest = np.empty(READ_BYTES, dtype=np.uint8)
    for k in range(1 + times):
        fi, offset, reads = FI(), 0, 0
        ops.open(path, fi)
        while n := ops.read_into(path, dest, offset, fi):
            offset, reads = offset + n, reads + 1
        ops.release(path, fi)
    print(f"reads {reads}", flush=True)
    os._exit(0)                                         # the engine's threads need no goodbye


def count(repo: str, what: str, sessions: list[str], times: int) -> tuple[int, str]:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
           os.path.abspath(__file__), "--work", what, "--times", str(times), "--repo", repo, *sessions]
    # OpenBLAS's idle threads spin a while in numpy's process: one thread, no spinning
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode or not found:
        raise RuntimeError(f"callgrind failed ({out.returncode}): {out.stderr[-2000:]}")
    return int(found.group(1)), out.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", action="append", help="checkout to measure (repeat to compare); default this one")
    ap.add_argument("--sessions", type=int, default=10, help="sessions of set C per round (default 10)")
    ap.add_argument("--cache", default="/tmp/mef3fs-bench", help="where make_data.py builds set C")
    ap.add_argument("--work", choices=("layout", "listing", "read"), help=argparse.SUPPRESS)
    ap.add_argument("--times", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.work:
        work(a.repo[0], a.work, a.paths, a.times)
        return 0
    if not shutil.which("valgrind"):
        print("bench/instructions.py needs valgrind: apt-get install valgrind", file=sys.stderr)
        return 2
    sys.path.insert(0, HERE)
    import make_data
    source = make_data.build_many(a.cache)
    sessions = sorted(glob.glob(os.path.join(source, "**", "*.mefd"), recursive=True))[:a.sessions]
    recording = make_data.build_seq(a.cache, False)["A_16ch_1kHz"]
    repos = [os.path.abspath(r) for r in a.repo or [os.path.dirname(HERE)]]
    print("| checkout | layout, instructions per session | listing, instructions per session "
          "| read from the tile cache, instructions per 128 KiB request |")
    print("|---|---|---|---|")
    for repo in repos:
        row = []
        for what in ("layout", "listing"):
            (once, _), (thrice, _) = (count(repo, what, sessions, k) for k in TIMES)
            row.append(f"{(thrice - once) / (TIMES[1] - TIMES[0]) / len(sessions) / 1e6:.1f}M")
        (once, _), (more, out) = (count(repo, "read", [recording], k) for k in READ_TIMES)
        reads = int(re.search(r"reads (\d+)", out).group(1))
        row.append(f"{(more - once) / (READ_TIMES[1] - READ_TIMES[0]) / reads / 1e3:.1f}K")
        print(f"| {repo} | {' | '.join(row)} |", flush=True)
    print(f"\n{len(sessions)} sessions of 64 channels (make_data set C); one channel of recording A read "
          f"{READ_TIMES[1] - READ_TIMES[0]} times more; callgrind, PYTHONHASHSEED=0, the daemon's "
          "collector thresholds.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
