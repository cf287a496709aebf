"""Build the small example recording bundled with mef3fs (examples/demo/).

Run again to regenerate it: the output is deterministic. What it holds is
what real recordings hold: two sampling rates, a gap, a channel that starts
late, a second segment, an odd channel name and a few annotations.
"""

import os
import sys

import numpy as np
import mef3io

T0 = 1_700_000_000_000_000          # 2023-11-14 22:13:20 UTC


def signal(rng, n, fs, f):
    t = np.arange(n) / fs
    return 50 * np.sin(2 * np.pi * f * t) + 10 * rng.standard_normal(n)


def build(folder: str) -> str:
    path = os.path.join(folder, "sub-01", "ses-1", "night1.mefd")
    rng = np.random.default_rng(2023)
    with mef3io.Writer(path, overwrite=True, units="uV") as w:
        for k, name in enumerate(["LA1", "LA2", "LA3", "LA4", "RH1", "RH2"]):
            x = signal(rng, 120 * 256, 256.0, 4 + k)
            x[60 * 256:65 * 256] = np.nan                # a 5 s gap
            w.write(name, x, T0, fs=256.0)
            w.write(name, signal(rng, 30 * 256, 256.0, 4 + k), T0 + 150_000_000, fs=256.0,
                    new_segment=True)                     # a second segment after a pause
        w.write("ECG 1", signal(rng, 100 * 1000, 1000.0, 1.2), T0 + 20_000_000, fs=1000.0)
        w.write_annotations([{"time": T0 + 1_000_000, "text": "lights off"},
                             {"time": T0 + 62_000_000, "type": "EDFA", "text": "amplifier reset", "duration": 5_000_000}])
    return path


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "demo")
    print(build(out))
