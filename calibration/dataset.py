"""The bench dataset: one row per workload × phase (schema in docs/calibration.md).

CSV or JSON lines; pandas only here, at the edge.  ``cycles`` 0 or NaN means "not measured" (QEMU
runs, boards without a counter): such rows carry counts but cannot train a cycles model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from twin.platforms import get_platform
from twin.profile.isa import CLASSES

from .cycles import (
    CLASS_FEATURES,
    FEATURES,
    FLASH_REGIONS,
    MemorySetup,
    feature_vector,
    fetch_width_for,
    measured_taken,
    memory_setup,
    wait_states_for,
)

ID_COLUMNS = ("board", "platform", "workload", "phase", "clock_hz", "build_id")
OPTIONAL_FEATURES = ("loads_flash", "loads_sram", "stores_sram", "branches_taken", "branches_unresolved",
                     "fetch_bytes", "icache_misses", "icache_prefetched", "dcache_misses", "wait_cycles")
TARGETS = ("cycles", "energy_j")
OPTIONAL_COLUMNS = ("energy_j", "cycle_counter", "flash_wait_states", "compiler", "cflags", "bench_date")
REQUIRED_COLUMNS = (*ID_COLUMNS, *CLASS_FEATURES, "cycles")


class DatasetError(ValueError):
    """The dataset breaks the schema; the message names the column (and row) and what to do."""


UNMEASURED_ROWS = ("{n} rows have no measured cycles (cycle_counter none / QEMU) — calibrate needs a "
                   "real board's counter")


def read_datasets(paths: list[Path | str]) -> pd.DataFrame:
    """Load, validate and concatenate bench datasets (twin bench writes them)."""
    if not paths:
        raise DatasetError("no dataset given")
    return pd.concat([load_dataset(p) for p in paths], ignore_index=True)


def unmeasured(df: pd.DataFrame) -> pd.Series:
    """Rows whose cycles were not measured: cycles 0 / empty, or cycle_counter none."""
    cycles = pd.to_numeric(df["cycles"], errors="coerce")
    bad = cycles.isna() | (cycles <= 0)
    if "cycle_counter" in df.columns:
        bad |= df["cycle_counter"].astype(str).str.lower().isin(["none", "nan", ""])
    return bad


def load_dataset(path: Path | str) -> pd.DataFrame:
    """Read a bench dataset (.csv, .jsonl or .json lines) and validate it."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"dataset {p} not found")
    try:
        if p.suffix == ".csv":
            df = pd.read_csv(p)
        elif p.suffix in (".jsonl", ".json", ".ndjson"):
            df = pd.read_json(p, lines=True)
        else:
            raise DatasetError(f"dataset {p}: use .csv or .jsonl (JSON lines)")
    except (ValueError, pd.errors.ParserError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"dataset {p}: cannot parse ({exc})") from None
    return validate_dataset(df, where=str(p))


def save_dataset(df: pd.DataFrame, path: Path | str) -> None:
    p = Path(path)
    if p.suffix == ".csv":
        df.to_csv(p, index=False)
    else:
        df.to_json(p, orient="records", lines=True)


