"""The mef3fs demo: mount the bundled example recording, read it as plain files, unmount.

    bash scripts/demo.sh            # sets everything up, then runs this

Every step prints the command or code a user would type.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "demo")
MEF3FS = os.path.join(os.path.dirname(sys.executable), "mef3fs")


def run(*cmd):
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    mnt = tempfile.mkdtemp(prefix="mef3fs-demo-")
    run(MEF3FS, SOURCE, mnt)                      # returns once the mount is ready
    try:
        session = os.path.join(mnt, "sub-01", "ses-1", "night1.mefd")
        run("ls", "-l", session)
        with open(os.path.join(session, "info.json")) as f:
            info = json.load(f)
        with open(os.path.join(session, info["gaps_file"])) as f:   # made from the block index when read
            gaps = {c["name"]: c["gaps"] for c in json.load(f)["channels"]}
        print(f"\nsession {info['session']}: {info['duration_s']:.1f} s, "
              f"{len(info['channels'])} channels")
        for ch in info["channels"]:
            print(f"  {ch['file']:>12}  {ch['sampling_frequency']:g} Hz  "
                  f"{ch['number_of_samples']} samples  {len(gaps[ch['name']])} gap(s)  [{ch['units']}]")
        g = info["grids"][0]
        print(f"\nviews of the {g['sampling_frequency']:g} Hz channels: {g['npy_file']}, "
              f"{g['brainvision_file']} (MNE, EEGLAB, FieldTrip), {info['zarr_store']}{g['zarr_array']} "
              f"(xarray, dask), {len(g['overview_files'])} min-max levels, {info['preview_file']}")

        ch = next(c for c in info["channels"] if c["name"] == "LA1")
        path = os.path.join(session, ch["file"])
        print(f"\n>>> x = np.memmap({path!r}, dtype='<f4', mode='r')")
        x = np.memmap(path, dtype="<f4", mode="r")
        fs, t0 = ch["sampling_frequency"], ch["grid_start_uutc"]
        print(f"x.shape = {x.shape}; first samples: {np.array2string(x[:5], precision=2)}")
        i = int(61 * fs)
        print(f"x[{i}:{i + 3}] (inside the gap at 60-65 s) = {x[i:i + 3]}")
        print(f"mean |x| over data = {np.nanmean(np.abs(x)):.2f} {ch['units']}, "
              f"NaN (no data) = {np.isnan(x).mean():.1%} of the grid")
        print(f"sample {i} is at uUTC {t0 + i * 1e6 / fs:.0f} (grid_start_uutc + i * 1e6 / fs)")

        rates = [g["npy_file"] for g in info["grids"]]
        m = np.load(os.path.join(session, rates[0]), mmap_mode="r")
        print(f"\n>>> np.load('{rates[0]}', mmap_mode='r').shape = {m.shape}  (channels x samples)")
        with open(os.path.join(mnt, ".mef3fs-stats.json")) as f:
            stats = json.load(f)
        del x, m                                  # release the memmaps before unmounting
        print(f"engine: {stats['misses']} tiles decoded, {stats['hits']} cache hits, "
              f"{stats['cache_bytes']} bytes cached")
    finally:
        run("fusermount3", "-u", mnt)
        os.rmdir(mnt)
    print("unmounted: done.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
