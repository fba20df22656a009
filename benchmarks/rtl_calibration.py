"""Calibration against a timing truth nobody on this project wrote: the RTL boards.

For each RTL board: bench the workload suite (`twin bench --port rtl`), calibrate on it, then bench
held-out models the calibration never saw (other shapes, bit widths, KV cache, prompt lengths) and
compare the measured per-token decode and prefill cycles with (a) the published-timing prior and
(b) the calibrated prediction from the twin's counts, with the calibrated interval and whether the
measurement fell inside it. Printed, not asserted (tests/device/test_rtl.py asserts the CI-sized version).

    .venv/bin/python benchmarks/rtl_calibration.py [--boards rtl-ibex,rtl-cv32e40p] [--scale 0.5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calibration import store  # noqa: E402
from calibration.cycles import prior_coefficients  # noqa: E402
from calibration.dataset import feature_matrix, read_datasets  # noqa: E402
from calibration.fit import fit_calibration  # noqa: E402
from twin.bench.workflow import BenchSpec, bench, write_dataset  # noqa: E402
from twin.bench.workloads import default_suite  # noqa: E402
from twin.device.build import build_firmware  # noqa: E402
from twin.device.rtl import RtlProcess  # noqa: E402
from twin.model import modelgen  # noqa: E402
from twin.model.image import write_image  # noqa: E402
from twin.platforms import get_platform  # noqa: E402
from twin.profile import fetch_path  # noqa: E402
from twin.runner import backend_session  # noqa: E402

BOARDS = ("rtl-ibex", "rtl-ibex-ws2", "rtl-cv32e40p", "rtl-cv32e40p-ws3")


@dataclass(frozen=True)
class HeldOut:
    name: str
    config: modelgen.ModelConfig
    bits: int = 4
    kv_cache: str = "f32"
    prompt_tokens: int = 4
    tokens: int = 3
    symmetric: bool = True


def held_out_models() -> list[HeldOut]:
    c = modelgen.ModelConfig
    return [
        HeldOut("d32 L2 q4", c(dim=32, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256,
                               seq_len=32, name="h-d32q4")),
        HeldOut("d48 L2 q8", c(dim=48, hidden_dim=128, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=256,
                               seq_len=32, name="h-d48q8"), bits=8),
        HeldOut("d32 L2 q4 kv8", c(dim=32, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256,
                                   seq_len=32, name="h-kv8"), kv_cache="int8"),
        HeldOut("d64 L1 q4 p12", c(dim=64, hidden_dim=172, n_layers=1, n_heads=8, n_kv_heads=4, vocab_size=256,
                                   seq_len=32, name="h-p12"), prompt_tokens=12),
        HeldOut("d32 L2 q2", c(dim=32, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256,
                               seq_len=32, name="h-d32q2"), bits=2),
        HeldOut("d32 L2 q3 asym", c(dim=32, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256,
                                    seq_len=32, name="h-q3a"), bits=3, symmetric=False),
    ]


def _rows(result) -> pd.DataFrame:
    """The dataset as `twin calibrate` reads it: through the CSV file."""
    with tempfile.TemporaryDirectory() as t:
        write_dataset(result.rows, Path(t) / "bench.csv")
        return read_datasets([Path(t) / "bench.csv"])


def measure_model(board: str, m: HeldOut, tmp: Path) -> pd.DataFrame:
    path = tmp / f"{m.config.name}.twlm"
    path.write_bytes(write_image(modelgen.generate_model(m.config, seed=1), bits=m.bits, symmetric=m.symmetric,
                                 kv_cache=m.kv_cache))
    r = bench(BenchSpec(platform=board, port="rtl", model=str(path), tokens=m.tokens,
                        prompt_tokens=m.prompt_tokens, suite=[]))
    return _rows(r)


def pct(pred: float, true: float) -> float:
    return 100.0 * (pred - true) / true


def harness_speed(board: str, iterations: int = 4_000_000) -> dict:
    """Simulated cycles per second of the board's harness, on the self-test loop (5 cycles/iteration)."""
    plat = get_platform(board)
    sim = RtlProcess(plat, build_firmware(plat).elf, None, timeout=600)
    with backend_session(sim, reply_timeout=600) as s:
        s.device.selftest(iterations)
    return sim.stats() or {}


