"""Power traces from bench instruments, aligned to the firmware's phases: energy per phase.

Formats (``read_trace(path, fmt)``), exactly as the tools write them:

* ``ppk2`` — Nordic Power Profiler Kit II, nRF Connect Power Profiler "Export" to CSV. Header
  ``Timestamp(ms),Current(uA)`` followed, depending on the export's check boxes, by ``D0-D7`` (one
  8-character field, character *i* is digital channel D*i*: ``0``, ``1``, ``X`` undetermined, ``-`` not
  sampled) and/or ``D0,D1,D2,D3,D4,D5,D6,D7`` (one field per channel, same characters). Time in
  milliseconds, current in microamperes (3 decimals). No voltage column: give the supply voltage.
  (Source: pc-nrfconnect-ppk, src/actions/exportChartAction.ts; older app versions wrote a single
  ``Bits`` column of 8 binary digits, also accepted.)
* ``joulescope`` — Joulescope UI CSV: the statistics recording writes the header
  ``#time,current,voltage,power,charge,energy`` (s, A, V, W, C, J; time relative to the start);
  the older sample export writes ``time,current,voltage`` rows without a header. Extra columns (e.g.
  ``in0``/``in1``, the general-purpose inputs, if you add them) are digital channels.
* ``generic`` — a header row ``time,current[,voltage][,<channel>...]`` in s, A, V; every further
  column is a digital channel (0/1). Lines starting with ``#`` before the header are comments.

Alignment: each phase is one window. Either a digital *marker channel* is high during every phase
(a GPIO the firmware raises at the phase's opening marker and lowers at the closing one — wire it to
D0 of a PPK2 or IN0 of a Joulescope), or the caller gives the windows as times (``read_windows``:
a CSV of ``start_s,end_s`` rows, in the trace's time base). Energy is the trapezoidal integral of
current × voltage (or of the power column when the file has one) over each window.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("ppk2", "joulescope", "generic")
PPK2_TIME, PPK2_CURRENT = "Timestamp(ms)", "Current(uA)"
_DIGITAL_CHARS = {"0": 0, "1": 1, "X": -1, "x": -1, "-": -2}


class TraceError(ValueError):
    """A trace file is malformed, or cannot be aligned; the message names the file, line and column."""


@dataclass
class Trace:
    path: str
    format: str
    time_s: np.ndarray
    current_a: np.ndarray
    voltage_v: np.ndarray | None = None
    power_w: np.ndarray | None = None
    # channel name -> per-sample state: 1 high, 0 low, -1 undetermined, -2 not sampled
    digital: dict[str, np.ndarray] = field(default_factory=dict)

    def power(self, voltage: float | None = None) -> np.ndarray:
        """Instantaneous power in W: the power column, else current × (voltage column or ``voltage``)."""
        if self.power_w is not None:
            return self.power_w
        if self.voltage_v is not None:
            return self.current_a * self.voltage_v
        if voltage is None:
            raise TraceError(f"{self.path}: the {self.format} trace has no voltage column — give the "
                             "supply voltage (--voltage V)")
        return self.current_a * float(voltage)


def _number(text: str, path: str, line: int, column: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise TraceError(f"{path} line {line}, column '{column}': {text.strip()!r} is not a number") from None
    if not math.isfinite(v):
        raise TraceError(f"{path} line {line}, column '{column}': {text.strip()!r} is not a finite number")
    return v


def _digital(text: str, path: str, line: int, column: str) -> int:
    t = text.strip()
    if t not in _DIGITAL_CHARS:
        raise TraceError(f"{path} line {line}, column '{column}': {t!r} is not a digital state (0, 1, X or -)")
    return _DIGITAL_CHARS[t]


def _rows(path: Path):
    """(line number, fields) of every non-empty line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for lineno, fields in enumerate(csv.reader(f), 1):
                if fields and any(x.strip() for x in fields):
                    yield lineno, fields
    except FileNotFoundError:
        raise TraceError(f"trace file {path} not found") from None
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not a text CSV file ({e.reason})") from None


def _finish(path: Path, fmt: str, time_s: list[float], current: list[float], lines: list[int],
            voltage: list[float] | None = None, power: list[float] | None = None,
            digital: dict[str, list[int]] | None = None) -> Trace:
    if not time_s:
        raise TraceError(f"{path}: no samples after the header")
    t = np.array(time_s)
    step = np.diff(t)
    if (step <= 0).any():
        k = int(np.flatnonzero(step <= 0)[0]) + 1
        raise TraceError(f"{path} line {lines[k]}: time {time_s[k]:g} s does not increase "
                         f"(previous sample {time_s[k - 1]:g} s)")
    return Trace(str(path), fmt, t, np.array(current),
                 None if voltage is None else np.array(voltage),
                 None if power is None else np.array(power),
                 {k: np.array(v, dtype=np.int8) for k, v in (digital or {}).items()})


