"""Power traces: each format parsed from small files written here, phase windows from a marker channel
or from timestamps, energy per phase checked against the analytic integral, malformed files named by
line and column."""

from pathlib import Path

import numpy as np
import pytest

from twin.bench.traces import (
    TraceError,
    energy,
    marker_windows,
    phase_energies,
    read_trace,
    read_windows,
)

# A synthetic capture: 1 kS/s for 1 s; current 1 mA idle, 10 mA in phase A (0.1..0.3 s), a ramp
# from 5 to 15 mA in phase B (0.5..0.8 s); marker high exactly during both phases.
RATE = 1000
T = np.arange(0, RATE + 1) / RATE
A, B = (0.1, 0.3), (0.5, 0.8)
KA, KB = (100, 300), (500, 800)          # the same windows in samples


def _k(t: float) -> int:
    return round(t * RATE)


def _current(t: float) -> float:
    k = _k(t)
    if KA[0] <= k < KA[1]:
        return 10e-3
    if KB[0] <= k < KB[1]:
        return 5e-3 + 10e-3 * (k - KB[0]) / (KB[1] - KB[0])
    return 1e-3


def _marker(t: float) -> int:
    k = _k(t)
    return int(KA[0] <= k < KA[1] or KB[0] <= k < KB[1])


def _expected(voltage: float) -> list[float]:
    """The trapezoidal integral of the sampled waveform over each window: a window runs from the
    marker's first high sample to its first low one, whose current is already the idle 1 mA. Phase A:
    10 mA for 199 steps, then one step from 10 to 1 mA; phase B: a ramp from 5 mA up to 15 mA − one
    step, then one step down to 1 mA."""
    step = 1 / RATE
    na = KA[1] - KA[0]
    a = (10e-3 * (na - 1) + (10e-3 + 1e-3) / 2) * step
    n = KB[1] - KB[0]
    samples = [5e-3 + 10e-3 * k / n for k in range(n)] + [1e-3]
    b = sum((samples[k] + samples[k + 1]) / 2 * step for k in range(n))
    return [voltage * a, voltage * b]