def phase_errors(cal, df: pd.DataFrame, prior: np.ndarray | None = None) -> list[tuple]:
    """(phase, measured, prior %, calibrated %, low %, high %, inside) for prefill and decode."""
    X = feature_matrix(df)
    y = df["cycles"].to_numpy(float)
    simulated = "wait_cycles" in df and df["wait_cycles"].notna().all()   # the twin's fetch-path model's
    p_cal, lo, hi = cal.cycles.predict_interval(X, fetch_band=fetch_path.UNCERTAINTY if simulated else None)
    out = []
    for phase in ("prefill", "decode"):
        k = df["phase"].str.startswith(phase).to_numpy()
        true = y[k].mean()
        pp = pct((X[k] @ prior).mean(), true) if prior is not None else float("nan")
        inside = bool(np.all((y[k] >= lo[k]) & (y[k] <= hi[k])))
        out.append((phase, true, pp, pct(p_cal[k].mean(), true), pct(lo[k].mean(), true),
                    pct(hi[k].mean(), true), inside))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", default=",".join(BOARDS))
    ap.add_argument("--scale", type=float, default=1.0, help="workload iterations × this")
    args = ap.parse_args()
    lines = []
    cals: dict = {}
    suites: dict = {}
    measured_here: dict = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for board in args.boards.split(","):
            plat = get_platform(board)
            t0 = time.perf_counter()
            train = _rows(bench(BenchSpec(platform=board, port="rtl", model=None, suite=default_suite(args.scale))))
            bench_s = time.perf_counter() - t0
            out = tmp / f"{board}.calib.json"
            summary = fit_calibration(train, out)
            cal = store.load(out)
            prior = prior_coefficients(plat.core)
            print(f"\n{board} ({plat.rtl.core}, {plat.rtl.flash_wait_states} ws): suite bench {bench_s:.1f} s, "
                  f"{len(train)} rows, CV {summary['cv_mape_percent']:.2f}%", flush=True)
            speed = harness_speed(board)
            print(f"  harness: {speed.get('cycles_per_second', 0) / 1e6:.2f} M simulated cycles/s; interval "
                  f"±{100 * cal.cycles.q:.1f}% of the core's cycles, ±{100 * cal.cycles.q * cal.cycles.scale(feature_matrix(train)).mean():.1f}% "
                  f"of the suite rows' ({cal.cycles.cv.get('interval', {}).get('basis')})", flush=True)
            print(f"  {'held-out model':<16}{'phase':<9}{'measured':>12}{'prior':>9}{'calibrated':>11}"
                  f"{'interval':>18}  inside")
            measured_here[board] = []
            for m in held_out_models():
                df = measure_model(board, m, tmp)
                measured_here[board].append((m, df))
                for phase, true, pp, pc, lo, hi, inside in phase_errors(cal, df, prior):
                    lines.append((board, m.name, phase, true, pp, pc, lo, hi, inside))
                    print(f"  {m.name:<16}{phase:<9}{true:>12,.0f}{pp:>+8.1f}%{pc:>+10.2f}%"
                          f"   [{lo:+6.1f}%, {hi:+6.1f}%]  {'yes' if inside else 'NO'}", flush=True)
            cals[board] = cal
            suites[board] = train
        # held-out boards: a calibration of one board, asked for another board of the same core
        cross = []
        for a, cal in cals.items():
            for b, runs in measured_here.items():
                if a == b or get_platform(a).core != get_platform(b).core:
                    continue
                for m, df in runs:
                    for phase, _true, _pp, pc, lo, hi, inside in phase_errors(cal, df):
                        cross.append((a, b, m.name, phase, pc, inside, (hi - lo) / 2))
        # one calibration over the boards of a core (their wait states differ: the memory term is identified)
        for core in sorted({get_platform(b).core for b in suites}):
            boards = [b for b in suites if get_platform(b).core == core]
            if len(boards) < 2:
                continue
            out = tmp / f"{core}-joint.calib.json"
            fit_calibration(pd.concat([suites[b] for b in boards], ignore_index=True), out)
            joint = store.load(out)
            rows = [r for b in boards for m, df in measured_here[b] for r in phase_errors(joint, df)]
            err = np.abs([r[3] for r in rows])
            print(f"\none calibration over {', '.join(boards)} (±{100 * joint.cycles.q:.1f}%): held-out models on "
                  f"each: |error| mean {err.mean():.2f}% worst {err.max():.2f}%, inside the interval "
                  f"{np.mean([r[6] for r in rows]):.2f}")
        if cross:
            print("\nheld-out boards (calibrated on one board, predicting another of the same core):")
            for a, b in sorted({(r[0], r[1]) for r in cross}):
                rows = [r for r in cross if r[0] == a and r[1] == b]
                err = np.abs([r[4] for r in rows])
                print(f"  {a} -> {b}: |error| mean {err.mean():.2f}% worst {err.max():.2f}%, inside the "
                      f"interval {np.mean([r[5] for r in rows]):.2f} (its half-width ±{np.mean([r[6] for r in rows]):.1f}%: "
                      f"±{100 * cals[a].cycles.q:.1f}% of the core's cycles, wider where the terms pass the "
                      "calibrated support)")
    if lines:
        cal_err = np.abs([r[5] for r in lines])
        prior_err = np.abs([r[4] for r in lines])
        cover = np.mean([r[8] for r in lines])
        print(f"\nall boards × held-out models × phases ({len(lines)}): calibrated |error| mean {cal_err.mean():.2f}% "
              f"worst {cal_err.max():.2f}%; prior mean {prior_err.mean():.1f}% worst {prior_err.max():.1f}%; "
              f"measured inside the interval: {cover:.2f} (nominal 0.90)")


if __name__ == "__main__":
    main()
