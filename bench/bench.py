#!/usr/bin/env python3
"""mef3fs benchmark: the mount against direct decoding and mef3io-server, on the same data, in one run.

    sudo .venv/bin/python bench/bench.py [--quick] [--wait-quiet S] [--only NAME,...]

Builds (or reuses) the recordings of make_data.py, runs the workloads (one
module each: w_scan, w_windows, w_paging, w_memory, w_many, w_sweep, w_floor,
w_variants),
and prints ONE markdown table: every workload side by side with direct mef3io,
direct mef_tools and mef3io-server 3.1, every target of issue 10 a row with
"met / not met", and under the table, per row, what the mount's trace and
counters say about it. "Cold" means the page cache dropped (root) and a fresh
mount. Every wait is bounded; every mount and server is stopped in `finally`.

Results (results.json, table.md, logs/ with each mount's log and trace) go to
--out (default <cache>/out). See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import make_data  # noqa: E402
from common import f1, log, machine, now, session_meta  # noqa: E402
from mount import Mount  # noqa: E402

WORKLOADS = ("scan", "windows", "paging", "memory", "many", "sweep", "floor", "variants")


class Bench:
    """What every workload module gets: options, data, results, and the means to mount."""

    def __init__(self, a):
        self.a = a
        self.quick = a.quick
        self.cache = a.cache
        self.out = a.out or os.path.join(a.cache, "out")
        self.logdir = os.path.join(self.out, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.work = os.path.join(a.cache, "work")
        os.makedirs(self.work, exist_ok=True)
        self.R: dict = {"started": datetime.datetime.now().isoformat(timespec="seconds"),
                        "argv": sys.argv, "quick": self.quick, "errors": {}, "notes": {}}
        self.base_opts: list = list(a.mount_opt or [])
        if a.workers is not None:
            self.base_opts += ["--workers", str(a.workers)]
        self.server = not a.skip_server
        self.ref_windows: dict = {}

    # -- helpers -------------------------------------------------------------

    def phase(self, name: str, fn, *args, **kw):
        """Run one phase: wait for a quiet machine first, note the others' CPU meanwhile;
        a phase that fails is reported and the run goes on."""
        if name != "build data" and self.a.wait_quiet > 0:
            share = common.FOREIGN.wait_quiet(min(self.a.wait_quiet, 120))
            if share >= 0.1:
                log(f"other processes use {share:.2f} of a core; going on")
        log(f"--- {name}")
        t = now()
        common.FOREIGN.mark(name)
        try:
            return fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - one failed phase must not end the run
            msg = f"{type(exc).__name__}: {exc}"
            log(f"{name} FAILED: {msg}")
            self.R["errors"][name] = msg
            with open(os.path.join(self.logdir, "errors.txt"), "a") as f:
                f.write(f"== {name}\n{traceback.format_exc()}\n")
            return None
        finally:
            dt = now() - t
            other = common.FOREIGN.since(name)
            self.R.setdefault("phases", {})[name] = {"s": round(dt, 1), "other_cpu_s": round(other, 1),
                                                     "loadavg": os.getloadavg()[0]}
            log(f"    {name}: {dt:.1f} s (other processes used {other:.1f} CPU-s meanwhile)")

    def mount(self, source: str, tag: str, extra: list | None = None) -> Mount:
        return Mount(source, self.work, self.logdir, tag, self.base_opts + (extra or []),
                     trace=not self.a.no_trace)

    def f32_paths(self, mnt: str, meta: dict) -> list:
        d = os.path.join(mnt, os.path.basename(meta["path"]))
        return [os.path.join(d, c + ".f32") for c in meta["channels"]]

    def npy_path(self, mnt: str, meta: dict) -> str:
        rate = repr(float(meta["fs"]))
        rate = rate[:-2] if rate.endswith(".0") else rate
        return os.path.join(mnt, os.path.basename(meta["path"]), "rates", f"{rate}Hz.npy")

    def name(self, key: str) -> str:
        m = self.meta[key]
        dur = (m["t1"] - m["t0"]) / 1e6
        span = f"{dur / 3600:.2g} h" if dur >= 3600 else f"{dur / 60:.2g} min"
        return f"{len(m['channels'])} ch x {span} x {m['fs'] / 1e3:g} kHz"

    def note(self, row: str, text: str) -> None:
        self.R["notes"][row] = text

    # -- data ------------------------------------------------------------------

    def build(self):
        paths = make_data.build_seq(self.cache, self.quick, log=log)
        self.seq_src = os.path.dirname(next(iter(paths.values())))
        self.many_src = make_data.build_many(self.cache, log=log)
        self.meta = {"A": session_meta(paths["A_16ch_1kHz"]), "B": session_meta(paths["B_4ch_32kHz"])}
        self.R["data"] = {k: {"channels": len(m["channels"]), "fs": m["fs"], "samples_per_channel": m["n"],
                              "seconds": (m["t1"] - m["t0"]) / 1e6,
                              "mef_bytes": sum(os.path.getsize(f) for f in glob.glob(
                                  os.path.join(m["path"], "**", "*"), recursive=True) if os.path.isfile(f))}
                          for k, m in self.meta.items()}
        self.R["data"]["C_many"] = dict(make_data.MANY)

    # -- the run ---------------------------------------------------------------

    def run(self):
        common.FOREIGN = common.ForeignCpu()
        share = common.FOREIGN.wait_quiet(self.a.wait_quiet)
        self.R["other_load_at_start"] = round(share, 2)
        if share >= 0.1:
            log(f"the machine is busy: other processes use {share:.2f} of a core; timings will suffer")
        t = now()
        self.phase("build data", self.build)
        if not hasattr(self, "meta"):
            raise SystemExit("could not build the data")
        chosen = [w for w in WORKLOADS if not self.a.only or w in self.a.only]
        if self.a.skip_sweep and "sweep" in chosen and not self.a.only:
            chosen.remove("sweep")
        modules = {w: __import__(f"w_{w}") for w in chosen}
        for w, mod in modules.items():
            self.phase(w, mod.run, self)
        self.R["total_s"] = now() - t
        self.R["machine"] = machine()
        text = self.report(modules)
        with open(os.path.join(self.out, "table.md"), "w") as f:
            f.write(text)
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.R, f, indent=1, default=str)
        print(text)
        log(f"results: {self.out}/results.json, table: {self.out}/table.md, logs: {self.logdir}")

    def report(self, modules) -> str:
        rows, extra = [], []
        for w, mod in modules.items():
            try:
                rows += mod.rows(self)
                if hasattr(mod, "tables"):
                    extra.append(mod.tables(self))
            except Exception as exc:  # noqa: BLE001 - a broken row must not lose the rest
                rows.append({"workload": f"{w}: could not report ({type(exc).__name__}: {exc})"})
                with open(os.path.join(self.logdir, "errors.txt"), "a") as f:
                    f.write(f"== report {w}\n{traceback.format_exc()}\n")
        head = ["Workload", "mef3fs mount", "direct mef3io (all threads)", "direct mef_tools",
                "mef3io-server 3.1", "Target", "Met?"]
        keys = ["workload", "mount", "direct", "mef_tools", "server", "target", "met"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r.get(k, "—") for k in keys]
            cells[-1] = {True: "**met**", False: "**not met**", None: "—"}.get(r.get("met"), "—")
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        title = (f"mef3fs bench, {'--quick' if self.quick else 'full'} run, {self.R['started']}, "
                 f"{self.R['machine']}, total {self.R['total_s']:.0f} s")
        out = [title, "", "\n".join(lines)]
        out += [t for t in extra if t]
        notes = [f"- **{k}**: {v}" for k, v in self.R["notes"].items()]
        busy = {k: v for k, v in self.R.get("phases", {}).items()
                if v["other_cpu_s"] > max(1.0, 0.05 * v["s"])}
        if busy:
            notes.append("- other processes were busy during: " + ", ".join(
                f"{k} ({v['other_cpu_s']:.1f} CPU-s in {v['s']:.0f} s)" for k, v in busy.items())
                + " — those rows are pessimistic")
        else:
            notes.append("- no other process used noticeable CPU during any phase")
        if common._DROP_OK is False:
            notes.append("- the page cache could NOT be dropped (not root): 'cold' rows are page-cache warm")
        for k, v in self.R["errors"].items():
            notes.append(f"- phase {k} failed: {v}")
        out += ["", "Why each row is what it is (the mount's trace and counters of that phase):", ""] + notes
        return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description="mef3fs benchmark: the mount vs direct decoding and mef3io-server")
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer repeats (~3 min)")
    ap.add_argument("--out", help="where results.json, table.md and logs go (default <cache>/out)")
    ap.add_argument("--cache", default="/tmp/mef3fs-bench", help="where the recordings are built")
    ap.add_argument("--workers", type=int, help="pass --workers N to every mount")
    ap.add_argument("--mount-opt", action="append", metavar="ARG",
                    help="extra argument for every mount (repeat; e.g. --mount-opt=--readahead=32M)")
    ap.add_argument("--variant", action="append", metavar="NAME=OPTS",
                    help="also measure a mount with these options (cold windows, paging, scan), e.g. "
                         "'procs=--workers 2'; ra_kb=N sets the mount's kernel read_ahead_kb after "
                         "mounting, env:NAME=VALUE an environment variable of the daemon")
    ap.add_argument("--only", type=lambda s: s.split(","), metavar="NAME,...",
                    help=f"run only these workloads ({', '.join(WORKLOADS)})")
    ap.add_argument("--wait-quiet", type=float, default=60, metavar="S",
                    help="wait up to S seconds for other processes to go idle before the run, "
                         "and up to min(S, 120) before each workload (default 60; 0: never)")
    ap.add_argument("--skip-server", action="store_true", help="no mef3io-server column")
    ap.add_argument("--skip-sweep", action="store_true", help="no --tile-seconds sweep")
    ap.add_argument("--no-trace", action="store_true", help="mount without --trace (no explanations)")
    a = ap.parse_args(argv)
    Bench(a).run()


if __name__ == "__main__":
    main()

__all__ = ["Bench", "f1"]
