"""`preview.png`: a picture of the whole session, drawn from the block envelopes alone.

One strip per channel (the first MAX_STRIPS, in info.json's order; the
picture and info.json's `preview.left_out` name the rest), the channel's
name on the left, a clock-time axis (UTC) below; each pixel column shows
the range of the blocks it overlaps, and a column no block overlaps (a gap,
before a late start, after an early end) is left blank. Only block indexes
are read, so it costs the same for an hour as for a month. A strip spans
the 1st to 99th percentile of its channel's block extremes (an artefact
then runs to the strip's edge instead of flattening the rest); a flat
channel is a line through the middle; light grey marks blocks whose
extremes the writer left unset; a channel whose block index cannot be read
says so in its strip, and the rest is drawn.

The PNG is stored uncompressed (png.py), so its size follows from the
channel count at listing, and its geometry is in info.json (`preview`), so
a tool can tell which pixel is which channel and time.
"""

from __future__ import annotations

import datetime
import math
import os

import numpy as np

from .envelopes import envelopes_or_none
from .files import PlannedFile
from .font import CELL_H, draw_text, fit, text_width
from .layout import Layout, reader_of
from .png import encode_png, png_size

NAME = "preview.png"
WIDTH = 1200
LEFT, RIGHT = 112, 16          # the names' column; a margin
PLOT = WIDTH - LEFT - RIGHT    # pixel columns of time
TOP = 24                       # the title line above the strips
PITCH, STRIP = 24, 20          # rows per channel; rows a strip draws in (under a separator row and a blank)
MAX_STRIPS = 32
AXIS = 22                      # rows below the strips for the time axis
FOOTER = 12                    # one more text line when channels were left out
PALETTE = [(255, 255, 255), (40, 40, 40), (28, 86, 160), (205, 205, 205)]
PAPER, INK, TRACE, LIGHT = range(4)
BITS = 2
STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
         86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)
MIN_LABEL_GAP = 72             # pixels between time labels


def geometry(names: list, t0: int, t_end: int) -> dict:
    """Everything about the picture that listing can know: its size and where each strip is."""
    drawn, left = names[:MAX_STRIPS], names[MAX_STRIPS:]
    height = TOP + PITCH * len(drawn) + AXIS + (FOOTER if left else 0) + 4
    return {"file": NAME, "width": WIDTH, "height": height, "plot_left": LEFT, "plot_width": PLOT,
            "start_uutc": t0, "end_uutc": t_end,
            "strips": [{"channel": n, "top": TOP + PITCH * k + 2, "height": STRIP}
                       for k, n in enumerate(drawn)],
            "left_out": left}


def _columns(env: np.ndarray, t0: float, per_col: float):
    """Per pixel column: nanmin and nanmax of the blocks it overlaps, and whether any does."""
    lo = np.full(PLOT, np.nan)
    hi = np.full(PLOT, np.nan)
    covered = np.zeros(PLOT, dtype=bool)
    if not len(env):
        return lo, hi, covered
    x0 = np.clip(np.floor((env[:, 0] - t0) / per_col), 0, PLOT - 1).astype(np.int64)
    x1 = np.clip(np.ceil((env[:, 1] - t0) / per_col), 0, PLOT).astype(np.int64)
    span = np.maximum(x1 - x0, 1)
    block = np.repeat(np.arange(len(env)), span)
    cols = np.repeat(x0, span) + np.arange(len(block)) - np.repeat(np.cumsum(span) - span, span)
    keep = cols < PLOT
    block, cols = block[keep], cols[keep]
    np.fmin.at(lo, cols, env[block, 2])
    np.fmax.at(hi, cols, env[block, 3])
    covered[cols] = True
    return lo, hi, covered


def _draw_strip(img: np.ndarray, top: int, env: np.ndarray, t0: float, per_col: float) -> None:
    lo, hi, covered = _columns(env, t0, per_col)
    area = img[top:top + STRIP, LEFT:LEFT + PLOT]
    known = covered & ~np.isnan(lo) & ~np.isnan(hi)
    area[:, covered & ~known] = LIGHT
    if not known.any():
        return
    bottom, ceiling = np.nanquantile(env[:, 2], 0.01), np.nanquantile(env[:, 3], 0.99)
    if not ceiling > bottom:                      # flat: a line through the middle
        mid = (bottom + ceiling) / 2 if math.isfinite(bottom + ceiling) else 0.0
        bottom, ceiling = mid - 1.0, mid + 1.0
    scale = (STRIP - 1) / (ceiling - bottom)
    with np.errstate(invalid="ignore"):
        y_top = np.clip(np.rint((ceiling - hi) * scale), 0, STRIP - 1)
        y_bot = np.clip(np.rint((ceiling - lo) * scale), 0, STRIP - 1)
    rows = np.arange(STRIP)[:, None]
    area[(rows >= y_top[None, :]) & (rows <= y_bot[None, :]) & known[None, :]] = TRACE