def read_ppk2(path: Path | str) -> Trace:
    p = Path(path)
    rows = _rows(p)
    try:
        lineno, header = next(rows)
    except StopIteration:
        raise TraceError(f"{p}: empty file (expected a PPK2 export: {PPK2_TIME},{PPK2_CURRENT},...)") from None
    header = [h.strip() for h in header]
    if header[:2] != [PPK2_TIME, PPK2_CURRENT]:
        raise TraceError(f"{p} line {lineno}: header {','.join(header)!r} is not a PPK2 export "
                         f"(it starts with {PPK2_TIME},{PPK2_CURRENT})")
    packed = [i for i, h in enumerate(header) if h in ("D0-D7", "Bits")]
    single = {h: i for i, h in enumerate(header) if h in {f"D{k}" for k in range(8)}}
    unknown = [h for i, h in enumerate(header[2:], 2) if i not in packed and h not in single]
    if unknown:
        raise TraceError(f"{p} line {lineno}: unknown column(s) {', '.join(map(repr, unknown))} in a PPK2 export")
    t, cur, lines = [], [], []
    dig: dict[str, list[int]] = {f"D{k}": [] for k in range(8)} if (packed or single) else {}
    for lineno, f in rows:
        if len(f) != len(header):
            raise TraceError(f"{p} line {lineno}: {len(f)} fields, the header has {len(header)}")
        t.append(_number(f[0], str(p), lineno, PPK2_TIME) / 1e3)
        cur.append(_number(f[1], str(p), lineno, PPK2_CURRENT) / 1e6)
        lines.append(lineno)
        if packed:
            col = header[packed[0]]
            bits = f[packed[0]].strip()
            if len(bits) != 8:
                raise TraceError(f"{p} line {lineno}, column '{col}': {bits!r} is not 8 channel states")
            states = [_digital(ch, str(p), lineno, col) for ch in bits]
            if col == "Bits":                # old export: binary number, D0 is the last digit
                states = states[::-1]
            for k in range(8):
                dig[f"D{k}"].append(states[k])
        elif single:
            for k in range(8):
                i = single.get(f"D{k}")
                dig[f"D{k}"].append(_digital(f[i], str(p), lineno, f"D{k}") if i is not None else -2)
    return _finish(p, "ppk2", t, cur, lines, digital=dig)


_JS_STATS = ["time", "current", "voltage", "power", "charge", "energy"]


def read_joulescope(path: Path | str) -> Trace:
    p = Path(path)
    rows = list(_rows(p))
    if not rows:
        raise TraceError(f"{p}: empty file (expected a Joulescope CSV: #time,current,voltage,...)")
    lineno, first = rows[0]
    names = [h.strip().lstrip("#").strip().lower() for h in first]
    if names[0] == "time":
        header, data = names, rows[1:]
        if header[:3] != ["time", "current", "voltage"]:
            raise TraceError(f"{p} line {lineno}: header {','.join(first)!r}: a Joulescope CSV starts with "
                             "#time,current,voltage")
    else:                                    # headerless sample export: time,current,voltage
        try:
            float(first[0])
        except ValueError:
            raise TraceError(f"{p} line {lineno}: {first[0].strip()!r} — neither a Joulescope header "
                             "(#time,current,voltage,...) nor a sample row") from None
        header, data = ["time", "current", "voltage"][:len(first)], rows
        if len(first) != 3:
            raise TraceError(f"{p} line {lineno}: a headerless Joulescope export has 3 columns "
                             f"(time,current,voltage), this line has {len(first)}")
    extra = [h for h in header if h not in _JS_STATS]
    t, cur, volt, pw, lines = [], [], [], [], []
    dig: dict[str, list[int]] = {h: [] for h in extra}
    for lineno, f in data:
        if len(f) != len(header):
            raise TraceError(f"{p} line {lineno}: {len(f)} fields, the header has {len(header)}")
        v = {h: f[i] for i, h in enumerate(header)}
        t.append(_number(v["time"], str(p), lineno, "time"))
        cur.append(_number(v["current"], str(p), lineno, "current"))
        volt.append(_number(v["voltage"], str(p), lineno, "voltage"))
        if "power" in v:
            pw.append(_number(v["power"], str(p), lineno, "power"))
        for h in extra:
            dig[h].append(int(_number(v[h], str(p), lineno, h) != 0))
        lines.append(lineno)
    return _finish(p, "joulescope", t, cur, lines, voltage=volt, power=pw if "power" in header else None,
                   digital=dig)


