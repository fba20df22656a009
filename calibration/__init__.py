"""Cycle and energy models, calibration against bench measurements, and prediction for every board.

- ``cycles``: counts -> cycles (prior from published timings, flash wait states, cache hit rates)
- ``energy``: time -> energy (board power figures, DVFS scaling)
- ``dataset``: the bench dataset schema (docs/calibration.md)
- ``estimators``: scikit-learn estimators (non-negative linear, boosted residual, conformal intervals)
- ``fit`` / ``store``: calibration files with provenance; ``residual``: their optional boosted residual as plain trees
- ``predict``: ``twin predict`` / ``twin compare``
"""

from __future__ import annotations


def fit_calibration(df, out, **kw) -> dict:
    """Fit and save a calibration file from a bench DataFrame (see calibration.fit)."""
    from .fit import fit_calibration as fit

    return fit(df, out, **kw)