def _clock(us: float, step: float, relative: bool) -> str:
    if relative:                                  # elapsed time: no date to show
        s = int(round(us / 1e6))
        return f"{s // 3600}:{s // 60 % 60:02d}" + (f":{s % 60:02d}" if step < 60 else "")
    when = datetime.datetime.fromtimestamp(us / 1e6, datetime.timezone.utc)
    return when.strftime("%m-%d" if step >= 86400 else "%H:%M" if step >= 60 else "%H:%M:%S")


def _axis(img: np.ndarray, y: int, t0: int, t1: int, per_col: float, relative: bool) -> None:
    img[y, LEFT:LEFT + PLOT] = INK
    seconds = (t1 - t0) / 1e6
    step = next((s for s in STEPS if seconds / s * MIN_LABEL_GAP <= PLOT), STEPS[-1])
    origin = t0 if relative else 0
    t = math.ceil((t0 - origin) / 1e6 / step) * step
    while origin + t * 1e6 <= t1:
        x = LEFT + int((origin + t * 1e6 - t0) / per_col)
        if x < LEFT + PLOT:
            img[y + 1:y + 4, x] = INK
            label = _clock(t * 1e6 if relative else origin + t * 1e6, step, relative)
            at = x - text_width(label) // 2
            if at + text_width(label) <= WIDTH:
                draw_text(img, at, y + 6, label, INK)
        t += step


def _title(meta) -> str:
    seconds = (meta.t_end - meta.t0) / 1e6
    span = (f"{seconds / 86400:.1f} d" if seconds >= 2 * 86400 else f"{seconds / 3600:.1f} h"
            if seconds >= 2 * 3600 else f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s")
    name = os.path.basename(meta.shown_path.rstrip("/"))
    if meta.password_level == 1:
        when = "times relative to the recording-time offset (level-1 password)"
    else:
        when = datetime.datetime.fromtimestamp(meta.t0 / 1e6, datetime.timezone.utc) \
            .strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{name}   {when}   {span}   {len(meta.channels)} channels"


def draw(meta, geo: dict, envs: dict) -> np.ndarray:
    """The picture as palette indices (height, width)."""
    img = np.full((geo["height"], WIDTH), PAPER, dtype=np.uint8)
    t0, t1 = meta.t0, max(meta.t_end, meta.t0 + 1)
    per_col = (t1 - t0) / PLOT
    draw_text(img, 4, 8, fit(_title(meta), WIDTH - 8), INK)
    by_name = {c.name: c for c in meta.channels}
    for strip in geo["strips"]:
        top = strip["top"]
        img[top - 2, LEFT:LEFT + PLOT] = LIGHT    # separator
        label = fit(by_name[strip["channel"]].name, LEFT - 8)
        draw_text(img, 4, top + (STRIP - CELL_H) // 2 + 1, label, INK)
        env = envs[strip["channel"]]
        if env is None:
            draw_text(img, LEFT + 4, top + (STRIP - CELL_H) // 2 + 1, "block index unreadable", INK)
        else:
            _draw_strip(img, top, env, t0, per_col)
    y = TOP + PITCH * len(geo["strips"]) + 1
    _axis(img, y, t0, t1, per_col, meta.password_level == 1)
    if geo["left_out"]:
        note = f"{len(geo['left_out'])} more channels not drawn: " + " ".join(geo["left_out"])
        draw_text(img, 4, y + AXIS - 4, fit(note, WIDTH - 8), INK)
    return img


def add(layout: Layout) -> None:
    meta = layout.meta
    readers = layout.readers
    geo = geometry([c.name for c in meta.channels], meta.t0, meta.t_end)
    label = f"{meta.shown_path}/{NAME}"

    def make() -> bytes:
        names = [s["channel"] for s in geo["strips"]]
        envs = envelopes_or_none(reader_of(readers, meta), names, label)
        return encode_png(draw(meta, geo, envs), PALETTE, BITS)

    size = png_size(WIDTH, geo["height"], BITS, len(PALETTE))
    planned = PlannedFile(size, make, label)
    planned.rows = [c.tiles for c in meta.channels]   # it draws them all: owners, modes (attrs.py)
    layout.add(NAME, planned)
    layout.session_keys["preview_file"] = NAME
    layout.session_keys["preview"] = geo
    layout.session_keys.setdefault("overview_layout", {})["preview_file"] = (
        "PNG of width x height pixels from the block envelopes: pixel column plot_left + x spans uUTC "
        "[start_uutc + x * d, start_uutc + (x + 1) * d), d = (end_uutc - start_uutc) / plot_width; "
        "rows [top, top + height) of strips[i] draw channel strips[i].channel; left_out were not drawn")
