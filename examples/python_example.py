"""Reading a MEF 3.0 recording through mef3fs from Python, notebook style.

    python examples/python_example.py [SOURCE]

SOURCE defaults to the bundled demo recording (examples/demo). No MEF library
is used below the mount: only json and numpy.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np

import mef3fs

HERE = Path(__file__).resolve().parent
source = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "demo"

# %% Mount: a temporary mountpoint, unmounted when the block ends (also on errors).
with mef3fs.mount(source, cache_size="256M") as root:

    # %% Find the sessions: every folder whose name ends in .mefd or .mefd.tar
    sessions = sorted(p for p in root.rglob("*") if p.name.endswith((".mefd", ".mefd.tar")))
    session = sessions[0]
    print("session:", session.relative_to(root))

    # %% info.json says everything needed to interpret the files
    info = json.loads((session / "info.json").read_text())
    for ch in info["channels"]:
        print(f"  {ch['name']!r:12} {ch['file']!r:16} {ch['sampling_frequency']:>10g} Hz "
              f"{ch['number_of_samples']:>10} samples  {ch['units']}")

    # %% One channel, mapped: nothing is decoded until a slice is touched.
    ch = info["channels"][0]
    x = np.load(session / ch["npy_file"], mmap_mode="r")       # float32, shape (n,)
    # the same bytes without the header:
    # x = np.memmap(session / ch["file"], dtype="<f4", mode="r")

    # %% A time window in uUTC -> sample indices on the channel's grid
    fs, g0 = ch["sampling_frequency"], ch["grid_start_uutc"]
    t0 = info["start_uutc"] + int(info["duration_s"] / 2 * 1e6)  # mid-recording
    t1 = t0 + 5_000_000                                            # 5 s long
    i0, i1 = (round((t - g0) * fs / 1e6) for t in (t0, t1))
    window = np.array(x[i0:i1])                                # NaN where no data
    times = g0 + np.arange(i0, i1) * 1e6 / fs
    valid = window[~np.isnan(window)]
    print(f"{ch['name']} [{t0}, {t1}): {len(window)} samples, {len(valid)} with data, "
          f"mean {valid.mean() if len(valid) else float('nan'):.3f} {ch['units']}")

    # %% A whole rate group as one matrix: rows are info.json's channels of that rate
    grid = info["grids"][0]
    m = np.load(session / grid["npy_file"], mmap_mode="r")     # (channels, samples)
    print(f"{grid['npy_file']}: {m.shape}, rows {grid['channels']}")
    print("first 3 samples of each row:\n", np.array(m[:, :3]))

    # %% Annotations
    records = json.loads((session / "records.json").read_text())
    for r in records[:10]:
        print(f"  {r['time']} {r['type']:5} {r.get('channel') or '(session)'}: {r.get('text')}")

    # %% Shell users see the essentials as extended attributes (getfattr -d FILE)
    f = session / ch["file"]
    print({k: os.getxattr(f, k).decode() for k in os.listxattr(f)})

    del x, m   # drop the memmaps before the mount goes away
