"""Fit a calibration file from a bench dataset: one core, one or more boards of that core.

The cycle model is non-negative linear, optionally × (1 + a boosted residual on the class mix)
(``residual=True``, or ``"auto"`` to keep it only when it lowers the cross-validated error).  When
the residual is considered, both models are cross-validated on the same folds and the file's
``cycles.cv`` holds the two side by side (``candidates``) and which one was chosen (``model``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from twin.platforms import get_platform

from . import store
from .cycles import FEATURES, coefficients_dict, core_prior, intensities, memory_setup
from .dataset import (
    UNMEASURED_ROWS,
    DatasetError,
    dataset_hash,
    feature_matrix,
    measured,
    read_datasets,
    unmeasured,
    validate_dataset,
)
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
MAPE_WARN_PERCENT = 25.0      # a cross-validated cycle error above this is warned about
log = logging.getLogger("calibration")
RESIDUAL_CHOICES = {False: "off", True: "on", "off": "off", "on": "on", "auto": "auto"}
# The pull of the fitted costs toward the published ones. Measured on the RTL boards (six held-out models
# per board, benchmarks/rtl_calibration.py): at 1e-4 a bench at one wait-state setting traded instruction
# costs for fetch stalls (Ibex at 2 wait states predicted the 0-wait board 28 % high); at 1.0 every board,
# every transfer between wait states but one and each joint fit stayed within about 3 %.
PRIOR_STRENGTH = 1.0
ENERGY_PRIOR_STRENGTH = 1e-4   # energy: a weak pull (no truth here to set it by)


def _cv(model, X, y, groups, inner=None) -> dict:
    if len(np.unique(groups)) < 2:
        return {}
    r = cross_validate_grouped(model, X, y, groups, n_splits=10, inner_groups=inner)
    out = {k: r[k] for k in ("mape_percent", "coverage", "mean_interval_width_percent", "n_folds")
           if k in r}
    width = out.get("mean_interval_width_percent")
    if width is not None and not math.isfinite(width):   # folds too small for a bounded interval
        out["coverage"] = out["mean_interval_width_percent"] = None
        out["note"] = "intervals unbounded in some folds (too few rows per fold): coverage not measured"
    return out


def _refuse_infinite(df: pd.DataFrame) -> None:
    """An infinite count or target (``inf`` in a CSV) names its column and row instead of failing deep
    in the solver ("SVD did not converge")."""
    for col in df.columns:
        if pd.api.types.is_float_dtype(df[col]):
            bad = np.isinf(df[col].to_numpy())
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DatasetError(f"column '{col}' row {i}: {df[col].iloc[i]!r} is not a finite number "
                                   "(every count, clock and measurement must be finite)")


def representative_rows(df: pd.DataFrame) -> np.ndarray:
    """Rows like the phases a calibration predicts: the LLM kernels of the suite (matvecs, norms,
    softmax, attention, ...) and model phases — not the microbenchmarks, whose errors (a chain of
    taken branches, a divide loop) say little about a decoded token's."""
    from twin.bench.workloads import BY_NAME, KERNEL

    def like(label: str) -> bool:
        if label.startswith("model:"):
            return True
        w = BY_NAME.get(label.split("@")[0])
        return w is not None and w.family == KERNEL

    return np.array([like(str(w)) for w in df["workload"]], dtype=bool)


