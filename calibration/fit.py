"""Fit a calibration file from a bench dataset: one core, one or more boards of that core.

The cycle model is non-negative linear, optionally × (1 + a boosted residual on the class mix)
(``residual=True``, or ``"auto"`` to keep it only when it lowers the cross-validated error).  When
the residual is considered, both models are cross-validated on the same folds and the file's
``cycles.cv`` holds the two side by side (``candidates``) and which one was chosen (``model``).
"""

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
from .estimators import (
    ConformalInterval,
    NonNegativeLinear,
    ResidualBoosted,
    cross_validate_grouped,
    resolve_prior,
)
from .store import ENERGY_FEATURES, Calibration, FittedModel

LINEAR, WITH_RESIDUAL = "linear", "linear+residual"
RESIDUAL_CHOICES = {False: "off", True: "on", "off": "off", "on": "on", "auto": "auto"}


def _cv(model, X, y, groups, inner=None) -> dict:
    if len(np.unique(groups)) < 2:
        return {}
    r = cross_validate_grouped(model, X, y, groups, n_splits=10, inner_groups=inner)
    return {k: r[k] for k in ("mape_percent", "coverage", "mean_interval_width_percent", "n_folds")
            if k in r}


def _linear_part(est) -> NonNegativeLinear:
    return est.base_ if isinstance(est, ResidualBoosted) else est


def calibrate(df: pd.DataFrame, *, alpha: float = 0.1, prior_strength: float = 1e-4,
              residual: bool | str = False, residual_model=None,
              compiler: str | None = None, cflags: str | None = None, bench_date: str | None = None,
              return_model: bool = False):
    """Fit cycles (and energy, when measured) for the one core of the dataset's boards.

    ``residual``: False/"off" linear only; True/"on" linear × (1 + boosted residual), with the CV of
    both stored; "auto" the one with the lower cross-validated error (by workload).
    ``residual_model``: the (unfitted) regressor of the correction, default ResidualBoosted's
    GradientBoostingRegressor, the only kind a calibration file can hold (others are refused,
    naming their type).  ``return_model=True`` returns ``(calibration, fitted ConformalInterval)``."""
    if not isinstance(residual, (bool, str)) or residual not in RESIDUAL_CHOICES:
        raise ValueError(f"residual must be one of off, on, auto (or a bool), got {residual!r}")
    choice = RESIDUAL_CHOICES[residual]
    if choice != "off" and residual_model is not None:
        store.check_residual_type(residual_model)
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
    linear = NonNegativeLinear(prior=prior, prior_strength=prior_strength)
    candidates = {LINEAR: ConformalInterval(linear, alpha=alpha)}
    if choice != "off":
        candidates[WITH_RESIDUAL] = ConformalInterval(ResidualBoosted(base=linear, residual=residual_model),
                                                      alpha=alpha)
    cvs = {}
    for kind, candidate in candidates.items():
        cvs[kind] = {"by_workload": _cv(candidate, X, y, df["workload"].to_numpy())}
        if len(boards) > 1:
            cvs[kind]["by_board"] = _cv(candidate, X, y, df["board"].to_numpy(), df["workload"].to_numpy())
    if choice == "off":
        chosen, why = LINEAR, "linear only (no residual requested)"
    elif choice == "on":
        chosen, why = WITH_RESIDUAL, "residual requested"
    else:
        err = {k: v["by_workload"].get("mape_percent", float("inf")) for k, v in cvs.items()}
        chosen = WITH_RESIDUAL if err[WITH_RESIDUAL] < err[LINEAR] else LINEAR
        why = "auto: the lower cross-validated error by workload"
    cv = {**cvs[chosen], "model": chosen}
    if len(candidates) > 1:
        cv["candidates"] = cvs
        cv["choice"] = why
    model = candidates[chosen]
    model.fit(X, y, groups=df["workload"].to_numpy())
    block = store.residual_block(model.estimator_.residual_) if chosen == WITH_RESIDUAL else None
    linear_fit = _linear_part(model.estimator_)
    cycles = FittedModel(coefficients_dict(linear_fit.coef_), alpha, model.q_, cv, residual=block)

    energy = None
    has_energy = measured(df, "energy_j").to_numpy()
    if has_energy.any() and len(df.loc[has_energy, "workload"].unique()) >= 2:
        seconds = y[has_energy] / df.loc[has_energy, "clock_hz"].to_numpy(dtype=float)
        Xe = energy_features(X[has_energy], seconds)
        ye = df.loc[has_energy, "energy_j"].to_numpy(dtype=float)
        egroups = df.loc[has_energy, "workload"].to_numpy()
        try:
            eprior = prior_energy_coefficients(linear_fit.coef_, power_model(prior_board))
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
    cal = Calibration(core=core, boards=boards, cycles=cycles, energy=energy, provenance=provenance,
                      id=cal.compute_id())
    return (cal, model) if return_model else cal


def fit_calibration(df: pd.DataFrame, out: Path | str, **kw) -> dict:
    """Fit and save a calibration file (the API `twin calibrate` calls); returns a summary."""
    cal = calibrate(df, **kw)
    store.save(cal, out)
    cv = cal.cycles.cv.get("by_workload", {})
    summary = {"id": cal.id, "core": cal.core, "boards": list(cal.boards), "path": str(out),
               "rows": cal.provenance["n_rows"], "cv_mape_percent": cv.get("mape_percent"),
               "cv_coverage": cv.get("coverage"), "energy": cal.energy is not None,
               "model": cal.model_kind, "residual": cal.has_residual}
    if "candidates" in cal.cycles.cv:   # both cross-validated: side by side, per hold-out kind
        summary["cv_candidates"] = {
            kind: {split: {k: r.get(k) for k in ("mape_percent", "coverage", "mean_interval_width_percent")}
                   for split, r in c.items()}
            for kind, c in cal.cycles.cv["candidates"].items()}
        summary["choice"] = cal.cycles.cv.get("choice")
    return summary
