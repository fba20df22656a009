"""Versioned calibration files (JSON) with provenance; every prediction cites the file's ``id``.

A file holds, for one core, the fitted non-negative coefficients of the cycle model (and of the
energy model when energy was measured), the conformal interval half-width ``q`` (relative), and
where it all came from: firmware build ids, compiler and flags, boards, clocks, bench date, the
SHA-256 of the dataset and the cross-validated error.  ``load`` validates and names what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cycles import FEATURES

FORMAT = "tinyllm-twin-calibration"
VERSION = 1
ENERGY_FEATURES: tuple[str, ...] = (*FEATURES, "seconds")


class CalibrationFileError(ValueError):
    """A calibration file is missing, unreadable or breaks the format; the message names the field."""


@dataclass(frozen=True)
class FittedModel:
    coef: dict[str, float] = field(hash=False)
    alpha: float = 0.1
    q: float = 0.0                   # relative half-width of the (1 - alpha) interval
    cv: dict = field(default_factory=dict, hash=False)   # {"by_workload": {...}, "by_board": {...}}


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
             "cycles": asdict(self.cycles), "energy": asdict(self.energy) if self.energy else None,
             "provenance": self.provenance}
        return d

    def compute_id(self) -> str:
        d = {"core": self.core, "boards": list(self.boards), "cycles": asdict(self.cycles),
             "energy": asdict(self.energy) if self.energy else None, "provenance": self.provenance}
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()
        return f"cal-{self.core}-{digest[:12]}"


PROVENANCE_FIELDS = ("build_ids", "compiler", "cflags", "boards", "clocks_hz", "bench_date",
                     "dataset_sha256", "n_rows", "created")


def save(cal: Calibration, path: Path | str) -> Path:
    p = Path(path)
    d = cal.to_dict()
    validate(d, where=str(p))
    p.write_text(json.dumps(d, indent=2, sort_keys=False) + "\n")
    return p


def load(path: Path | str) -> Calibration:
    p = Path(path)
    if not p.is_file():
        raise CalibrationFileError(f"calibration file {p} not found")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationFileError(f"{p}: not valid JSON ({exc})") from None
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
                       q=float(d["q"]), cv=d.get("cv", {}))


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
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise _fail(where, f"field 'coef.{k}' must be a finite number >= 0, got {v!r}")
    alpha = m.get("alpha")
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise _fail(where, f"field 'alpha' must be in (0, 1), got {alpha!r}")
    q = m.get("q")
    if not isinstance(q, (int, float)) or q < 0:
        raise _fail(where, f"field 'q' must be a number >= 0, got {q!r}")


def validate(d: object, where: str = "calibration") -> None:
    """Raise CalibrationFileError naming the first broken field."""
    if not isinstance(d, dict):
        raise _fail(where, "expected a JSON object")
    if d.get("format") != FORMAT:
        raise _fail(where, f"field 'format' must be {FORMAT!r} (not a twin calibration file?)")
    if d.get("version") != VERSION:
        raise _fail(where, f"field 'version' is {d.get('version')!r}; this twin reads version {VERSION}")
    for key, kind in (("id", str), ("core", str), ("boards", list), ("provenance", dict)):
        if not isinstance(d.get(key), kind):
            raise _fail(where, f"field '{key}' must be {kind.__name__}")
    if d.get("features") is not None and tuple(d["features"]) != FEATURES:
        raise _fail(where, f"field 'features' {d['features']} differs from this twin's {list(FEATURES)}")
    _check_model(d.get("cycles"), f"{where}: cycles", FEATURES)
    if d.get("energy") is not None:
        _check_model(d["energy"], f"{where}: energy", ENERGY_FEATURES)
    prov = d["provenance"]
    missing = [k for k in PROVENANCE_FIELDS if k not in prov]
    if missing:
        raise _fail(where, f"field 'provenance' misses {missing}")
