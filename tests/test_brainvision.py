"""The BrainVision view (`brainvision/<fs>Hz.vhdr`, `.vmrk`, `.eeg`), through a real mount.

* MNE's `read_raw_brainvision` gives the `.f32` values in volts exactly, the
  exact rate (non-integer ones too), the grid start as `meas_date`, and
  `BAD` annotations over exactly the samples where no channel of the rate has
  data, so `reject_by_annotation="omit"` drops exactly those; the MEF records
  come as comments. On sessions with gaps, segments, several and non-integer
  rates, odd names, both writers, a .mefd.tar, and encryption (both levels).
* The `.eeg` is the rate matrix's bytes, served from the same tiles (reading
  it after the matrix decodes nothing); listing never reads a block index (the
  `.vmrk` is made on first open).
* The text has none of the things EEGLAB's and FieldTrip's readers trip over
  (checked on every file). The readers themselves, in GNU Octave: BioSig's
  `mexSLOAD` (Debian's octave-biosig, installed by scripts/setup.sh
  --with-octave); EEGLAB's bva-io and FieldTrip when MEF3FS_BVA_IO /
  MEF3FS_FIELDTRIP name their source folders (neither is in a package
  registry).
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import mef3io
import numpy as np
import pytest

from tests.conftest import read_f32, read_info, read_stats
from tests.sessions import T0, _rng, _signal, reference

mne = pytest.importorskip("mne")

SESSIONS = ["gaps.mefd", "rates.mefd", "names.mefd", "mt.mefd", "factors.mefd", "arch.mefd.tar",
            "sub-01/ses-1/night1.mefd"]
VOLTS = {"uV": 1e-6, "µV": 1e-6, "mV": 1e-3, "V": 1.0, "nV": 1e-9}
OCTAVE = shutil.which("octave-cli")


@pytest.fixture(scope="module")
def mounted(module_mount_fs, corpus):
    # small tiles; a cache that holds the whole corpus (the same-tiles check counts decodes)
    m = module_mount_fs(corpus.source, "--workers", "2", "--tile-seconds", "3", "--cache-size", "64M")
    return m, corpus


def grids_of(folder):
    info = read_info(folder)
    assert info["status"] == "ok", info
    by_name = {c["name"]: c for c in info["channels"]}
    return info, [(g, [by_name[n] for n in g["channels"]]) for g in info["grids"]]


def f32_matrix(folder, chans):
    return np.stack([read_f32(Path(folder) / c["file"]) for c in chans])


def volts(chans):
    return np.array([VOLTS.get(c["units"], 1.0) for c in chans])[:, None]


def read_raw(vhdr):
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no warning from MNE on our files
        return mne.io.read_raw_brainvision(str(vhdr), preload=True, verbose="error")


def spans(mask):
    """[a, b) runs of True in a boolean array."""
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def bad_spans(raw):
    out = []
    for a in raw.annotations:
        if a["description"].upper().startswith("BAD"):
            s = int(round(a["onset"] * raw.info["sfreq"]))
            out.append((s, s + int(round(a["duration"] * raw.info["sfreq"]))))
    return sorted(out)


def grid_date(t0):
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=t0)


def parse_vmrk(text):
    """Mk lines -> list of (number, type, description, position, size, channel, date or None)."""
    out = []
    for line in text.splitlines():
        m = re.fullmatch(r"Mk(\d+)=(.*)", line)
        if m:
            f = m.group(2).split(",")
            out.append((int(m.group(1)), f[0], f[1], int(f[2]), int(f[3]), int(f[4]),
                        f[5] if len(f) > 5 else None))
    return out


def mef3io_records(path, password=""):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = mef3io.Reader(str(path), password=password)
        try:
            return r.records(level="all")
        finally:
            r.close()


# ---------------------------------------------------------------------------
# MNE through the mount
# ---------------------------------------------------------------------------

def check_with_mne(folder, on_disk, password=""):
    """Every rate of one session: MNE's data, rate, date, names and annotations."""
    info, grids = grids_of(folder)
    records = mef3io_records(on_disk, password)
    for g, chans in grids:
        vhdr = Path(folder) / g["brainvision_file"]
        raw = read_raw(vhdr)
        what = f"{folder.name} {g['sampling_frequency']} Hz"
        f32 = f32_matrix(folder, chans)
        n = g["number_of_samples"]
        assert raw.info["sfreq"] == g["sampling_frequency"], what
        assert raw.n_times == n and len(raw.ch_names) == len(chans), what
        assert raw.info["meas_date"] == grid_date(g["grid_start_uutc"]), what
        data = raw.get_data()
        want = f32.astype(np.float64) * volts(chans)
        assert np.array_equal(data, want, equal_nan=True), f"{what}: MNE's data is not the .f32 values"
        assert [raw._orig_units[ch] for ch in raw.ch_names] == \
            ["µV" if c["units"] in ("uV", "µV") else c["units"] for c in chans], what

        # BAD annotations cover exactly the samples where no channel has data
        empty = np.isnan(f32).all(axis=0)
        assert bad_spans(raw) == spans(empty), what
        kept = raw.get_data(reject_by_annotation="omit")
        assert np.array_equal(kept, want[:, ~empty], equal_nan=True), what

        # the MEF records of the session and of this rate's channels, at their grid sample
        mine = {c["name"] for c in chans}
        expect = []
        for r in records:
            i = math.ceil((r["time"] - g["grid_start_uutc"]) * g["sampling_frequency"] / 1e6 - 0.5)
            if (r["channel"] is None or r["channel"] in mine) and 0 <= i < n:
                expect.append((i, f"Comment/{r['type']}: {r['text']}"))
        got = [(int(round(a["onset"] * raw.info["sfreq"])), a["description"]) for a in raw.annotations
               if a["description"].startswith("Comment/")]
        assert sorted(got) == sorted(expect), what
    return info, grids


