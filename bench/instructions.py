#!/usr/bin/env python3
"""Instructions the daemon's Python spends per session: laying it out, and listing it.

    .venv/bin/python bench/instructions.py [--repo DIR ...] [--sessions N] [--cache DIR]

The wall clock of a shared VM varies twofold within one run, so a change of
a few percent to Python code cannot be seen in seconds. valgrind's callgrind
counts the instructions that work executes, the same in every run
(PYTHONHASHSEED fixed). Each figure is the difference between a process that
does the work once and one that does it three times, halved: the start-up,
the imports and the readers' opening cancel out.

  layout   Opener.open of N sessions of set C (64 channels each) whose mef3io
           readers are already open: metadata, every view's files, info.json
  listing  a walk of those sessions as a cold `ls -lR` makes the daemon do
           it: every folder's entries, their attributes and their structs

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


def work(repo: str, what: str, sessions: list[str], times: int) -> None:
    """Run inside the measured process: `times` rounds of `what` over the sessions."""
    sys.path.insert(0, repo)
    from mef3fs.attrs import Attributes
    from mef3fs.index import IndexCache, MetaReaders
    from mef3fs.namespace import Namespace
    from mef3fs.session import Opener, session_identity
    from mef3fs.stats import Stats
    from mef3fs.views.files import StaticFile
    import mef3fs.fuselib as fuselib

    readers = MetaReaders("", 1 << 30)

    def opener():
        return Opener("", 10, readers, IndexCache(readers, 64 << 20, Stats()), no_password="", scratch="/tmp")
    if what == "layout":
        for path in sessions:
            readers.get(path, session_identity(path))
        for _ in range(times):
            op = opener()
            for path in sessions:
                op.open(path, path, session_identity(path))
        return
    # the daemon's own listing: opendir, readdir_entries, the structs readdir sends
    import math
    from mef3fs.engine import Engine
    from mef3fs.fuseops import Mef3fsOperations
    source = os.path.commonpath(sessions)
    ns = Namespace(source, lambda p: p, opener(), StaticFile(b"{}"))
    ops = Mef3fsOperations(ns, Engine("mef3io", "", 0, 64 << 20, math.inf), 0)     # never started
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


def count(repo: str, what: str, sessions: list[str], times: int) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
           os.path.abspath(__file__), "--work", what, "--times", str(times), "--repo", repo, *sessions]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode or not found:
        raise RuntimeError(f"callgrind failed ({out.returncode}): {out.stderr[-2000:]}")
    return int(found.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", action="append", help="checkout to measure (repeat to compare); default this one")
    ap.add_argument("--sessions", type=int, default=10, help="sessions of set C per round (default 10)")
    ap.add_argument("--cache", default="/tmp/mef3fs-bench", help="where make_data.py builds set C")
    ap.add_argument("--work", choices=("layout", "listing"), help=argparse.SUPPRESS)
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
    repos = [os.path.abspath(r) for r in a.repo or [os.path.dirname(HERE)]]
    print("| checkout | layout, instructions per session | listing, instructions per session |")
    print("|---|---|---|")
    for repo in repos:
        row = []
        for what in ("layout", "listing"):
            once, thrice = (count(repo, what, sessions, k) for k in TIMES)
            row.append(f"{(thrice - once) / (TIMES[1] - TIMES[0]) / len(sessions) / 1e6:.1f}M")
        print(f"| {repo} | {row[0]} | {row[1]} |", flush=True)
    print(f"\n{len(sessions)} sessions of 64 channels (make_data set C); callgrind, PYTHONHASHSEED=0.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