def validate_dataset(df: pd.DataFrame, where: str = "dataset") -> pd.DataFrame:
    """Check columns and types; returns the frame with numeric columns as float."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {', '.join(missing)} (schema: docs/calibration.md)")
    if df.empty:
        raise DatasetError(f"{where}: no rows")
    out = df.copy()
    for col in (*CLASS_FEATURES, "clock_hz", "cycles",
                *(c for c in (*OPTIONAL_FEATURES, "energy_j", "flash_wait_states") if c in out.columns)):
        values = pd.to_numeric(out[col], errors="coerce")
        bad = values.isna() & out[col].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetError(f"{where}: column '{col}' row {i}: not a number ({out[col].iloc[i]!r})")
        if (values < 0).any():
            i = int(np.flatnonzero((values < 0).to_numpy())[0])
            raise DatasetError(f"{where}: column '{col}' row {i}: negative value")
        out[col] = values.astype(float)
    for col in CLASS_FEATURES:
        if out[col].isna().any():
            raise DatasetError(f"{where}: column '{col}' has empty cells: every row needs its class counts")
    if (out["clock_hz"].isna() | (out["clock_hz"] <= 0)).any():
        raise DatasetError(f"{where}: column 'clock_hz' must be positive on every row")
    for col in ("board", "platform", "workload", "phase", "build_id"):
        if out[col].isna().any():
            raise DatasetError(f"{where}: column '{col}' has empty cells")
        out[col] = out[col].astype(str)
    return out


def measured(df: pd.DataFrame, target: str = "cycles") -> pd.Series:
    """Rows whose ``target`` was measured (not 0, not NaN)."""
    if target not in df.columns:
        return pd.Series(False, index=df.index)
    v = pd.to_numeric(df[target], errors="coerce")
    return v.notna() & (v > 0)


def dataset_hash(df: pd.DataFrame) -> str:
    """SHA-256 of the rows in a canonical form (sorted columns, CSV text)."""
    canon = df.reindex(sorted(df.columns), axis=1).to_csv(index=False, float_format="%.17g")
    return hashlib.sha256(canon.encode()).hexdigest()


def feature_matrix(df: pd.DataFrame, *, taken_fraction: float | None = None,
                   flash_load_fraction: float | None = None) -> np.ndarray:
    """The cycle model's ``FEATURES`` for every row (wait states from the catalog or the row)."""
    ws_col = df["flash_wait_states"] if "flash_wait_states" in df.columns else None
    cache: dict[tuple[str, float], float] = {}
    widths: dict[str, float | None] = {}
    setups: dict[str, MemorySetup | None] = {}   # the board's fetch model (its cache, its assumed miss fraction)
    rows = []
    for i, r in enumerate(df.itertuples(index=False)):
        d = r._asdict()
        ws = None if ws_col is None else ws_col.iloc[i]
        if ws is None or pd.isna(ws):
            key = (str(d["board"]), float(d["clock_hz"]))
            if key not in cache:
                try:
                    cache[key] = wait_states_for(*key)
                except ValueError as exc:
                    raise DatasetError(f"row {i}: board {key[0]!r}: {exc}; or give a 'flash_wait_states' "
                                       "column") from None
            ws = cache[key]
        by_class = {c: d[f"n_{c}"] for c in CLASSES}
        board = str(d["board"])
        if board not in widths:
            try:
                widths[board] = fetch_width_for(board)
                setups[board] = memory_setup(get_platform(board))
            except ValueError:
                widths[board], setups[board] = None, None
        mem = setups[board]
        sim = None       # the board's cache as the twin simulated it, where the row carries it
        if mem is not None and _opt(d.get("icache_misses")) is not None and mem.icache is not None:
            sim = {mem.icache.key: {"misses": _opt(d.get("icache_misses")),
                                    "prefetched": _opt(d.get("icache_prefetched")) or 0.0}}
        fills = None if sim is None else dataclasses.replace(mem, wait_states=float(ws)).fetch_fills(
            sim, fetch_bytes=_opt(d.get("fetch_bytes")), instructions=sum(float(v) for v in by_class.values()))
        dmiss = _opt(d.get("dcache_misses"))
        load_fills = None if mem is None or mem.dcache is None or dmiss is None else \
            mem.load_fills({mem.dcache.key: {"misses": dmiss}})
        taken, unresolved = _opt(d.get("branches_taken")), _opt(d.get("branches_unresolved"))
        if taken is not None and unresolved is not None:     # the split the profiler could not derive
            taken = measured_taken(taken, unresolved, taken_fraction)
        rows.append(feature_vector(by_class, wait_states=float(ws),
                                   loads_flash=_opt(d.get("loads_flash")),
                                   branches_taken=taken,
                                   fetch_bytes=_opt(d.get("fetch_bytes")), fetch_width=widths[board],
                                   fetch_miss=1.0 if mem is None else mem.fetch_miss, fetch_fills=fills,
                                   load_miss=1.0 if mem is None else mem.load_miss, load_fills=load_fills,
                                   wait_cycles=_opt(d.get("wait_cycles")),
                                   taken_fraction=taken_fraction, flash_load_fraction=flash_load_fraction))
    return np.array(rows, dtype=float).reshape(len(rows), len(FEATURES))


def _opt(v) -> float | None:
    return None if v is None or pd.isna(v) else float(v)


def rows_from_report(report: dict, *, board: str, workload: str, clock_hz: int | None = None,
                     cycles: dict[str, float] | None = None, energy_j: dict[str, float] | None = None
                     ) -> list[dict]:
    """Dataset rows (prefill, decode) from a ``twin run`` report; ``cycles``/``energy_j`` per phase
    come from the bench (the report's own cycle counters read 0 in QEMU)."""
    ins = report["instructions"]
    by_phase_class = ins.get("by_phase_class")
    if by_phase_class is None:
        raise DatasetError("the report has no per-phase class mix (instructions.by_phase_class): "
                           "re-run with the current twin")
    traffic = report.get("memory_traffic") or {}
    rows = []
    for phase in ("prefill", "decode"):
        row: dict = {"board": board, "platform": report["platform"], "workload": workload, "phase": phase,
                     "clock_hz": clock_hz or report.get("clock_hz"), "build_id": report["firmware"]["build_id"]}
        row.update({f"n_{c}": by_phase_class[phase].get(c, 0) for c in CLASSES})
        mem = traffic.get(phase)
        if mem:
            row["loads_flash"] = sum(mem.get(r, {}).get("loads", 0) for r in FLASH_REGIONS)
            row["loads_sram"] = mem.get("ram", {}).get("loads", 0)
            row["stores_sram"] = mem.get("ram", {}).get("stores", 0)
        row["cycles"] = (cycles or {}).get(phase, float("nan"))
        if energy_j is not None:
            row["energy_j"] = energy_j.get(phase, float("nan"))
        row["cycle_counter"] = report.get("cycles", {}).get("counter", "none")
        rows.append(row)
    return rows