@pytest.mark.parametrize("rel", SESSIONS)
def test_mne_reads_every_rate(mounted, rel):
    m, corpus = mounted
    check_with_mne(m.root / rel, corpus.sessions[rel])


def test_sessions_cover_the_cases(mounted):
    """Not vacuous: gaps, records, several and non-integer rates, renamed channels are all there."""
    m, _ = mounted
    _, gaps = grids_of(m.root / "gaps.mefd")
    assert len(gaps) == 2
    vmrk = (m.root / "gaps.mefd" / gaps[0][0]["brainvision_marker_file"]).read_text()
    kinds = {mk[1] for mk in parse_vmrk(vmrk)}
    assert kinds == {"New Segment", "Bad Interval", "Comment"}
    _, rates = grids_of(m.root / "rates.mefd")
    assert {g["sampling_frequency"] for g, _ in rates} == {499.907, 255.99966850667516, 32768.0}
    raw = read_raw(m.root / "names.mefd" / "brainvision" / "256Hz.vhdr")
    assert raw.ch_names == ["..", ".hidden", "Fp1\u2013Ref \u00b5V", "LA 1", "hidden", "tab_name",
                            "\u03a9mega"]


def test_gaps_json_agrees(mounted):
    """Each BAD interval starts where a channel's data ends (its end, a gap's start in gaps.json) and
    ends where one begins, within half a sample; every gap of a one-channel rate is one."""
    m, _ = mounted
    for rel in ("gaps.mefd", "rates.mefd", "mt.mefd", "arch.mefd.tar"):
        folder = m.root / rel
        info, grids = grids_of(folder)
        gaps = {c["name"]: c["gaps"] for c in json.loads((folder / "gaps.json").read_text())["channels"]}
        for g, chans in grids:
            fs, t0, n = g["sampling_frequency"], g["grid_start_uutc"], g["number_of_samples"]
            ends = [c["end_uutc"] for c in chans] + [x["start_uutc"] for c in chans for x in gaps[c["name"]]]
            starts = [c["start_uutc"] for c in chans] + [x["end_uutc"] for c in chans for x in gaps[c["name"]]]
            bad = bad_spans(read_raw(folder / g["brainvision_file"]))
            for a, b in bad:
                assert a == 0 or min(abs(t0 + a * 1e6 / fs - t) for t in ends) <= 0.5e6 / fs, (rel, a)
                assert b == n or min(abs(t0 + b * 1e6 / fs - t) for t in starts) <= 0.5e6 / fs, (rel, b)
            if len(chans) == 1:
                for x in gaps[chans[0]["name"]]:
                    assert any(abs(t0 + a * 1e6 / fs - x["start_uutc"]) <= 0.5e6 / fs and
                               abs(t0 + b * 1e6 / fs - x["end_uutc"]) <= 0.5e6 / fs for a, b in bad), (rel, x)