def _ppk2(path: Path, columns: str = "packed") -> Path:
    lines = ["Timestamp(ms),Current(uA),D0-D7" if columns == "packed" else
             "Timestamp(ms),Current(uA),D0,D1,D2,D3,D4,D5,D6,D7"]
    for t in T:
        bits = f"{_marker(t)}0000000" if columns == "packed" else ",".join([str(_marker(t))] + ["0"] * 7)
        lines.append(f"{t * 1e3:.3f},{_current(t) * 1e6:.3f},{bits}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _joulescope(path: Path, voltage: float) -> Path:
    lines = ["#time,current,voltage,power,charge,energy,in0"]
    for t in T:
        i = _current(t)
        lines.append(f"{t:.6f},{i:.9g},{voltage},{i * voltage:.9g},0,0,{_marker(t)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _generic(path: Path, voltage: float | None) -> Path:
    head = "time,current" + (",voltage" if voltage else "") + ",marker"
    lines = ["# a comment line", head]
    for t in T:
        v = f",{voltage}" if voltage else ""
        lines.append(f"{t:.6f},{_current(t):.9g}{v},{_marker(t)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("columns", ["packed", "split"])
def test_ppk2_export_energy_per_phase(tmp_path, columns):
    trace = read_trace(_ppk2(tmp_path / "ppk.csv", columns), "ppk2")
    assert trace.voltage_v is None and len(trace.time_s) == len(T)
    assert set(trace.digital) == {f"D{k}" for k in range(8)}
    assert np.allclose(marker_windows(trace, "D0"), [A, B])
    got = phase_energies(trace, 2, channel="D0", voltage=3.0)
    assert got == pytest.approx(_expected(3.0), rel=1e-6)
    with pytest.raises(TraceError, match="--voltage"):
        phase_energies(trace, 2, channel="D0")


def test_joulescope_csv_uses_its_power_column(tmp_path):
    trace = read_trace(_joulescope(tmp_path / "js.csv", 1.8), "joulescope")
    assert trace.power_w is not None and "in0" in trace.digital
    assert phase_energies(trace, 2, channel="in0") == pytest.approx(_expected(1.8), rel=1e-6)


def test_joulescope_headerless_sample_export(tmp_path):
    path = tmp_path / "js.csv"
    path.write_text("".join(f"{t:.8f},{2e-3:.4e},{3.3:.4f}\n" for t in T))
    trace = read_trace(path, "joulescope")
    assert energy(trace, 0.25, 0.75) == pytest.approx(2e-3 * 3.3 * 0.5, rel=1e-9)


def test_generic_with_voltage_and_windows_file(tmp_path):
    trace = read_trace(_generic(tmp_path / "g.csv", 3.3), "generic")
    windows = tmp_path / "windows.csv"
    windows.write_text(f"start_s,end_s\n{A[0]},{A[1]}\n{B[0]},{B[1]}\n")
    got = phase_energies(trace, 2, windows=read_windows(windows))
    assert got == pytest.approx(_expected(3.3), rel=1e-6)
    assert phase_energies(trace, 2, channel="marker") == pytest.approx(got)


def test_window_edges_between_samples_are_interpolated(tmp_path):
    trace = read_trace(_generic(tmp_path / "g.csv", 2.0), "generic")
    # idle 1 mA at 2 V from 0.9005 s to 0.9505 s: 100 µJ exactly, although no sample sits on the edges
    assert energy(trace, 0.9005, 0.9505) == pytest.approx(1e-3 * 2.0 * 0.05, rel=1e-9)


def test_boot_validation_window_is_accepted_first(tmp_path):
    trace = read_trace(_generic(tmp_path / "g.csv", 3.3), "generic")
    assert len(phase_energies(trace, 1, channel="marker")) == 2       # validation + 1 bench phase
    with pytest.raises(TraceError, match="2 phase windows found, the bench ran 4 phases"):
        phase_energies(trace, 4, channel="marker")


@pytest.mark.parametrize("fmt,text,words", [
    ("ppk2", "Timestamp(ms),Current(uA)\n0.0,12.5\n0.01,abc\n", "line 3, column 'Current(uA)': 'abc' is not a number"),
    ("ppk2", "Time,Current\n0,1\n", "line 1: header 'Time,Current' is not a PPK2 export"),
    ("ppk2", "Timestamp(ms),Current(uA),D0-D7\n0.0,1.0,0000\n", "line 2, column 'D0-D7': '0000' is not 8 channel states"),
    ("ppk2", "Timestamp(ms),Current(uA),D0-D7\n0.0,1.0,0000000Z\n", "line 2, column 'D0-D7': 'Z' is not a digital state"),
    ("ppk2", "Timestamp(ms),Current(uA)\n0.0,1.0\n0.0,1.0\n", "line 3: time 0 s does not increase"),
    ("ppk2", "Timestamp(ms),Current(uA)\n0.0,1.0,7\n", "line 2: 3 fields, the header has 2"),
    ("ppk2", "", "empty file"),
    ("joulescope", "#time,current,voltage\n0,1e-3,3.3\n1,nan,3.3\n", "line 3, column 'current': 'nan' is not a finite number"),
    ("joulescope", "#time,amps\n0,1\n", "a Joulescope CSV starts with #time,current,voltage"),
    ("joulescope", "0,1e-3\n", "headerless Joulescope export has 3 columns"),
    ("generic", "t,i\n0,1\n", "a generic trace starts with time,current"),
    ("generic", "time,current,voltage\n0,1,3.3\n1,2,x\n", "line 3, column 'voltage': 'x' is not a number"),
    ("generic", "time,current\n", "no samples after the header"),
])
def test_malformed_files_name_line_and_column(tmp_path, fmt, text, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceError) as err:
        read_trace(path, fmt)
    assert words in str(err.value) and str(path) in str(err.value)


def test_alignment_errors(tmp_path):
    trace = read_trace(_generic(tmp_path / "g.csv", 3.3), "generic")
    with pytest.raises(TraceError, match="no digital channel 'D3'"):
        marker_windows(trace, "D3")
    with pytest.raises(TraceError, match="give the marker channel"):
        phase_energies(trace, 2)
    path = tmp_path / "open.csv"
    path.write_text("time,current,marker\n0,1,0\n1,1,1\n")
    with pytest.raises(TraceError, match="still high at the end"):
        marker_windows(read_trace(path, "generic"), "marker")
    bad = tmp_path / "w.csv"
    bad.write_text("0.5,0.2\n")
    with pytest.raises(TraceError, match="line 1: end 0.2 s is not after start 0.5 s"):
        read_windows(bad)
    with pytest.raises(TraceError, match="unknown trace format"):
        read_trace(path, "saleae")
