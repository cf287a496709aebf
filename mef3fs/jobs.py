"""How missing tiles become decode jobs (decoders.Job).

A job is one worker call: a run of consecutive tiles of a channel whose
windows are their exact grid windows (so one decode covers them all), and
the same run of several channels of one rate together, at most
MAX_JOB_SAMPLES each. A waiting read is spread over every worker. Fewer,
bigger calls cost less per tile and cross to the daemon once.
"""

from __future__ import annotations

from .decoders import Job
from .tiles import grid_time

MAX_JOB_SAMPLES = 80_000      # per job: ~10 ms of decoding on one core, under 1 MB to carry


def plan(rows, background: bool, workers: int) -> list:
    """Jobs for the tiles of these channels, [(tiles, [(i, a, b), ...]), ...].
    -> [(job, [(tiles, i, a, b), ...])]"""
    groups: dict = {}
    for tiles, runs in rows:
        for run in _runs(tiles, sorted(runs), MAX_JOB_SAMPLES):
            first, last = run[0], run[-1]
            spec = tiles.spec(first[0]) if len(run) == 1 else None
            if spec is not None:
                ts, te = spec.ts, spec.te
            else:
                ts, te = grid_time(tiles.t0, tiles.fs, first[1]), grid_time(tiles.t0, tiles.fs, last[2])
            cuts = tuple(a - first[1] for _, a, _ in run) + (last[2] - first[1],)
            sig = (tiles.session_path, tiles.identity, tiles.t0, tiles.fs, ts, te, first[1], cuts)
            groups.setdefault(sig, []).append((tiles, run))
    jobs_wanted = max(len(groups), workers)       # one for every worker at least
    out = []
    for (path, identity, t0, fs, ts, te, first, cuts), members in groups.items():
        n = cuts[-1]
        by_size = MAX_JOB_SAMPLES // max(n, 1)                        # channels in a job
        by_spread = -(-len(members) * len(groups) // jobs_wanted)     # ... so the work spreads
        per = max(1, min(by_size, by_spread))
        for k in range(0, len(members), per):
            chunk = members[k:k + per]
            job = Job(path, tuple(t.channel for t, _ in chunk), ts, te, n, t0, fs, first, cuts, identity)
            out.append((job, [(t, i, a, b) for t, run in chunk for i, a, b in run]))
    if not background and len(out) < workers:
        out = _split_long(out, workers)
    return out


def _runs(tiles, items, limit: int):
    """Split sorted (i, a, b) into runs of adjacent tiles whose windows are their exact
    grid windows (so one window decodes them all), each at most `limit` samples."""
    run = []
    for i, a, b in items:
        exact = _exact(tiles, i, a, b)
        if run and exact and run[-1][2] == a and run[-1][3] and b - run[0][1] <= limit:
            run.append((i, a, b, True))
            continue
        if run:
            yield [(x, y, z) for x, y, z, _ in run]
        run = [(i, a, b, exact)]
    if run:
        yield [(x, y, z) for x, y, z, _ in run]


def _exact(tiles, i: int, a: int, b: int) -> bool:
    spec = tiles.spec(i)
    return spec.ts == grid_time(tiles.t0, tiles.fs, a) and spec.te == grid_time(tiles.t0, tiles.fs, b)


def _split_long(jobs: list, parts: int) -> list:
    """A waiting read of many tiles of one channel: cut its runs so every worker takes a part."""
    out = []
    for job, members in jobs:
        k = min(parts, len(members)) if len(job.channels) == 1 else 1
        if k <= 1:
            out.append((job, members))
            continue
        size = -(-len(members) // k)
        for j in range(0, len(members), size):
            part = members[j:j + size]
            tiles0, _, a0, _ = part[0]
            b1 = part[-1][3]
            cuts = tuple(a - a0 for _, _, a, _ in part) + (b1 - a0,)
            if len(part) == len(members):
                ts, te = job.ts, job.te
            else:
                ts, te = grid_time(job.t0, job.fs, a0), grid_time(job.t0, job.fs, b1)
            out.append((Job(job.session_path, job.channels, ts, te, b1 - a0, job.t0, job.fs, a0, cuts,
                            job.identity), part))
    return out