@pytest.mark.parametrize("level", [1, 2])
def test_mne_reads_encrypted(mount_fs, encrypted, level):
    password = encrypted.password1 if level == 1 else encrypted.password2
    m = mount_fs(encrypted.source, "--password", password)
    info, grids = check_with_mne(m.root / encrypted.rel, encrypted.session, password)
    assert info["password_level"] == level and len(grids) == 2
    bad = bad_spans(read_raw(m.root / encrypted.rel / grids[0][0]["brainvision_file"]))
    assert (600, 800) in bad                      # E1's NaN run


# ---------------------------------------------------------------------------
# the files: names, sizes, tiles
# ---------------------------------------------------------------------------

def test_info_names_the_files(mounted):
    m, _ = mounted
    for rel in SESSIONS:
        folder = m.root / rel
        info, grids = grids_of(folder)
        assert "made from the block indexes on first open" in info["brainvision_layout"]
        listed = set()
        for g, chans in grids:
            stem = f"brainvision/{g['npy_file'][len('rates/'):-len('.npy')]}"
            assert g["brainvision_file"] == stem + ".vhdr"
            assert g["brainvision_marker_file"] == stem + ".vmrk"
            assert g["brainvision_data_file"] == stem + ".eeg"
            listed |= {g["brainvision_file"], g["brainvision_marker_file"], g["brainvision_data_file"]}
            assert (folder / g["brainvision_data_file"]).stat().st_size == 4 * len(chans) * g["number_of_samples"]
        assert listed == {f"brainvision/{p}" for p in os.listdir(folder / "brainvision")}, rel


def test_eeg_is_the_matrix_from_the_same_tiles(mounted):
    """The .eeg holds the matrix's bytes, and reading it after the matrix decodes nothing more."""
    m, _ = mounted
    for rel in ("gaps.mefd", "rates.mefd", "factors.mefd"):
        folder = m.root / rel
        _, grids = grids_of(folder)
        for g, chans in grids:
            npy = np.load(folder / g["npy_file"])
            before = read_stats(m)
            eeg = (folder / g["brainvision_data_file"]).read_bytes()
            after = read_stats(m)
            assert eeg == npy.tobytes(), (rel, g["sampling_frequency"])
            for key in ("decodes_foreground", "decodes_background", "decodes_inprocess", "misses"):
                assert after[key] == before[key], (rel, key, before[key], after[key])


def test_listing_reads_no_block_index(mount_fs, corpus):
    m = mount_fs(corpus.source, "--workers", "1")
    folder = m.root / "gaps.mefd"
    for top, dirs, files in os.walk(m.root):
        for name in files:
            os.stat(os.path.join(top, name))
    _, grids = grids_of(folder)
    for g, _ in grids:
        assert (folder / g["brainvision_file"]).read_bytes().startswith(b"Brain Vision")
        assert (folder / g["brainvision_marker_file"]).stat().st_size == 0   # not made yet
    assert read_stats(m)["indexes_loaded"] == 0, "listing or a header read a block index"
    vmrk = folder / grids[0][0]["brainvision_marker_file"]
    assert parse_vmrk(vmrk.read_text(encoding="utf-8"))     # read by content (direct_io), not by size
    assert read_stats(m)["indexes_loaded"] > 0


# ---------------------------------------------------------------------------
# the text: what EEGLAB's and FieldTrip's readers need
# ---------------------------------------------------------------------------

def sections(text):
    """[(name, [lines])] after the identification line."""
    out = []
    for line in text.splitlines()[1:]:
        if line.startswith("["):
            out.append((line, []))
        elif out:
            out[-1][1].append(line)
        else:
            assert line.startswith(";"), f"before any section: {line!r}"
    return out


