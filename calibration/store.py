"""Versioned calibration files (JSON) with provenance; every prediction cites the file's ``id``.

A file holds, for one core, the fitted non-negative coefficients of the cycle model (and of the
energy model when energy was measured), the conformal interval half-width ``q`` (relative: to the
prediction, or with ``q_scale: core`` to its core share, calibration.cycles.core_share), and
where it all came from: firmware build ids, compiler and flags, boards, clocks, bench date, the
SHA-256 of the dataset and the cross-validated error.  ``load`` validates and names what is wrong.

Version 2 adds an optional ``cycles.residual`` block: the boosted correction of ``ResidualBoosted``
as plain trees (calibration/residual.py), so that a calibration fitted with it predicts with it.
Version 1 files (no residual) load as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .cycles import FEATURES, core_share, extrapolation
from .residual import ResidualBlockError, StoredResidual, check_block, check_storable_type, export_residual

FORMAT = "tinyllm-twin-calibration"
VERSION = 2
READS_VERSIONS = (1, 2)          # 1: linear only; 2: + optional cycles.residual
RESIDUAL_SINCE = 2
ENERGY_FEATURES: tuple[str, ...] = (*FEATURES, "seconds")


class CalibrationFileError(ValueError):
    """A calibration file is missing, unreadable or breaks the format; the message names the field."""


@dataclass(frozen=True)
class FittedModel:
    coef: dict[str, float] = field(hash=False)
    alpha: float = 0.1
    q: float = 0.0                   # relative half-width of the (1 - alpha) interval
    cv: dict = field(default_factory=dict, hash=False)   # {"by_workload": {...}, "by_board": {...}}
    residual: dict | None = field(default=None, hash=False)   # residual block (calibration/residual.py)
    # {"band": b, "support": {feature: its largest count per instruction over the fitted rows}}: a row
    # past the support gets q + b × the share of its cycles beyond it (estimators.ConformalInterval);
    # None: a file without it
    extrapolation: dict | None = field(default=None, hash=False)
    # what q is relative to: "prediction" (the whole predicted value, as files before it wrote) or
    # "core" (the prediction's core share, calibration.cycles.core_share: estimators.ConformalInterval)
    q_scale: str = "prediction"

    def to_dict(self) -> dict:
        """The JSON object; no ``residual`` / ``extrapolation`` / ``q_scale`` key when there is none
        (as version 1 wrote it)."""
        d = asdict(self)
        for k in ("residual", "extrapolation"):
            if d[k] is None:
                del d[k]
        if d["q_scale"] == "prediction":
            del d["q_scale"]
        return d

    @cached_property
    def stored_residual(self) -> StoredResidual | None:
        return StoredResidual(self.residual) if self.residual is not None else None

    def coef_vector(self, features: tuple[str, ...] = FEATURES) -> np.ndarray:
        return np.array([self.coef[f] for f in features], dtype=float)

    def predict(self, X) -> np.ndarray:
        """Cycles for rows of the FEATURES matrix: X · coef, × (1 + residual) when there is one."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        pred = X @ self.coef_vector()
        if self.stored_residual is not None:
            pred = pred * (1.0 + self.stored_residual.correction(X))
        return pred

    def excess(self, X) -> np.ndarray:
        """Per row, the share of the prediction beyond the fitted rows' support (0 without one)."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        if not self.extrapolation:
            return np.zeros(len(X))
        return extrapolation(X, self.coef_vector(), self._support())

    def _support(self) -> list[float]:
        """Each feature's largest count per instruction over the fitted rows (0 for one they lacked)."""
        return [self.extrapolation["support"].get(f, 0.0) for f in FEATURES]

    def scale(self, X) -> np.ndarray:
        """Per row, what q is relative to, as a share of the prediction (1, or the core share)."""
        X = np.atleast_2d(np.asarray(X, dtype=float))
        return core_share(X, self.coef_vector()) if self.q_scale == "core" else np.ones(len(X))

    def half_width(self, X, fetch_band: float | None = None) -> np.ndarray:
        """The relative half-width per row: q × its scale, plus the band on the excess share.
        ``fetch_band``: the band of the fetch_wait term instead, for rows whose wait cycles are the
        twin's simulation of the board's fetch path (twin.profile.fetch_path.UNCERTAINTY), not
        counts × wait states."""
        h = self.q * self.scale(X)
        if not self.extrapolation:
            return h
        bands = np.full(len(FEATURES), float(self.extrapolation["band"]))
        if fetch_band is not None:
            bands[FEATURES.index("fetch_wait")] = fetch_band
        return h + extrapolation(X, self.coef_vector(), self._support(), bands)

    def predict_interval(self, X, fetch_band: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prediction, low, high) exactly as the fitted ``ConformalInterval``: ŷ·(1 ± h), low >= 0,
        h = q × the scale + band × the excess share (``half_width``)."""
        pred = self.predict(X)
        h = self.half_width(X, fetch_band)
        return pred, np.maximum(pred * (1 - h), 0.0), pred * (1 + h)


@dataclass(frozen=True)
class Calibration:
    core: str
    boards: tuple[str, ...]
    cycles: FittedModel
    provenance: dict = field(hash=False)
    energy: FittedModel | None = None
    id: str = ""
    version: int = VERSION

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "version": self.version, "id": self.id or self.compute_id(),
             "core": self.core, "boards": list(self.boards), "features": list(FEATURES),
             "cycles": self.cycles.to_dict(), "energy": self.energy.to_dict() if self.energy else None,
             "provenance": self.provenance}
        return d

    @property
    def has_residual(self) -> bool:
        return self.cycles.residual is not None

    @property
    def model_kind(self) -> str:
        return "linear+residual" if self.has_residual else "linear"

    def compute_id(self) -> str:
        d = {"core": self.core, "boards": list(self.boards), "cycles": self.cycles.to_dict(),
             "energy": self.energy.to_dict() if self.energy else None, "provenance": self.provenance}
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
        return f"cal-{self.core}-{digest[:12]}"


PROVENANCE_FIELDS = ("build_ids", "compiler", "cflags", "boards", "clocks_hz", "bench_date",
                     "dataset_sha256", "n_rows", "created")


def residual_block(estimator) -> dict:
    """The file's form of a fitted residual estimator; any type but the default
    GradientBoostingRegressor raises CalibrationFileError naming the type."""
    try:
        return export_residual(estimator)
    except ResidualBlockError as exc:
        raise CalibrationFileError(str(exc)) from None


def check_residual_type(estimator) -> None:
    """Refuse, before any fitting, a residual estimator a calibration file cannot hold."""
    try:
        check_storable_type(estimator)
    except ResidualBlockError as exc:
        raise CalibrationFileError(str(exc)) from None


def clamp_coef(coef: dict[str, float]) -> dict[str, float]:
    """Non-negative coefficients as a solver returns them, with its rounding noise removed: a negative
    within 1e-9 of the largest magnitude, or above -1e-12 (a millionth of a millionth of a cycle per
    count: e.g. -2.1e-27 from bounded least squares), becomes 0.0. Larger negatives are left for
    ``validate`` to refuse."""
    scale = max((abs(float(v)) for v in coef.values() if math.isfinite(float(v))), default=0.0)
    return {k: (0.0 if (math.isfinite(float(v)) and -max(1e-9 * scale, 1e-12) <= float(v) < 0) else float(v))
            for k, v in coef.items()}


def _clamped(cal: Calibration) -> Calibration:
    """``cal`` with ``clamp_coef`` applied; its id recomputed when it was the content's id."""
    def fix(m: FittedModel | None) -> FittedModel | None:
        if m is None:
            return None
        coef = clamp_coef(m.coef)
        return m if coef == m.coef else dataclasses.replace(m, coef=coef)

    cycles, energy = fix(cal.cycles), fix(cal.energy)
    if cycles is cal.cycles and energy is cal.energy:
        return cal
    content_id = not cal.id or cal.id == cal.compute_id()
    out = Calibration(cal.core, cal.boards, cycles, cal.provenance, energy, "" if content_id else cal.id,
                      cal.version)
    return out if not content_id else Calibration(out.core, out.boards, out.cycles, out.provenance, out.energy,
                                                  out.compute_id(), out.version)


