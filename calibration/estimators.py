"""Calibration estimators, scikit-learn style: ``fit`` learns and returns ``self``, ``__init__`` only
stores hyper-parameters, learned attributes end in ``_``.  They compose in ``Pipeline``,
``cross_val_score`` and ``GridSearchCV``::

    model = make_cycle_model("stm32f4-disco")          # features -> conformal(non-negative linear)
    model.fit(df, df["cycles"], model__groups=df["workload"])
    pred, low, high = predict_interval(model, df)

- ``CycleFeatures``: a bench DataFrame (docs/calibration.md) -> the cycle model's FEATURES.
- ``NonNegativeLinear``: cycles = X · coef with coef >= 0 (per-class costs cannot be negative),
  least squares on *relative* error, optionally pulled toward a prior (published timings).
- ``ResidualBoosted``: a base model times (1 + a gradient-boosted correction on the class mix); a
  calibration file stores its trees as plain arrays (calibration/residual.py).
- ``ConformalInterval``: split-conformal prediction intervals on relative residuals.
- ``cross_validate_grouped``: hold out whole workloads or whole boards; MAPE and interval coverage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy.optimize import lsq_linear
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, LeaveOneGroupOut, ShuffleSplit
from sklearn.pipeline import Pipeline

from twin.platforms import PlatformError, get_platform

from .cycles import CLASS_FEATURES, FEATURES, core_share, extrapolation, intensities, prior_coefficients
from .dataset import feature_matrix
from .residual import mix_inputs as _mix

UNMEASURED_MESSAGE = ("{n} of {total} rows have no measured target (0 or NaN: e.g. QEMU runs, whose "
                      "cycle counters read 0); drop them (calibration.dataset.measured) or measure them "
                      "on the board")


def mape(y_true, y_pred) -> float:
    """Mean absolute percentage error, in percent."""
    y, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    return float(np.mean(np.abs(p - y) / np.abs(y)) * 100.0)


def _check_target(y) -> np.ndarray:
    y = np.asarray(y, dtype=float).ravel()
    bad = ~np.isfinite(y) | (y <= 0)
    if bad.any():
        raise ValueError(UNMEASURED_MESSAGE.format(n=int(bad.sum()), total=len(y)))
    return y


def _as_matrix(X) -> np.ndarray:
    if isinstance(X, pd.DataFrame):
        if all(f in X.columns for f in FEATURES):
            return X[list(FEATURES)].to_numpy(dtype=float)
        raise ValueError("a DataFrame given to a cycle regressor must hold the FEATURES columns; put "
                         "CycleFeatures() before it in a Pipeline to derive them from a bench dataset")
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D feature matrix, got shape {X.shape}")
    return X


def resolve_prior(prior, n_features: int) -> np.ndarray | None:
    """A prior given as None, a vector, a {feature: cost} dict, a platform id or a core name."""
    if prior is None:
        return None
    if isinstance(prior, str):
        try:
            p = get_platform(prior)
            vec = prior_coefficients(p.core)
        except PlatformError:
            vec = prior_coefficients(prior)
    elif isinstance(prior, Mapping):
        missing = [f for f in FEATURES if f not in prior]
        if missing:
            raise ValueError(f"prior dict misses features {missing}")
        vec = np.array([float(prior[f]) for f in FEATURES])
    else:
        vec = np.asarray(prior, dtype=float).ravel()
    if len(vec) != n_features:
        raise ValueError(f"prior has {len(vec)} coefficients for {n_features} features")
    if (vec < 0).any():
        raise ValueError("prior coefficients must be >= 0")
    return vec


class CycleFeatures(TransformerMixin, BaseEstimator):
    """Bench DataFrame -> FEATURES matrix (class counts, taken branches, wait-state terms).

    ``taken_fraction`` / ``flash_load_fraction`` fill ``branches_taken`` / ``loads_flash`` where the
    dataset lacks them (None: the assumptions of calibration/cores.yaml).  A matrix that already has
    ``len(FEATURES)`` columns passes through unchanged."""

    def __init__(self, taken_fraction: float | None = None, flash_load_fraction: float | None = None):
        self.taken_fraction = taken_fraction
        self.flash_load_fraction = flash_load_fraction

    def fit(self, X, y=None):
        self.n_features_out_ = len(FEATURES)
        return self

    def transform(self, X) -> np.ndarray:
        if isinstance(X, pd.DataFrame):
            if all(c in X.columns for c in CLASS_FEATURES):
                return feature_matrix(X, taken_fraction=self.taken_fraction,
                                      flash_load_fraction=self.flash_load_fraction)
            return _as_matrix(X)
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != len(FEATURES):
            raise ValueError(f"CycleFeatures needs a bench DataFrame or a matrix of {len(FEATURES)} columns")
        return X

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.array(FEATURES, dtype=object)


class NonNegativeLinear(RegressorMixin, BaseEstimator):
    """target = X · coef_, coef_ >= 0, fitted by bounded least squares (scipy ``lsq_linear``).

    ``relative=True`` minimises relative errors (rows weighted by 1/y), so a workload of 10⁴ cycles
    counts as much as one of 10⁹.  ``prior`` (vector, {feature: cost}, platform id or core name) with
    ``prior_strength`` > 0 adds a ridge penalty pulling each coefficient toward its prior, measured
    relative to the prior: useful when few workloads leave some classes unidentified. ``min_cost``:
    the least cycles an instruction of any class may cost (1 / the core's issue width; 0: no bound),
    so that a fit cannot make instructions cheaper than the pipeline can retire them and put the
    difference into the wait-state or branch terms."""

    def __init__(self, prior=None, prior_strength: float = 0.0, relative: bool = True, min_cost: float = 0.0):
        self.prior = prior
        self.prior_strength = prior_strength
        self.relative = relative
        self.min_cost = min_cost

    def fit(self, X, y, sample_weight=None):
        X = _as_matrix(X)
        y = _check_target(y)
        if len(y) != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows, y has {len(y)}")
        w = 1.0 / y if self.relative else np.ones_like(y)
        if sample_weight is not None:
            w = w * np.sqrt(np.asarray(sample_weight, dtype=float))
        A, b = X * w[:, None], y * w
        prior = resolve_prior(self.prior, X.shape[1])
        if prior is not None and self.prior_strength > 0:
            scale = math.sqrt(self.prior_strength) / np.maximum(prior, 0.1)
            A = np.vstack([A, np.diag(scale)])
            b = np.concatenate([b, scale * prior])
        norms = np.linalg.norm(A, axis=0)
        norms[norms == 0] = 1.0
        lower = np.zeros(X.shape[1])
        if self.min_cost:                     # no instruction class retires faster than this
            if X.shape[1] != len(FEATURES):
                raise ValueError(f"min_cost bounds the class costs of the {len(FEATURES)} FEATURES; "
                                 f"X has {X.shape[1]} columns")
            lower[[FEATURES.index(f) for f in CLASS_FEATURES]] = self.min_cost
        res = lsq_linear(A / norms, b, bounds=(lower * norms, np.inf), method="bvls" if A.shape[1] <= 64 else "trf")
        coef = np.maximum(res.x / norms, 0.0)   # the solver's rounding may leave -1e-27: costs are >= 0
        if prior is not None:   # a feature never seen in training keeps its prior cost
            unseen = ~np.any(X != 0, axis=0)
            coef[unseen] = prior[unseen]
        self.coef_ = coef
        self.intercept_ = 0.0
        self.n_features_in_ = X.shape[1]
        self.prior_ = prior
        return self

    def predict(self, X) -> np.ndarray:
        X = _as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the model was fitted on {self.n_features_in_}")
        return X @ self.coef_


class ResidualBoosted(RegressorMixin, BaseEstimator):
    """``base`` prediction × (1 + correction), the correction learned by ``residual`` (default: a
    small gradient-boosted tree ensemble) on the class mix.  Captures what a linear model cannot
    (pipeline interactions), at the price of weaker extrapolation to unseen mixes."""

    def __init__(self, base=None, residual=None):
        self.base = base
        self.residual = residual

    def fit(self, X, y, sample_weight=None):
        X = _as_matrix(X)
        y = _check_target(y)
        self.base_ = clone(self.base if self.base is not None else NonNegativeLinear()).fit(X, y)
        pred = self.base_.predict(X)
        r = y / np.maximum(pred, 1e-12) - 1.0
        model = self.residual if self.residual is not None else GradientBoostingRegressor(
            n_estimators=100, max_depth=2, learning_rate=0.05, subsample=0.8, random_state=0)
        self.residual_ = clone(model).fit(_mix(X), r)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        X = _as_matrix(X)
        return self.base_.predict(X) * (1.0 + self.residual_.predict(_mix(X)))


class ConformalInterval(RegressorMixin, BaseEstimator):
    """Split-conformal intervals around ``estimator`` on relative residuals |y - ŷ| / (ŷ · s).

    ``fit`` holds out ``calibration_size`` of the rows (whole groups when ``groups`` is given, so
    the interval reflects unseen workloads), fits the estimator on the rest, and takes the
    ⌈(n+1)(1-α)⌉-th smallest calibration score as ``q_``: the interval ŷ·(1 ± q_) then covers a new
    exchangeable point with probability >= 1 - α. s is 1, or with ``scaled`` (the cycle model) the
    row's core share (``cycles.core_share``: its predicted cycles less the memory wait terms, as a
    share): the interval is then ŷ·(1 ± q_·s), normalized conformal prediction with the core's cycles
    as the difficulty. The memory terms are counts × wait states or the twin's simulation of the fetch
    path; the error is in what the fit learned per instruction, so a calibration fitted at many wait
    states (s small) keeps its error, relative to the core's cycles, on a board with none (s = 1).

    Exchangeable means like the fitted rows. A row with more of a term per instruction than any fitted
    row (a board with more wait states than any fitted one: its fetch-stall term never measured) gets
    ŷ·(1 ± (q_ + extrapolation_band · e)), e the share of its prediction beyond the fitted support
    (``support_``: each feature's largest count per instruction; ``extrapolation``), when the
    estimator has a linear part (``coef_``). The default band, 0.25, is
    the prior's own at high confidence (calibration.predict.PRIOR_BANDS): what the calibration did not
    measure is as uncertain as the published timings it rests on. (On the RTL Ibex, calibrated without
    wait states and asked at 2, 57 % of a token's cycles are past the support and the error is 10 %.)"""

    def __init__(self, estimator=None, alpha: float = 0.1, calibration_size: float = 0.25,
                 random_state: int = 0, extrapolation_band: float = 0.25, scaled: bool = False):
        self.estimator = estimator
        self.alpha = alpha
        self.calibration_size = calibration_size
        self.random_state = random_state
        self.extrapolation_band = extrapolation_band
        self.scaled = scaled

    def fit(self, X, y, groups=None):
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        X = _as_matrix(X)
        y = _check_target(y)
        if groups is not None:
            groups = np.asarray(groups)
            if len(np.unique(groups)) < 2:
                raise ValueError("conformal calibration needs at least 2 groups")
            splitter = GroupShuffleSplit(n_splits=1, test_size=self.calibration_size,
                                         random_state=self.random_state)
        else:
            splitter = ShuffleSplit(n_splits=1, test_size=self.calibration_size,
                                    random_state=self.random_state)
        train, cal = next(splitter.split(X, y, groups))
        base = self.estimator if self.estimator is not None else NonNegativeLinear()
        self.estimator_ = clone(base).fit(X[train], y[train])
        pred = self.estimator_.predict(X[cal])
        scores = np.sort(np.abs(y[cal] - pred) / np.maximum(pred * self.scale(X[cal]), 1e-12))
        n = len(scores)
        k = math.ceil((n + 1) * (1 - self.alpha))
        self.q_ = float(scores[k - 1]) if k <= n else float("inf")
        self.n_calibration_ = n
        self.n_features_in_ = X.shape[1]
        linear = getattr(self.estimator_, "base_", self.estimator_)
        self.support_ = intensities(X).max(axis=0) if hasattr(linear, "coef_") else None
        return self

    def predict(self, X) -> np.ndarray:
        return self.estimator_.predict(_as_matrix(X))

    def scale(self, X) -> np.ndarray:
        """Per row, what q_ is relative to, as a share of the prediction: 1, or the core share."""
        X = _as_matrix(X)
        linear = getattr(self.estimator_, "base_", self.estimator_)
        if not self.scaled or not hasattr(linear, "coef_"):
            return np.ones(len(X))
        return core_share(X, linear.coef_)

    def half_width(self, X) -> np.ndarray:
        """The relative half-width per row: q_ × its scale, plus the band on what reaches past the
        fitted rows."""
        X = _as_matrix(X)
        h = self.q_ * self.scale(X)
        if self.support_ is None:
            return h
        linear = getattr(self.estimator_, "base_", self.estimator_)
        return h + self.extrapolation_band * extrapolation(X, linear.coef_, self.support_)

    def predict_interval(self, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pred = self.predict(X)
        h = self.half_width(X)
        return pred, np.maximum(pred * (1 - h), 0.0), pred * (1 + h)


def make_cycle_model(prior: str | None = None, *, prior_strength: float = 1e-4, alpha: float = 0.1,
                     residual: bool = False, taken_fraction: float | None = None,
                     flash_load_fraction: float | None = None) -> Pipeline:
    """features -> conformal(non-negative linear [× boosted residual]) for a bench DataFrame."""
    linear = NonNegativeLinear(prior=prior, prior_strength=prior_strength if prior else 0.0)
    est = ResidualBoosted(base=linear) if residual else linear
    return Pipeline([("features", CycleFeatures(taken_fraction, flash_load_fraction)),
                     ("model", ConformalInterval(est, alpha=alpha, scaled=True))])


def _final_and_features(model, X):
    if isinstance(model, Pipeline):
        Xt = X
        for _, step in model.steps[:-1]:
            Xt = step.transform(Xt)
        return model.steps[-1][1], Xt
    return model, X


def predict_interval(model, X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, low, high) from a fitted ConformalInterval or a Pipeline ending in one."""
    final, Xt = _final_and_features(model, X)
    if not hasattr(final, "predict_interval"):
        raise TypeError(f"{type(final).__name__} gives no intervals: wrap it in ConformalInterval")
    return final.predict_interval(Xt)


def _fit(model, X, y, groups):
    final, _ = _final_and_features(model, X)
    if isinstance(final, ConformalInterval):
        key = f"{model.steps[-1][0]}__groups" if isinstance(model, Pipeline) else "groups"
        return model.fit(X, y, **{key: groups})
    return model.fit(X, y)


def cross_validate_grouped(model, X, y, groups, *, n_splits: int | None = None, inner_groups=None) -> dict:
    """Hold out whole groups (workloads or boards): MAPE per fold and interval coverage.

    Leave-one-group-out when there are at most ``n_splits`` groups (or ``n_splits`` is None),
    GroupKFold otherwise.  Groups are also used inside each training fold for the conformal split,
    so the interval width reflects unseen groups; ``inner_groups`` (e.g. workloads when holding out
    boards) replaces them for that inner split."""
    y = _check_target(y)
    groups = np.asarray(groups)
    inner = groups if inner_groups is None else np.asarray(inner_groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError("cross-validation needs at least 2 groups")
    splitter = LeaveOneGroupOut() if n_splits is None or n_groups <= n_splits else GroupKFold(n_splits)
    preds = np.full(len(y), np.nan)
    scales = np.ones(len(y))   # what each row's interval is relative to (ConformalInterval.scale)
    low = np.full(len(y), np.nan)
    high = np.full(len(y), np.nan)
    fold_mape = []
    Xs = X.reset_index(drop=True) if isinstance(X, pd.DataFrame) else np.asarray(X)
    for train, test in splitter.split(Xs, y, groups):
        m = clone(model)
        sub = Xs.iloc[train] if isinstance(Xs, pd.DataFrame) else Xs[train]
        tst = Xs.iloc[test] if isinstance(Xs, pd.DataFrame) else Xs[test]
        _fit(m, sub, y[train], inner[train])
        final, _ = _final_and_features(m, tst)
        if hasattr(final, "predict_interval"):
            p, lo, hi = predict_interval(m, tst)
            low[test], high[test] = lo, hi
            scales[test] = final.scale(_final_and_features(m, tst)[1])
        else:
            p = m.predict(tst)
        preds[test] = p
        fold_mape.append(mape(y[test], p))
    out = {"mape_percent": mape(y, preds), "fold_mape_percent": fold_mape, "n_folds": len(fold_mape),
           "n_groups": n_groups, "predictions": preds, "scales": scales}
    if not np.isnan(low).all():
        out["coverage"] = float(np.mean((y >= low) & (y <= high)))
        out["mean_interval_width_percent"] = float(np.mean((high - low) / preds) * 100.0)
    return out