def check_text(raw_bytes, kind):
    text = raw_bytes.decode("utf-8")                       # Codepage=UTF-8 says so
    assert raw_bytes.endswith(b"\n") and b"\r" not in raw_bytes
    lines = text.splitlines()
    assert lines[0] == f"Brain Vision Data Exchange {kind} File{',' if kind == 'Marker' else ''} Version 1.0"
    for line in lines:
        assert line.strip(), "a blank line (EEGLAB's readbvconf fails on one inside a section)"
        assert line.isprintable(), repr(line)
    secs = dict(sections(text))
    assert "Codepage=UTF-8" in secs["[Common Infos]"]
    for name, body in secs.items():
        if name == "[Comment]":
            assert not any(x.lstrip().startswith("[") for x in body)      # EEGLAB: a new section
            continue
        for line in body:
            assert line.startswith(";") or re.fullmatch(r"[A-Za-z0-9 ]+=.*", line), (name, line)
    return secs


def test_text_has_no_reader_pitfalls(mounted):
    m, _ = mounted
    for rel in SESSIONS:
        folder = m.root / rel
        _, grids = grids_of(folder)
        for g, chans in grids:
            vhdr = folder / g["brainvision_file"]
            h = check_text(vhdr.read_bytes(), "Header")
            common = dict(x.split("=", 1) for x in h["[Common Infos]"] if not x.startswith(";"))
            assert common["DataFile"] == Path(g["brainvision_data_file"]).name
            assert common["MarkerFile"] == Path(g["brainvision_marker_file"]).name
            assert (vhdr.parent / common["MarkerFile"]).is_file()      # FieldTrip: must exist
            assert (common["DataFormat"], common["DataOrientation"]) == ("BINARY", "VECTORIZED")
            assert int(common["NumberOfChannels"]) == len(chans)
            assert int(common["DataPoints"]) == g["number_of_samples"]
            assert 1e6 / float(common["SamplingInterval"]) == g["sampling_frequency"]
            assert h["[Binary Infos]"] == ["BinaryFormat=IEEE_FLOAT_32"]
            chs = [x for x in h["[Channel Infos]"] if not x.startswith(";")]
            assert [x.split("=", 1)[0] for x in chs] == [f"Ch{k}" for k in range(1, len(chans) + 1)]
            for x in chs:
                name, ref, res, unit = x.split("=", 1)[1].split(",")
                assert name and ref == "" and res == "1" and unit, x    # resolution 1, a unit

            mk_text = (folder / g["brainvision_marker_file"]).read_bytes()
            mk = check_text(mk_text, "Marker")
            assert [x for x in mk["[Common Infos]"] if not x.startswith(";")] == \
                ["Codepage=UTF-8", f"DataFile={common['DataFile']}"]
            entries = [x for x in mk["[Marker Infos]"] if not x.startswith(";")]
            assert all(x.count("=") == 1 for x in entries), "FieldTrip skips a marker with two '='"
            marks = parse_vmrk(mk_text.decode("utf-8"))
            assert len(marks) == len(entries)
            assert [k for k, *_ in marks] == list(range(1, len(marks) + 1))  # EEGLAB warns on a jump
            assert marks[0][1:6] == ("New Segment", "", 1, 1, 0) and re.fullmatch(r"\d{20}", marks[0][6])
            n = g["number_of_samples"]
            for _, kind, desc, pos, size, chan, date in marks[1:]:
                assert kind in ("Bad Interval", "Comment") and date is None
                assert 1 <= pos and pos + size - 1 <= n and size >= 1 and 0 <= chan <= len(chans)
                assert kind != "Bad Interval" or desc.startswith("BAD")
            assert [x[3] for x in marks] == sorted(x[3] for x in marks)


