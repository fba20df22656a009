"""Fit a calibration file from a bench dataset: one core, one or more boards of that core."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from twin.platforms import get_platform

from . import store
from .cycles import FEATURES, coefficients_dict, memory_setup
from .dataset import DatasetError, dataset_hash, feature_matrix, measured, validate_dataset
from .energy import EnergyModelError, energy_features, power_model, prior_energy_coefficients
from .estimators import ConformalInterval, NonNegativeLinear, cross_validate_grouped, resolve_prior
from .store import ENERGY_FEATURES, Calibration, FittedModel


def _cv(model, X, y, groups, inner=None) -> dict:
    if len(np.unique(groups)) < 2:
        return {}
    r = cross_validate_grouped(model, X, y, groups, n_splits=10, inner_groups=inner)
    return {k: r[k] for k in ("mape_percent", "coverage", "mean_interval_width_percent", "n_folds")
            if k in r}


def calibrate(df: pd.DataFrame, *, alpha: float = 0.1, prior_strength: float = 1e-4,
              compiler: str | None = None, cflags: str | None = None, bench_date: str | None = None
              ) -> Calibration:
    """Fit cycles (and energy, when measured) for the one core of the dataset's boards."""
    df = validate_dataset(df)
    ok = measured(df, "cycles")
    if not ok.any():
        raise DatasetError("no row has measured cycles (all 0/NaN, e.g. QEMU runs): nothing to calibrate")
    df = df[ok].reset_index(drop=True)
    boards = tuple(sorted(df["board"].unique()))
    cores = {b: get_platform(b).core for b in boards}
    if len(set(cores.values())) != 1:
        raise DatasetError(f"the boards have different cores {cores}: fit one calibration per core")
    core = next(iter(cores.values()))
    prior_board = get_platform(boards[0])

    X = feature_matrix(df)
    y = df["cycles"].to_numpy(dtype=float)
    prior = resolve_prior(prior_board.id, len(FEATURES))
    model = ConformalInterval(NonNegativeLinear(prior=prior, prior_strength=prior_strength), alpha=alpha)
    cv = {"by_workload": _cv(model, X, y, df["workload"].to_numpy())}
    if len(boards) > 1:
        cv["by_board"] = _cv(model, X, y, df["board"].to_numpy(), df["workload"].to_numpy())
    model.fit(X, y, groups=df["workload"].to_numpy())
    cycles = FittedModel(coefficients_dict(model.estimator_.coef_), alpha, model.q_, cv)

    energy = None
    has_energy = measured(df, "energy_j").to_numpy()
    if has_energy.any() and len(df.loc[has_energy, "workload"].unique()) >= 2:
        seconds = y[has_energy] / df.loc[has_energy, "clock_hz"].to_numpy(dtype=float)
        Xe = energy_features(X[has_energy], seconds)
        ye = df.loc[has_energy, "energy_j"].to_numpy(dtype=float)
        egroups = df.loc[has_energy, "workload"].to_numpy()
        try:
            eprior = prior_energy_coefficients(model.estimator_.coef_, power_model(prior_board))
        except EnergyModelError:
            eprior = None
        emodel = ConformalInterval(NonNegativeLinear(prior=eprior, prior_strength=prior_strength if
                                                     eprior is not None else 0.0), alpha=alpha)
        ecv = {"by_workload": _cv(emodel, Xe, ye, egroups), "n_rows": int(has_energy.sum())}
        emodel.fit(Xe, ye, groups=egroups)
        energy = FittedModel({f: float(c) for f, c in zip(ENERGY_FEATURES, emodel.estimator_.coef_,
                                                          strict=True)}, alpha, emodel.q_, ecv)

    def column_or(name: str, given: str | None) -> str:
        if given is not None:
            return given
        if name in df.columns:
            return ";".join(sorted(df[name].dropna().astype(str).unique())) or "unknown"
        return "unknown"

    provenance = {
        "build_ids": sorted(df["build_id"].unique()),
        "compiler": column_or("compiler", compiler),
        "cflags": column_or("cflags", cflags),
        "boards": list(boards),
        "clocks_hz": sorted(int(c) for c in df["clock_hz"].unique()),
        "bench_date": column_or("bench_date", bench_date),
        "dataset_sha256": dataset_hash(df),
        "n_rows": len(df),
        "workloads": sorted(df["workload"].unique()),
        "prior": {"board": prior_board.id, "memory": list(memory_setup(prior_board).notes)},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    cal = Calibration(core=core, boards=boards, cycles=cycles, energy=energy, provenance=provenance)
    return Calibration(core=core, boards=boards, cycles=cycles, energy=energy, provenance=provenance,
                       id=cal.compute_id())


def fit_calibration(df: pd.DataFrame, out: Path | str, **kw) -> dict:
    """Fit and save a calibration file (the API `twin calibrate` calls); returns a summary."""
    cal = calibrate(df, **kw)
    store.save(cal, out)
    cv = cal.cycles.cv.get("by_workload", {})
    return {"id": cal.id, "core": cal.core, "boards": list(cal.boards), "path": str(out),
            "rows": cal.provenance["n_rows"], "cv_mape_percent": cv.get("mape_percent"),
            "cv_coverage": cv.get("coverage"), "energy": cal.energy is not None}