def _non_finite(obj, where: str = "") -> str | None:
    """The dotted path of the first NaN/Infinity in ``obj`` (JSON has neither), or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad = _non_finite(v, f"{where}.{k}" if where else str(k))
            if bad:
                return bad
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = _non_finite(v, f"{where}[{i}]")
            if bad:
                return bad
    return None


def save(cal: Calibration, path: Path | str) -> Path:
    """Write the file atomically (twin/atomic.py: the previous file survives a failed write); it is
    validated first exactly as ``load`` will read it, so a file save writes always loads."""
    from twin.atomic import write_text

    p = Path(path)
    cal = _clamped(cal)
    d = cal.to_dict()
    bad = _non_finite(d)
    if bad:
        raise _fail(str(p), f"field '{bad}' is {_at(d, bad)!r}: a calibration file holds finite numbers only "
                            "(JSON has no NaN/Infinity); not written")
    validate(d, where=str(p))
    write_text(p, _dumps(d) + "\n")
    return p


def _at(d, dotted: str):
    import re

    cur = d
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        cur = cur[int(part[1:-1])] if part.startswith("[") else cur[part]
    return cur


def _dumps(obj, level: int = 0) -> str:
    """JSON indented by 2 like ``json.dumps(indent=2)``, except that a list of numbers (a residual
    tree's arrays, clocks) stays on one line: the file stays readable with a hundred trees in it."""
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and obj:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
            return json.dumps(obj, allow_nan=False)
        return "[\n" + ",\n".join(f"{inner}{_dumps(v, level + 1)}" for v in obj) + f"\n{pad}]"
    return json.dumps(obj, allow_nan=False)


def load(path: Path | str) -> Calibration:
    p = Path(path)
    if not p.is_file():
        raise CalibrationFileError(f"calibration file {p} not found")
    try:
        d = json.loads(p.read_text())      # NaN/Infinity are parsed, then refused by field (validate)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationFileError(f"{p}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise CalibrationFileError(f"calibration file {p}: cannot read it ({exc.strerror or exc})") from None
    return from_dict(d, where=str(p))


def from_dict(d: object, where: str = "calibration") -> Calibration:
    validate(d, where)
    assert isinstance(d, dict)
    cal = Calibration(
        core=d["core"], boards=tuple(d["boards"]), cycles=_model(d["cycles"]),
        energy=_model(d["energy"]) if d.get("energy") else None,
        provenance=d["provenance"], id=d["id"], version=d["version"])
    if cal.compute_id() != cal.id:
        raise CalibrationFileError(f"{where}: field 'id' {cal.id!r} does not match the content "
                                   f"({cal.compute_id()!r}): the file was edited after fitting")
    return cal


def _model(d: dict) -> FittedModel:
    return FittedModel(coef={k: float(v) for k, v in d["coef"].items()}, alpha=float(d["alpha"]),
                       q=float(d["q"]), cv=d.get("cv", {}), residual=d.get("residual"),
                       extrapolation=d.get("extrapolation"), q_scale=d.get("q_scale", "prediction"))


def _fail(where: str, what: str) -> CalibrationFileError:
    return CalibrationFileError(f"{where}: {what}")


def _check_model(m: object, where: str, features: tuple[str, ...]) -> None:
    if not isinstance(m, dict):
        raise _fail(where, "must be an object with coef, alpha, q")
    coef = m.get("coef")
    if not isinstance(coef, dict):
        raise _fail(where, "field 'coef' must be an object {feature: value}")
    missing = [f for f in features if f not in coef]
    if missing:
        raise _fail(where, f"field 'coef' misses features {missing}")
    for k, v in coef.items():
        if not _number(v) or v < 0:
            raise _fail(where, f"field 'coef.{k}' must be a finite number >= 0, got {v!r}")
    if not any(coef[f] > 0 for f in features):
        raise _fail(where, "field 'coef': every coefficient is 0, which predicts 0 cycles (infinitely fast); "
                           "fit the file again with `twin calibrate` on measured rows")
    alpha = m.get("alpha")
    if not _number(alpha) or not 0 < alpha < 1:
        raise _fail(where, f"field 'alpha' must be in (0, 1), got {alpha!r}")
    q = m.get("q")
    if not _number(q) or q < 0:
        raise _fail(where, f"field 'q' must be a finite number >= 0, got {q!r}")
    if m.get("q_scale", "prediction") not in ("prediction", "core"):
        raise _fail(where, f"field 'q_scale' must be 'prediction' or 'core', got {m.get('q_scale')!r}")
    ext = m.get("extrapolation")
    if ext is not None:
        band, support = (ext.get("band"), ext.get("support")) if isinstance(ext, dict) else (None, None)
        if not _number(band) or band < 0:
            raise _fail(where, f"field 'extrapolation.band' must be a finite number >= 0, got {band!r}")
        if not isinstance(support, dict) or any(not _number(v) or v < 0 for v in support.values()):
            raise _fail(where, "field 'extrapolation.support' must be an object {feature: count per "
                               f"instruction >= 0}}, got {support!r}")
    cv = m.get("cv", {})
    if not isinstance(cv, dict):
        raise _fail(where, f"field 'cv' must be an object, got {cv!r}")
    for split, r in cv.items():
        if split in ("by_workload", "by_board"):
            if not isinstance(r, dict):
                raise _fail(where, f"field 'cv.{split}' must be an object, got {r!r}")
            for key in ("mape_percent", "coverage", "mean_interval_width_percent", "n_folds"):
                if r.get(key) is not None and not _number(r[key]):
                    raise _fail(where, f"field 'cv.{split}.{key}' must be a finite number, got {r[key]!r}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(d: object, where: str = "calibration") -> None:
    """Raise CalibrationFileError naming the first broken field."""
    if not isinstance(d, dict):
        raise _fail(where, "expected a JSON object")
    if d.get("format") != FORMAT:
        raise _fail(where, f"field 'format' must be {FORMAT!r} (not a twin calibration file?)")
    version = d.get("version")
    if isinstance(version, bool) or version not in READS_VERSIONS:
        raise _fail(where, f"field 'version' is {version!r}; this twin reads versions "
                           f"{', '.join(map(str, READS_VERSIONS))}")
    for key, kind in (("id", str), ("core", str), ("boards", list), ("provenance", dict)):
        if not isinstance(d.get(key), kind):
            raise _fail(where, f"field '{key}' must be {kind.__name__}")
    if d.get("features") is not None and tuple(d["features"]) != FEATURES:
        raise _fail(where, f"field 'features' {d['features']} differs from this twin's {list(FEATURES)}")
    _check_model(d.get("cycles"), f"{where}: cycles", FEATURES)
    residual = d["cycles"].get("residual")
    if residual is not None:
        if version < RESIDUAL_SINCE:
            raise _fail(where, f"field 'cycles.residual' needs file version {RESIDUAL_SINCE}, the file says "
                               f"version {version}")
        try:
            check_block(residual, "cycles.residual")
        except ResidualBlockError as exc:
            raise _fail(where, str(exc)) from None
    if d.get("energy") is not None:
        _check_model(d["energy"], f"{where}: energy", ENERGY_FEATURES)
        if d["energy"].get("residual") is not None:
            raise _fail(where, "field 'energy.residual': the energy model has no residual (linear only)")
    prov = d["provenance"]
    missing = [k for k in PROVENANCE_FIELDS if k not in prov]
    if missing:
        raise _fail(where, f"field 'provenance' misses {missing}")
    bad = _non_finite(d)
    if bad:
        raise _fail(where, f"field '{bad}' is {_at(d, bad)!r}: a calibration file holds finite numbers only "
                           "(JSON has no NaN/Infinity)")