def test_enormous_marker_lists(tmp_path, monkeypatch):
    """Thousands of gaps and of records: every stretch without data is marked, records beyond
    MAX_COMMENTS are left out with a line that says how many (opened in-process)."""
    from mef3fs.index import IndexCache, MetaReaders
    from mef3fs.session import Opener, session_identity
    from mef3fs.stats import Stats
    from mef3fs.views import brainvision

    path = tmp_path / "many.mefd"
    rng = _rng(77)
    x = _signal(rng, 256 * 600)
    for k in range(0, len(x), 256):
        x[k + 200:k + 256] = np.nan                          # a gap every second: 600 gaps
    with mef3io.Writer(str(path), overwrite=True, units="uV") as w:
        w.write("A", x, T0, fs=256.0, precision=3)
        w.write_annotations([{"time": T0 + k * 100_000, "type": "Note", "text": f"n{k}, a=b"}
                             for k in range(3000)])
    monkeypatch.setattr(brainvision, "MAX_COMMENTS", 1000)
    readers = MetaReaders("")
    opener = Opener("", 10, readers, IndexCache(readers, 1 << 24, Stats()))
    session = opener.open(str(path), str(path), identity=session_identity(str(path)))
    text = session.files["brainvision/256Hz.vmrk"].opened().data.decode("utf-8")
    marks = parse_vmrk(text)
    bad = [(pos - 1, pos - 1 + size) for _, kind, _, pos, size, _, _ in marks if kind == "Bad Interval"]
    assert len(bad) >= 599 and bad == spans(np.isnan(reference(path, "A")))
    comments = [desc for _, kind, desc, *_ in marks if kind == "Comment"]
    assert len(comments) == 1000 and comments[0] == r"Note: n0\1 a:b"
    assert "; 2000 more records are left out here (more than 1000): see records.json" in text
    readers.clear()


def test_sampling_interval_round_trips():
    """The project's rates come back exactly from 1e6 / SamplingInterval; any rate within an ulp,
    and exactly whenever some double interval gives it (a brute-force search says which)."""
    from mef3fs.views.brainvision import sampling_interval
    for fs in (256.0, 1000.0, 32768.0, 499.907, 255.99966850667516, 128.0, 512.0, 500.0):
        assert 1e6 / float(repr(sampling_interval(fs))) == fs, fs
    rng = np.random.default_rng(3)
    exact = 0
    for fs in map(float, rng.uniform(1, 40000, 500)):
        s = sampling_interval(fs)
        assert type(s) is float and float(repr(s)) == s
        back = 1e6 / s
        assert abs(back - fs) <= np.spacing(fs), fs
        t = 1e6 / fs
        reachable = False
        for _ in range(40):
            t = np.nextafter(t, -math.inf)
        for _ in range(80):
            reachable |= 1e6 / t == fs
            t = np.nextafter(t, math.inf)
        assert (back == fs) == reachable, fs
        exact += back == fs
    assert exact > 400


def test_units_and_names():
    from mef3fs.views.brainvision import channel_labels, unit
    assert [unit(u) for u in ("uV", "µV", "mV", "V", "", None, "counts", "a,b")] == \
        ["µV", "µV", "mV", "V", "n/a", "n/a", "counts", r"a\1b"]
    assert channel_labels(["a,b", "tab\tx", "tab_x", " ", "\n"]) == [r"a\1b", "tab_x", "tab_x~2", "_", "_~2"]


# ---------------------------------------------------------------------------
# the readers in GNU Octave
# ---------------------------------------------------------------------------

def octave_str(text):
    return "char([" + " ".join(str(b) for b in text.encode("utf-8")) + "])"


def run_octave(lines, tmp_path, addpath=()):
    script = tmp_path / "run.m"
    head = [f"addpath({octave_str(str(p))});" for p in addpath]
    script.write_text("\n".join(head + lines + ["disp('octave-done');"]) + "\n", encoding="utf-8")
    res = subprocess.run([OCTAVE, "--no-gui", "--no-window-system", "--norc", "--quiet", str(script)],
                         capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                         env={**os.environ, "HOME": str(tmp_path)})
    assert res.returncode == 0 and "octave-done" in res.stdout, \
        f"octave failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout


OCTAVE_CASES = [("gaps.mefd", 0), ("gaps.mefd", 1), ("rates.mefd", 0), ("rates.mefd", 1), ("rates.mefd", 2),
                ("names.mefd", 0), ("mt.mefd", 0)]

