"""Cycle and energy models, calibration against bench measurements, and prediction for every board.

- ``cycles``: counts -> cycles (prior from published timings, flash wait states, cache hit rates)
- ``energy``: time -> energy (board power figures, DVFS scaling)
- ``dataset``: the bench dataset schema (docs/calibration.md)
- ``estimators``: scikit-learn estimators (non-negative linear, boosted residual, conformal intervals)
- ``fit`` / ``store``: calibration files with provenance; ``residual``: their optional boosted residual as plain trees
- ``predict``: ``twin predict`` / ``twin compare``; ``function_cycles``: a decoded token's prior cycles per function

The public API below is imported on first use.
"""

from __future__ import annotations

import importlib

# (``calibration.predict`` is the module of that name; its ``predict()`` is one attribute further.)
_API = {"fit_calibration": "calibration.fit", "calibrate_files": "calibration.fit", "calibrate": "calibration.fit",
        "predict_from_counts": "calibration.predict", "function_cycles": "calibration.predict",
        "twin_counts": "calibration.predict",
        "load": "calibration.store", "save": "calibration.store"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'calibration' has no attribute {name!r}")
