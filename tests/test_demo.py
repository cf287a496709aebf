"""README's first command runs the demo: it must keep working as the mount changes.

Runs examples/demo.py (what scripts/demo.sh runs after setting up) against
the bundled recording: it mounts, reads the files and the views it names,
and unmounts; nothing is left mounted.
"""
from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO, mounted_paths, subprocess_env


def test_the_demo_runs_end_to_end():
    res = subprocess.run([sys.executable, str(REPO / "examples" / "demo.py")], capture_output=True,
                         text=True, timeout=180, cwd=REPO, env=subprocess_env(), stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "unmounted: done." in out
    assert re.search(r"LA1\.f32 +256 Hz +46080 samples +2 gap\(s\)", out), out
    assert "inside the gap" in out and "[nan nan nan]" in out
    mnt = re.search(r"^\$ fusermount3 -u (\S+)$", out, re.M).group(1)
    assert mnt not in mounted_paths()