# per reader: the Octave lines that load case k from (folder, file) and write what it read
READERS = {
    "biosig": """[s, HDR] = mexSLOAD(fullfile(d, f));
fs = HDR.SampleRate; x = single(s'); labels = HDR.Label;
ev = [double(HDR.EVENT.POS(:)), double(HDR.EVENT.DUR(:))];""",
    "eeglab": """EEG = pop_loadbv(d, f);
fs = EEG.srate; x = EEG.data; labels = {EEG.chanlocs.labels};
E = EEG.event(~strcmp({EEG.event.type}, 'boundary'));   % New Segment: a boundary
ev = [[E.latency]', double([E.duration]')];""",
    "fieldtrip": """hdr = ft_read_header(fullfile(d, f)); dat = ft_read_data(fullfile(d, f));
fs = hdr.Fs; x = single(dat); labels = hdr.label; E = ft_read_event(fullfile(d, f));
ev = [[E.sample]', [E.duration]'];""",
}


def reader_paths(reader):
    if reader == "biosig":
        return []
    env = {"eeglab": "MEF3FS_BVA_IO", "fieldtrip": "MEF3FS_FIELDTRIP"}[reader]
    root = os.environ.get(env)
    if not root:
        pytest.skip(f"{env} is not set (the reader is in no package registry; point it at a source folder)")
    root = Path(root)
    if reader == "eeglab":
        return [root]
    return [root / "fileio", root / "utilities", root / "compat" / "octave"]


@pytest.mark.skipif(OCTAVE is None, reason="octave-cli not installed (Debian: apt-get install octave)")
@pytest.mark.parametrize("reader", ["biosig", "eeglab",
                                    pytest.param("fieldtrip", marks=pytest.mark.slow)])  # ~100 s
def test_reader_in_octave(mounted, tmp_path, reader):
    m, _ = mounted
    paths = reader_paths(reader)
    if reader == "biosig":
        probe = run_octave(["printf('mexSLOAD=%d\\n', exist('mexSLOAD'));"], tmp_path)
        if "mexSLOAD=3" not in probe:
            pytest.skip("BioSig for Octave not installed (Debian: apt-get install octave-biosig)")
    lines = []
    cases = []
    for k, (rel, gi) in enumerate(OCTAVE_CASES):
        folder = m.root / rel
        _, grids = grids_of(folder)
        g, chans = grids[gi]
        cases.append((folder, g, chans))
        vhdr = folder / g["brainvision_file"]
        out = tmp_path / f"case{k}"
        lines += [f"d = {octave_str(str(vhdr.parent) + '/')}; f = {octave_str(vhdr.name)};",
                  READERS[reader],
                  f"o = fopen({octave_str(str(out) + '.x')}, 'w'); fwrite(o, x', 'float32', 0, 'l'); fclose(o);",
                  f"o = fopen({octave_str(str(out) + '.txt')}, 'w'); fprintf(o, '%.17g\\n', fs);",
                  "fprintf(o, '%s\\n', labels{:}); fclose(o);",
                  f"o = fopen({octave_str(str(out) + '.ev')}, 'w'); fprintf(o, '%.17g %.17g\\n', ev'); fclose(o);"]
    run_octave(lines, tmp_path, paths)
    for k, (folder, g, chans) in enumerate(cases):
        what = f"{reader}: {folder.name} {g['sampling_frequency']} Hz"
        n = g["number_of_samples"]
        x = np.fromfile(tmp_path / f"case{k}.x", dtype="<f4").reshape(len(chans), n)
        f32 = f32_matrix(folder, chans)
        assert np.array_equal(x, f32, equal_nan=True), what + ": samples differ"
        text = (tmp_path / f"case{k}.txt").read_text(encoding="utf-8").splitlines()
        assert float(text[0]) == g["sampling_frequency"], what
        want = read_raw(folder / g["brainvision_file"]).ch_names        # MNE's reading of the names
        assert [t.strip() for t in text[1:]] == want, what
        ev = [line.split() for line in (tmp_path / f"case{k}.ev").read_text().splitlines() if line.strip()]
        marks = parse_vmrk((folder / g["brainvision_marker_file"]).read_text(encoding="utf-8"))
        got = [(int(float(p)), int(float(s))) for p, s in ev]
        want = [(pos, size) for _, kind, _, pos, size, _, _ in marks
                if not (reader == "eeglab" and kind == "New Segment")]
        assert got == want, what