def _finite_interval(fitted, unfitted, X, y, groups, alpha: float, cv: dict, what: str = "cycle",
                     representative: np.ndarray | None = None) -> float:
    """A finite relative half-width for the file, with its basis recorded in ``cv["interval"]``:

    0. with ``representative`` rows (kernels and model phases, :func:`representative_rows`) enough for
       the (1 - alpha) quantile: that quantile of their out-of-fold relative errors (leave workloads
       out): the interval is sized by rows like the phases it will be applied to;
    1. the fitted split-conformal ``q_`` when its hold-out is large enough for the (1 - alpha) quantile;
    2. else (q = inf: fewer than (1 - alpha)/alpha held-out rows, e.g. one 13-workload bench) the same
       quantile of the out-of-fold relative errors of all rows (leave workloads out, jackknife+ style:
       coverage >= 1 - 2·alpha guaranteed instead of 1 - alpha);
    3. else (fewer rows than that quantile needs) the largest out-of-fold error, with a note that no
       coverage is guaranteed (``quality_warnings`` says so; predictions cite it).
    JSON has no Infinity, and an infinite interval would predict "1e+30 tok/s"."""
    need = math.ceil((1 - alpha) / alpha)
    if representative is not None and int(representative.sum()) >= need and len(np.unique(groups)) >= 2:
        r = cross_validate_grouped(unfitted, X, y, groups, n_splits=10)
        p = r["predictions"]
        scores = np.abs(y - p) / np.maximum(p * r["scales"], 1e-12)
        scores = np.sort(scores[representative & np.isfinite(scores)])
        k = math.ceil((len(scores) + 1) * (1 - alpha))
        if k <= len(scores):
            cv["interval"] = {"basis": "cross-validated, kernel and model rows", "n_scores": int(len(scores))}
            return float(scores[k - 1])
    q = float(fitted.q_)
    n_cal = int(getattr(fitted, "n_calibration_", 0))
    if math.isfinite(q):
        cv["interval"] = {"basis": "split-conformal", "n_scores": n_cal}
        return q
    r = cross_validate_grouped(unfitted, X, y, groups, n_splits=10)
    p = r["predictions"]
    scores = np.sort(np.abs(y - p) / np.maximum(p * r["scales"], 1e-12))
    scores = scores[np.isfinite(scores)]
    if not len(scores):
        raise DatasetError(f"no finite out-of-fold {what} error from {len(y)} rows: cannot size an interval")
    k = math.ceil((len(scores) + 1) * (1 - alpha))
    if k <= len(scores):
        cv["interval"] = {"basis": "cross-validated", "n_scores": int(len(scores)),
                          "note": f"the split-conformal hold-out had {n_cal} rows, fewer than the {need} a "
                                  f"{1 - alpha:.0%} bound needs: the interval is that quantile of the "
                                  f"out-of-fold errors of all {len(scores)} rows (coverage >= "
                                  f"{1 - 2 * alpha:.0%} guaranteed)"}
        return float(scores[k - 1])
    cv["interval"] = {"basis": "largest out-of-fold error", "n_scores": int(len(scores)),
                      "note": f"only {len(y)} rows: a {1 - alpha:.0%} interval needs at least {need}, so the "
                              f"interval is the largest out-of-fold error ({scores[-1]:.3g}) with NO coverage "
                              "guarantee"}
    return float(scores[-1])


def quality_warnings(df: pd.DataFrame, cal: Calibration) -> list[str]:
    """What makes a fitted calibration weak, one sentence each (empty when nothing does)."""
    out = []
    cycles = pd.to_numeric(df["cycles"], errors="coerce")
    cycles = cycles[cycles > 0]
    if len(cycles) > 1 and cycles.nunique() == 1:
        out.append(f"every measured row has the same cycle count ({cycles.iloc[0]:.0f}) although the workloads "
                   "differ: the cycle counter probably did not run or was read wrong; check the bench")
    err = (cal.cycles.cv.get("by_workload") or {}).get("mape_percent")
    if err is not None and err > MAPE_WARN_PERCENT:
        out.append(f"the cross-validated cycle error is {err:.0f}% (by workload; above {MAPE_WARN_PERCENT}%): "
                   "the model does not explain these measurements, so predictions from this file are not "
                   "trustworthy")
    note = (cal.cycles.cv.get("interval") or {}).get("note")
    if note:
        out.append(f"cycle interval: {note}; measure more workloads (`twin bench` runs 13) for the full "
                   "guarantee")
    if cal.cycles.cv.get("energy_not_fitted"):
        out.append(f"no energy model in the file: {cal.cycles.cv['energy_not_fitted']}")
    return out


def _linear_part(est) -> NonNegativeLinear:
    return est.base_ if isinstance(est, ResidualBoosted) else est