def read_generic(path: Path | str) -> Trace:
    p = Path(path)
    rows = _rows(p)
    lineno, header = 0, []
    for lineno, header in rows:  # noqa: B007  (the header's line is used below)
        if not header[0].lstrip().startswith("#"):
            break
    else:
        raise TraceError(f"{p}: empty file (expected a header: time,current[,voltage][,channels...])")
    names = [h.strip().lower() for h in header]
    aliases = {"time_s": "time", "current_a": "current", "voltage_v": "voltage"}
    names = [aliases.get(n, n) for n in names]
    if names[:2] != ["time", "current"]:
        raise TraceError(f"{p} line {lineno}: header {','.join(header)!r}: a generic trace starts with "
                         "time,current (seconds, amperes)")
    if len(set(names)) != len(names):
        raise TraceError(f"{p} line {lineno}: duplicate column names in {','.join(header)!r}")
    has_v = "voltage" in names
    extra = [n for n in names if n not in ("time", "current", "voltage")]
    t, cur, volt, lines = [], [], [], []
    dig: dict[str, list[int]] = {h: [] for h in extra}
    for lineno, f in rows:
        if len(f) != len(names):
            raise TraceError(f"{p} line {lineno}: {len(f)} fields, the header has {len(names)}")
        v = dict(zip(names, f, strict=True))
        t.append(_number(v["time"], str(p), lineno, "time"))
        cur.append(_number(v["current"], str(p), lineno, "current"))
        if has_v:
            volt.append(_number(v["voltage"], str(p), lineno, "voltage"))
        for h in extra:
            dig[h].append(_digital(v[h], str(p), lineno, h))
        lines.append(lineno)
    return _finish(p, "generic", t, cur, lines, voltage=volt if has_v else None, digital=dig)


def read_trace(path: Path | str, fmt: str) -> Trace:
    readers = {"ppk2": read_ppk2, "joulescope": read_joulescope, "generic": read_generic}
    if fmt not in readers:
        raise TraceError(f"unknown trace format {fmt!r}; use one of {', '.join(FORMATS)}")
    return readers[fmt](path)


# --------------------------------------------------------------------------- alignment, energy


def marker_windows(trace: Trace, channel: str) -> list[tuple[float, float]]:
    """(start, end) times of every high period of ``channel``: from the first high sample to the
    first low sample after it. Undetermined samples keep the previous state."""
    if channel not in trace.digital:
        have = ", ".join(trace.digital) or "none"
        raise TraceError(f"{trace.path}: no digital channel {channel!r} (channels: {have})")
    states = trace.digital[channel].astype(np.int64)
    if (states == -2).all():
        raise TraceError(f"{trace.path}: channel {channel!r} was not sampled (all '-')")
    level = np.zeros(len(states), dtype=np.int64)
    cur = 0
    for i, s in enumerate(states):          # forward-fill X / -
        if s >= 0:
            cur = int(s)
        level[i] = cur
    edges = np.diff(np.concatenate(([0], level)))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if len(ends) < len(starts):
        raise TraceError(f"{trace.path}: channel {channel!r} is still high at the end of the trace "
                         f"(t = {trace.time_s[-1]:g} s): the capture stopped inside a phase")
    return [(float(trace.time_s[a]), float(trace.time_s[b])) for a, b in zip(starts, ends, strict=True)]


def read_windows(path: Path | str) -> list[tuple[float, float]]:
    """Phase windows from a CSV of ``start_s,end_s`` rows (an optional header row is skipped)."""
    p = Path(path)
    out: list[tuple[float, float]] = []
    for lineno, f in _rows(p):
        if lineno == 1 and f[0].strip().lstrip("#").lower().startswith("start"):
            continue
        if len(f) != 2:
            raise TraceError(f"{p} line {lineno}: expected start_s,end_s, got {len(f)} fields")
        a, b = _number(f[0], str(p), lineno, "start_s"), _number(f[1], str(p), lineno, "end_s")
        if b <= a:
            raise TraceError(f"{p} line {lineno}: end {b:g} s is not after start {a:g} s")
        out.append((a, b))
    return out


def energy(trace: Trace, start: float, end: float, voltage: float | None = None) -> float:
    """Energy in J between two times (trapezoidal rule, linear interpolation at the ends)."""
    t = trace.time_s
    if start < t[0] or end > t[-1] or end <= start:
        raise TraceError(f"{trace.path}: window {start:g}..{end:g} s is outside the trace "
                         f"({t[0]:g}..{t[-1]:g} s) or empty")
    pw = trace.power(voltage)
    inside = (t > start) & (t < end)
    ts = np.concatenate(([start], t[inside], [end]))
    ps = np.concatenate(([np.interp(start, t, pw)], pw[inside], [np.interp(end, t, pw)]))
    return float(np.sum((ps[1:] + ps[:-1]) * np.diff(ts)) / 2.0)


def phase_energies(trace: Trace, n_phases: int, *, channel: str | None = None,
                   windows: list[tuple[float, float]] | None = None,
                   voltage: float | None = None) -> list[float]:
    """Energy of each of the ``n_phases`` phases the bench ran, in order.

    The windows come from ``windows`` or from the marker ``channel``. There must be exactly
    ``n_phases`` of them — or one more, the boot-time image validation, which comes first and is
    returned first (the list then has ``n_phases + 1`` entries)."""
    if windows is None:
        if channel is None:
            raise TraceError(f"{trace.path}: give the marker channel (--trace-channel) or the phase "
                             "windows (--trace-windows) to align the trace with the phases")
        windows = marker_windows(trace, channel)
    if len(windows) not in (n_phases, n_phases + 1):
        raise TraceError(f"{trace.path}: {len(windows)} phase windows found, the bench ran {n_phases} "
                         f"phases (expected {n_phases}, or {n_phases + 1} with the boot-time validation)")
    return [energy(trace, a, b, voltage) for a, b in windows]
