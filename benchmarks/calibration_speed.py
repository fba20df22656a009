"""Calibration speed: fit and predict on a 10,000-row bench dataset; `twin compare` over the whole
catalog (wall time, cold and warm counts cache).

    .venv/bin/python benchmarks/calibration_speed.py [--model builtin|PATH] [--tokens 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from calibration import predict as P
from calibration.estimators import (
    CycleFeatures,
    cross_validate_grouped,
    make_cycle_model,
    mape,
    predict_interval,
)
from calibration.fit import calibrate
from calibration.synthetic import bench_dataset, default_hidden
from twin.platforms import all_platforms


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def dataset_10k():
    # 3 boards x 7 clocks in total x 250 workloads x 2 phases = 10,500 rows
    boards = {"stm32f4-disco": [30_000_000, 60_000_000, 120_000_000, 168_000_000],
              "nucleo-l4r5zi": [80_000_000, 120_000_000], "nrf52840-dk": [64_000_000]}
    return bench_dataset(default_hidden(), boards=boards, n_workloads=715, seed=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--skip-compare", action="store_true")
    args = ap.parse_args()

    df, t_gen = timed(dataset_10k)
    print(f"dataset: {len(df):,} rows ({t_gen:.2f} s to generate)")
    X, t_feat = timed(CycleFeatures().fit_transform, df)
    print(f"features (catalog wait states, derived columns): {t_feat * 1e3:.0f} ms")
    model = make_cycle_model("stm32f4-disco")
    _, t_fit = timed(model.fit, df, df["cycles"], model__groups=df["workload"])
    (pred, lo, hi), t_pred = timed(predict_interval, model, df)
    print(f"fit (features + conformal non-negative linear): {t_fit * 1e3:.0f} ms")
    print(f"predict with intervals, {len(df):,} rows: {t_pred * 1e3:.0f} ms "
          f"({t_pred / len(df) * 1e6:.1f} us/row); in-sample MAPE {mape(df['cycles'], pred):.2f}%")
    est = model.steps[-1][1]
    y = df["cycles"].to_numpy()
    _, t_core = timed(est.fit, X, y, groups=df["workload"].to_numpy())
    _, t_core_pred = timed(est.predict, X)
    print(f"estimator alone on the feature matrix: fit {t_core * 1e3:.1f} ms, predict {t_core_pred * 1e3:.2f} ms")
    cv, t_cv = timed(cross_validate_grouped, est, X, y, df["workload"].to_numpy(), n_splits=5)
    print(f"5-fold hold-out-workload CV: {t_cv:.2f} s, MAPE {cv['mape_percent']:.2f}%, "
          f"90% interval coverage {cv['coverage']:.3f}")
    cal, t_cal = timed(calibrate, df)
    print(f"calibrate() incl. CV by workload and by board + energy: {t_cal:.2f} s -> {cal.id}")

    if args.skip_compare:
        return
    ids = list(all_platforms())
    with tempfile.TemporaryDirectory() as tmp:
        P._counts_cache_dir = lambda: Path(tmp)       # cold: an empty counts cache (firmware builds stay cached)
        P._MEMO.clear()
        for label in ("cold (empty counts cache: one emulator run per proxy)", "warm (counts cached)"):
            runs0 = P.STATS["runs"]
            results, t_cmp = timed(P.compare, ids, model=args.model, tokens=args.tokens)
            P.chart(results, Path(tmp) / "compare.png")
            print(f"twin compare over {len(ids)} boards, {label}: {t_cmp:.2f} s, "
                  f"{P.STATS['runs'] - runs0} emulator runs")
    tps = {r["platform"]: r["tokens_per_second"]["value"] for r in results}
    best = max(tps, key=tps.get)
    print(f"fastest predicted: {best} {tps[best]:.1f} tok/s; median {np.median(list(tps.values())):.1f} tok/s")


if __name__ == "__main__":
    main()