def calibrate(df: pd.DataFrame, *, alpha: float = 0.1, prior_strength: float = PRIOR_STRENGTH,
              residual: bool | str = False, residual_model=None,
              compiler: str | None = None, cflags: str | None = None, bench_date: str | None = None,
              min_cost: float | None = None, return_model: bool = False):
    """Fit cycles (and energy, when measured) for the one core of the dataset's boards.

    ``residual``: False/"off" linear only; True/"on" linear × (1 + boosted residual), with the CV of
    both stored; "auto" the one with the lower cross-validated error (by workload).
    ``residual_model``: the (unfitted) regressor of the correction, default ResidualBoosted's
    GradientBoostingRegressor, the only kind a calibration file can hold (others are refused,
    naming their type).  ``min_cost``: the least cycles per instruction of any class (None: 1 / the
    core's issue width from calibration/cores.yaml, 0 where it gives none).
    ``prior_strength``: the ridge pull of the costs toward the prior (NonNegativeLinear; PRIOR_STRENGTH).
    ``return_model=True`` returns ``(calibration, fitted ConformalInterval)``."""
    if not isinstance(residual, (bool, str)) or residual not in RESIDUAL_CHOICES:
        raise ValueError(f"residual must be one of off, on, auto (or a bool), got {residual!r}")
    choice = RESIDUAL_CHOICES[residual]
    if choice != "off" and residual_model is not None:
        store.check_residual_type(residual_model)
    df = validate_dataset(df)
    _refuse_infinite(df)
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
    if min_cost is None:      # the pipeline's bound: without it a bench at one wait-state setting can
        width = core_prior(core).issue_width     # trade instruction costs for fetch stalls freely
        min_cost = 1.0 / width.value if width and width.value else 0.0
    if not prior_strength >= 0:
        raise ValueError(f"prior_strength must be a number >= 0, got {prior_strength!r}")
    linear = NonNegativeLinear(prior=prior, prior_strength=prior_strength, min_cost=min_cost)
    candidates = {LINEAR: ConformalInterval(linear, alpha=alpha, scaled=True)}
    if choice != "off":
        candidates[WITH_RESIDUAL] = ConformalInterval(ResidualBoosted(base=linear, residual=residual_model),
                                                      alpha=alpha, scaled=True)
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
    cv = {**cvs[chosen], "model": chosen, "prior_strength": prior_strength, "min_cost": min_cost}
    if len(candidates) > 1:
        cv["candidates"] = cvs
        cv["choice"] = why
    model = candidates[chosen]
    model.fit(X, y, groups=df["workload"].to_numpy())
    q = _finite_interval(model, candidates[chosen], X, y, df["workload"].to_numpy(), alpha, cv,
                         representative=representative_rows(df))
    block = store.residual_block(model.estimator_.residual_) if chosen == WITH_RESIDUAL else None
    linear_fit = _linear_part(model.estimator_)
    coef = store.clamp_coef(coefficients_dict(linear_fit.coef_))
    support = intensities(X).max(axis=0)
    extrap = {"band": model.extrapolation_band, "support": {f: float(v) for f, v in zip(FEATURES, support, strict=True)}}
    cycles = FittedModel(coef, alpha, q, cv, residual=block, extrapolation=extrap, q_scale="core")

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
        emodel = ConformalInterval(NonNegativeLinear(prior=eprior, prior_strength=ENERGY_PRIOR_STRENGTH if
                                                     eprior is not None else 0.0), alpha=alpha)
        ecv = {"by_workload": _cv(emodel, Xe, ye, egroups), "n_rows": int(has_energy.sum())}
        emodel.fit(Xe, ye, groups=egroups)
        try:
            eq = _finite_interval(emodel, emodel, Xe, ye, egroups, alpha, ecv, what="energy")
        except DatasetError as exc:        # the cycles can still be calibrated: no energy model, said so
            cycles.cv["energy_not_fitted"] = str(exc)
        else:
            energy = FittedModel(store.clamp_coef({f: float(c) for f, c in
                                                   zip(ENERGY_FEATURES, emodel.estimator_.coef_, strict=True)}),
                                 alpha, eq, ecv)

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
    """Fit and save a calibration file (the API `twin calibrate` calls); returns a summary whose
    ``warnings`` (also logged to the ``calibration`` logger, i.e. stderr by default) say what makes the
    file weak: an interval from few rows, a large cross-validated error, constant cycle counts."""
    from twin.atomic import OutputPathError, check_output_path

    try:
        check_output_path(out, "calibration file")    # before fitting: a bad -o is one line
    except OutputPathError as exc:
        raise DatasetError(str(exc)) from None
    cal = calibrate(df, **kw)
    try:
        store.save(cal, out)
    except OSError as exc:
        raise DatasetError(f"cannot write {out}: {exc.strerror or exc}; the previous file, if any, is "
                           "unchanged") from None
    cv = cal.cycles.cv.get("by_workload", {})
    warnings = quality_warnings(df, cal)
    for w in warnings:
        log.warning("warning: %s", w)
    summary = {"id": cal.id, "core": cal.core, "boards": list(cal.boards), "path": str(out),
               "rows": cal.provenance["n_rows"], "cv_mape_percent": cv.get("mape_percent"),
               "cv_coverage": cv.get("coverage"), "energy": cal.energy is not None,
               "model": cal.model_kind, "residual": cal.has_residual, "warnings": warnings}
    if "candidates" in cal.cycles.cv:   # both cross-validated: side by side, per hold-out kind
        summary["cv_candidates"] = {
            kind: {split: {k: r.get(k) for k in ("mape_percent", "coverage", "mean_interval_width_percent")}
                   for split, r in c.items()}
            for kind, c in cal.cycles.cv["candidates"].items()}
        summary["choice"] = cal.cycles.cv.get("choice")
    return summary


def calibrate_files(paths: list[Path | str], out: Path | str, *, skip_unmeasured: bool = False, **fit_kw) -> dict:
    """`twin calibrate`: load bench datasets, refuse rows without measured cycles (or drop them with
    ``skip_unmeasured``), fit and write the calibration file; ``fit_kw`` e.g. ``residual="on"``."""
    df = read_datasets(list(paths))
    bad = unmeasured(df)
    n = int(bad.sum())
    if n:
        if not skip_unmeasured or n == len(df):
            raise DatasetError(UNMEASURED_ROWS.format(n=n))
        df = df[~bad].reset_index(drop=True)
    result = fit_calibration(df, Path(out), **fit_kw)
    return {"rows": len(df), "skipped": n, "out": str(out), "result": result}
