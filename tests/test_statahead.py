"""Statahead: a walk of SOURCE finds the next sessions opened before it reaches them.

The prediction (the next sessions in name order, across folders) on a real
tree with the real namespace; through a real mount: listing SOURCE's own
folders, one session or a jump opens nothing ahead; two sessions in walk
order get the next ones opened ahead (named in the debug log, counted in
the stats), what they serve is exact, and `--statahead 0` opens nothing
ahead.
"""
from __future__ import annotations

import json
import os
import re
import time

import numpy as np

from mef3fs.index import IndexCache, MetaReaders
from mef3fs.namespace import Namespace
from mef3fs.session import Opener
from mef3fs.statahead import Statahead
from mef3fs.stats import Stats
from tests.conftest import read_stats, reference
from tests.sessions import build_small_session

# a BIDS-like tree: sessions two folders down, a folder with none, a plain file among them
LAYOUT = ("sub-01/ses-1/a.mefd", "sub-01/ses-2/b.mefd", "sub-02/ses-1/c.mefd",
          "sub-03/ses-1/d.mefd", "sub-03/ses-1/e.mefd", "sub-04/ses-1/f.mefd")


def build_tree(root):
    for k, rel in enumerate(LAYOUT):
        build_small_session(root / rel, 700 + k, seconds=2, channels=("C1",))
    (root / "sub-02" / "anat").mkdir()
    (root / "sub-02" / "anat" / "T1w.json").write_text("{}")
    (root / "participants.tsv").write_text("participant_id\n")
    return root


def namespace_of(root, sessions_only=False):
    readers = MetaReaders("")
    opener = Opener("", 10.0, readers, IndexCache(readers, 1 << 24, Stats()))
    return Namespace(str(root), lambda p: p, opener, None, sessions_only=sessions_only)


def test_the_next_sessions_in_name_order_across_folders(tmp_path):
    root = build_tree(tmp_path / "src")
    ahead = Statahead(namespace_of(root))
    real = [os.path.join(os.path.realpath(root), rel) for rel in LAYOUT]
    assert ahead.after(real[0], 2) == real[1:3]       # ses-2 of the same subject, then sub-02
    assert ahead.after(real[2], 3) == real[3:6]       # past sub-02's anat folder, two in one folder
    assert ahead.after(real[4], 5) == real[5:]        # only what there is
    assert ahead.after(real[5], 2) == []              # the last one: nothing after it


def session_lines(m):
    text = m.log_path.read_text(errors="replace")
    return re.findall(r"session opened( ahead)?: (\S+)", text)


def wait_open(m, count, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = read_stats(m)
        if stats["sessions_open"] >= count:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"sessions_open never reached {count}: {read_stats(m)}")


def use(m, k):
    json.loads((m.root / LAYOUT[k] / "info.json").read_bytes())


def settle(m, count):
    wait_open(m, count)
    time.sleep(0.4)                # and nothing more is opened
    now = read_stats(m)
    assert now["sessions_open"] == count, (now, session_lines(m))
    return now


def test_a_walk_gets_the_next_sessions_opened_ahead(tmp_path, mount_fs):
    src = build_tree(tmp_path / "src")
    m = mount_fs(src, "-d", "--workers", "0")
    # looking at SOURCE's own folders follows no session: nothing is opened
    for folder, dirs, files in os.walk(m.root):
        dirs[:] = [d for d in dirs if not d.endswith(".mefd")]
        for name in dirs + files:
            os.lstat(os.path.join(folder, name))
    time.sleep(0.5)
    stats = read_stats(m)
    assert stats["sessions_open"] == 0 and stats["sessions_ahead"] == 0, stats

    use(m, 0)                      # one session (a viewer): nothing else
    assert settle(m, 1)["sessions_ahead"] == 0
    use(m, 4)                      # a jump (b and c came next): nothing else
    assert settle(m, 2)["sessions_ahead"] == 0
    use(m, 1)                      # not what came after e either
    assert settle(m, 3)["sessions_ahead"] == 0
    use(m, 2)                      # c came after b: a walk; d is opened (e is open)
    assert settle(m, 5)["sessions_ahead"] == 1
    use(m, 3)                      # d was opened ahead and is used: f next
    assert settle(m, 6)["sessions_ahead"] == 2
    assert [(bool(a), os.path.basename(p)) for a, p in session_lines(m)] == \
        [(False, "a.mefd"), (False, "e.mefd"), (False, "b.mefd"), (False, "c.mefd"),
         (True, "d.mefd"), (True, "f.mefd")]

    # what sessions opened ahead serve is exact
    for rel in LAYOUT:
        got = np.fromfile(m.root / rel / "C1.f32", dtype="<f4")
        np.testing.assert_array_equal(got.view(np.uint32), reference(src / rel, "C1").view(np.uint32))
    assert read_stats(m)["sessions_open"] == len(LAYOUT)


def test_statahead_off_opens_only_what_requests_use(tmp_path, mount_fs):
    src = build_tree(tmp_path / "src")
    m = mount_fs(src, "--statahead", "0", "--workers", "0")
    for rel in LAYOUT[:3]:
        json.loads((m.root / rel / "info.json").read_bytes())
    time.sleep(0.5)
    stats = read_stats(m)
    assert stats["sessions_open"] == 3 and stats["sessions_ahead"] == 0, stats
