"""The results store: one SQLite file of profiled runs, their counts, memory and predictions.

SQLite in WAL mode with ``synchronous=FULL``: each finished cell is written by ``record`` in one
transaction (all its rows or none), so a batch killed at any instant (kill -9, power cut) loses no
committed cell and leaves no half-written one. The schema is versioned by ``PRAGMA user_version``;
``MIGRATIONS`` are applied in order on open (version 0, an empty or new file, gets them all). One writer
at a time (the engine's parent process); readers never block it (WAL). Queries return pandas
DataFrames; ``export`` writes the runs joined with their predictions as CSV, Parquet or JSON.
Schema and columns: docs/results.md.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

DEFAULT_DB = "twin-results.sqlite"


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message says what was wrong and what to do."""


# Each entry takes the schema from version i to i + 1 (applied in one transaction with the version
# bump). Never edit a released entry: append one.
MIGRATIONS: list[str] = [
    # 1: runs, counts (total / by class / by phase and token position / by function), memory, predictions
    """
    CREATE TABLE runs (
        run_id            INTEGER PRIMARY KEY AUTOINCREMENT,
        cell_key          TEXT NOT NULL UNIQUE,
        status            TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
        error             TEXT,
        platform          TEXT NOT NULL,
        model             TEXT,
        model_sha256      TEXT,
        bits              INTEGER,
        recipe            TEXT,
        kv_cache          TEXT,
        prompt_tokens     INTEGER,
        tokens            INTEGER,
        seed              INTEGER,
        kernels           TEXT,
        build_id          TEXT,
        compiler          TEXT,
        cflags            TEXT,
        qemu_version      TEXT,
        git_commit        TEXT,
        created_at        TEXT NOT NULL,
        host              TEXT,
        wall_seconds      REAL,
        matches_reference INTEGER,
        clock_hz          INTEGER,
        prompt_ids        TEXT,          -- JSON list
        generated         TEXT,          -- JSON list: the decoded token ids
        text              TEXT,
        spec              TEXT NOT NULL  -- JSON: the cell as run
    );
    CREATE INDEX runs_platform ON runs (platform, model, bits);
    CREATE TABLE counts (
        run_id               INTEGER PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
        instructions_total   INTEGER NOT NULL,   -- prefill + decode
        validate_instructions INTEGER,
        prefill_instructions INTEGER NOT NULL,
        decode_instructions  INTEGER NOT NULL,   -- all decoded tokens
        decode_instructions_mean REAL,
        prefill_fetch_bytes  INTEGER,
        decode_fetch_bytes   INTEGER,
        extra                TEXT                -- JSON: branches, memory traffic by phase
    );
    CREATE TABLE class_counts (
        run_id       INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        phase        TEXT NOT NULL,              -- prefill | decode (all tokens)
        cls          TEXT NOT NULL,
        instructions INTEGER NOT NULL,
        PRIMARY KEY (run_id, phase, cls)
    );
    CREATE TABLE token_counts (
        run_id       INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        position     INTEGER NOT NULL,           -- 0: the first decoded token
        context      INTEGER NOT NULL,           -- tokens in the KV cache before this step
        token        INTEGER,
        instructions INTEGER NOT NULL,
        cycles       INTEGER,
        PRIMARY KEY (run_id, position)
    );
    CREATE TABLE function_counts (
        run_id       INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        phase        TEXT NOT NULL,              -- inference (prefill + decode)
        function     TEXT NOT NULL,
        instructions INTEGER NOT NULL,
        PRIMARY KEY (run_id, phase, function)
    );
    CREATE TABLE memory (
        run_id            INTEGER PRIMARY KEY REFERENCES runs (run_id) ON DELETE CASCADE,
        flash_bytes       INTEGER,
        ram_static_bytes  INTEGER,
        arena_bytes       INTEGER,
        stack_peak_bytes  INTEGER,
        model_image_bytes INTEGER,
        ram_bytes         INTEGER
    );
    CREATE TABLE predictions (
        run_id             INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        board              TEXT NOT NULL,
        calibration        TEXT,
        calibration_model  TEXT,
        clock_mhz          REAL,
        ttft_s             REAL, ttft_s_low REAL, ttft_s_high REAL,
        token_s            REAL, token_s_low REAL, token_s_high REAL,
        tokens_per_s       REAL, tokens_per_s_low REAL, tokens_per_s_high REAL,
        energy_per_token_j REAL, energy_low REAL, energy_high REAL,
        fits               INTEGER,
        flash_needed       INTEGER, ram_needed INTEGER, flash_available INTEGER, ram_available INTEGER,
        prefill_cycles     REAL, token_cycles REAL,
        twin_mode          TEXT, confidence TEXT, proxy TEXT, kernels TEXT,
        notes              TEXT,                 -- JSON list
        PRIMARY KEY (run_id, board)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

RUN_COLUMNS = ["run_id", "cell_key", "status", "error", "platform", "model", "model_sha256", "bits", "recipe",
               "kv_cache", "prompt_tokens", "tokens", "seed", "build_id", "compiler", "cflags", "qemu_version",
               "git_commit", "created_at", "host", "wall_seconds", "instructions_total", "prefill_instructions",
               "decode_instructions_mean", "flash_bytes", "ram_static_bytes", "arena_bytes", "stack_peak_bytes",
               "model_image_bytes", "ram_bytes", "matches_reference"]
# after the contract's columns: a few more the report carries
RUN_EXTRA_COLUMNS = ["kernels", "validate_instructions", "decode_instructions", "prefill_fetch_bytes",
                     "decode_fetch_bytes", "clock_hz"]
PREDICTION_COLUMNS = ["run_id", "board", "calibration", "ttft_s", "ttft_s_low", "ttft_s_high", "token_s",
                      "token_s_low", "token_s_high", "tokens_per_s", "energy_per_token_j", "energy_low",
                      "energy_high", "fits", "flash_needed", "ram_needed", "flash_available", "ram_available",
                      "clock_mhz"]
PREDICTION_EXTRA_COLUMNS = ["tokens_per_s_low", "tokens_per_s_high", "calibration_model", "prefill_cycles",
                            "token_cycles", "twin_mode", "confidence", "proxy", "kernels"]
_INT_COLUMNS = {"run_id", "bits", "prompt_tokens", "tokens", "seed", "instructions_total", "prefill_instructions",
                "flash_bytes", "ram_static_bytes", "arena_bytes", "stack_peak_bytes", "model_image_bytes",
                "ram_bytes", "validate_instructions", "decode_instructions", "prefill_fetch_bytes",
                "decode_fetch_bytes", "clock_hz", "flash_needed", "ram_needed", "flash_available",
                "ram_available", "position", "context", "token", "instructions", "cycles"}
_BOOL_COLUMNS = {"matches_reference", "fits"}
EXPORT_FORMATS = ("csv", "parquet", "json")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class ResultsStore:
    """A results file (created when missing; migrated to SCHEMA_VERSION on open)."""

    def __init__(self, path: os.PathLike | str = DEFAULT_DB, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"results store {self.path} is a directory: give a file, e.g. {DEFAULT_DB}")
        if not self.path.parent.is_dir():
            raise StoreError(f"results store {self.path}: directory {self.path.parent} does not exist")
        try:
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT, see _tx)
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"results store {self.path}: SQLite refused WAL mode ({mode}); put it on a "
                                 "local file system")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if hasattr(self, "_conn"):
                self._conn.close()
            raise StoreError(f"results store {self.path} cannot be opened: {exc} (is it a twin results "
                             "file?)") from None

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole on leaving, rolled back on any exception."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as c:     # BEGIN IMMEDIATE: two processes opening a new file migrate it once
            version = int(c.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(f"results store {self.path} has schema version {version}, newer than this "
                                 f"twin's {SCHEMA_VERSION}: update tinyllm-twin to read it")
            for i in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[i]):
                    c.execute(statement)
                c.execute(f"PRAGMA user_version = {i + 1}")

    # -- writing -----------------------------------------------------------------------------------
    def record(self, cell_key: str, spec: dict, report: dict | None, predictions: list[dict] | None,
               error: str | None, meta: dict | None) -> int:
        """Store one cell (replacing an earlier result under the same key) in one transaction; returns
        its run_id. ``report``: a ``twin.runner.run`` report (None for a failed cell); ``predictions``:
        ``calibration.predict.predict_from_counts`` results; ``error``: why the cell failed (then its
        status is "failed"); ``meta``: build_id, compiler, cflags, qemu_version, git_commit, created_at,
        host (and model_sha256, recipe when known)."""
        meta = dict(meta or {})
        status = "failed" if error is not None or report is None else "ok"
        if status == "failed" and not error:
            error = "no report"
        run = _run_row(cell_key, status, error, spec, report, meta)
        children = _child_rows(report, predictions or []) if status == "ok" else {}
        cols = list(run)
        with self._tx() as c:
            c.execute("DELETE FROM runs WHERE cell_key = ?", (cell_key,))      # cascades to its rows
            cur = c.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                            [run[k] for k in cols])
            run_id = int(cur.lastrowid)
            for table, rows in children.items():
                if not rows:
                    continue
                names = ["run_id", *rows[0]]
                c.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                              [[run_id, *(r[k] for k in names[1:])] for r in rows])
        return run_id

    def delete(self, cell_key: str) -> bool:
        with self._tx() as c:
            return c.execute("DELETE FROM runs WHERE cell_key = ?", (cell_key,)).rowcount > 0

    # -- reading -----------------------------------------------------------------------------------
    def done(self, cell_key: str, *, include_failed: bool = True) -> bool:
        """Whether the cell has a stored result (``include_failed=False``: a successful one)."""
        sql = "SELECT status FROM runs WHERE cell_key = ?"
        row = self._conn.execute(sql, (cell_key,)).fetchone()
        return row is not None and (include_failed or row[0] == "ok")

    def keys(self, status: str | None = None) -> set[str]:
        if status is None:
            return {r[0] for r in self._conn.execute("SELECT cell_key FROM runs")}
        return {r[0] for r in self._conn.execute("SELECT cell_key FROM runs WHERE status = ?", (status,))}

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def _frame(self, sql: str, params=()) -> pd.DataFrame:
        return _typed(pd.read_sql_query(sql, self._conn, params=params))

    def runs(self, query: str | None = None) -> pd.DataFrame:
        """One row per cell: RUN_COLUMNS, then RUN_EXTRA_COLUMNS. ``query``: a pandas ``DataFrame.query``
        expression over those columns (e.g. ``"platform == 'mps2-an386' and bits == 4"``)."""
        df = self._frame(
            "SELECT r.*, c.instructions_total, c.prefill_instructions, c.decode_instructions_mean, "
            "c.validate_instructions, c.decode_instructions, c.prefill_fetch_bytes, c.decode_fetch_bytes, "
            "m.flash_bytes, m.ram_static_bytes, m.arena_bytes, m.stack_peak_bytes, m.model_image_bytes, "
            "m.ram_bytes FROM runs r LEFT JOIN counts c USING (run_id) LEFT JOIN memory m USING (run_id) "
            "ORDER BY r.run_id")
        df = df[RUN_COLUMNS + RUN_EXTRA_COLUMNS]
        if query:
            try:
                df = df.query(query)
            except Exception as exc:   # pandas raises many kinds (SyntaxError, UndefinedVariableError, ...)
                raise StoreError(f"runs query {query!r}: {exc}") from None
        return df.reset_index(drop=True)

    def token_counts(self) -> pd.DataFrame:
        """Per decoded token: run_id, position (0 = first decoded token), instructions, then context (tokens
        in the KV cache before the step: prompt length + position), token, cycles."""
        return self._frame("SELECT run_id, position, instructions, context, token, cycles FROM token_counts "
                           "ORDER BY run_id, position")

    def functions(self) -> pd.DataFrame:
        """run_id, phase ("inference": prefill + decode), function, instructions (descending per run)."""
        return self._frame("SELECT run_id, phase, function, instructions FROM function_counts "
                           "ORDER BY run_id, instructions DESC, function")

    def classes(self) -> pd.DataFrame:
        """run_id, phase ("prefill" or "decode": all decoded tokens), cls, instructions."""
        return self._frame("SELECT run_id, phase, cls, instructions FROM class_counts ORDER BY run_id, phase, cls")

    def predictions(self) -> pd.DataFrame:
        """One row per (run, catalog board it stands for): PREDICTION_COLUMNS, then PREDICTION_EXTRA_COLUMNS."""
        df = self._frame("SELECT * FROM predictions ORDER BY run_id, board")
        return df[PREDICTION_COLUMNS + PREDICTION_EXTRA_COLUMNS]

    def joined(self) -> pd.DataFrame:
        """The runs joined with their predictions: one row per (run, board); a run without predictions
        (a failed cell) once, with empty prediction columns."""
        runs, preds = self.runs(), self.predictions()
        preds = preds.rename(columns={"kernels": "prediction_kernels"})
        return runs.merge(preds, on="run_id", how="left")

    def export(self, path: os.PathLike | str, fmt: str | None = None) -> Path:
        """Write ``joined()`` as csv, parquet (pyarrow) or json (a list of records, null for missing);
        ``fmt`` None: from the file's suffix. Written atomically."""
        from twin.atomic import atomic_path

        path = Path(path)
        fmt = (fmt or path.suffix.lstrip(".")).lower()
        if fmt not in EXPORT_FORMATS:
            raise StoreError(f"export format {fmt or '(none)'!r}: use one of {', '.join(EXPORT_FORMATS)}")
        df = self.joined()
        with atomic_path(path) as tmp:
            if fmt == "csv":
                df.to_csv(tmp, index=False)
            elif fmt == "parquet":
                df.to_parquet(tmp, index=False, engine="pyarrow")
            else:
                Path(tmp).write_text(df.to_json(orient="records", indent=1) + "\n", encoding="utf-8")
        return path


# -------------------------------------------------------------------------------------------------
def _statements(script: str) -> list[str]:
    """A migration's statements (none of them holds a ';' in a literal or a comment)."""
    out = []
    for s in script.split(";"):
        code = "\n".join(line for line in s.splitlines() if not line.strip().startswith("--")).strip()
        if code:
            out.append(s.strip())
    return out


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for col in df.columns:
        if col in _INT_COLUMNS:
            df[col] = df[col].astype("Int64")
        elif col in _BOOL_COLUMNS:
            df[col] = df[col].astype("boolean")
    return df


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _run_row(cell_key: str, status: str, error: str | None, spec: dict, report: dict | None, meta: dict) -> dict:
    r = report or {}
    fw = r.get("firmware") or {}
    prompt = r.get("prompt_tokens")
    generated = r.get("tokens")
    return {
        "cell_key": cell_key, "status": status, "error": error,
        "platform": r.get("platform") or spec.get("platform") or "?",
        "model": r.get("model") or spec.get("model"),
        "model_sha256": meta.get("model_sha256") or spec.get("model_sha256"),
        "bits": r.get("bits", spec.get("bits")),
        "recipe": meta.get("recipe") or spec.get("recipe"),
        "kv_cache": r.get("kv_cache") or spec.get("kv_cache"),
        "prompt_tokens": len(prompt) if prompt is not None else spec.get("prompt_tokens"),
        "tokens": len(generated) if generated is not None else spec.get("tokens"),
        "seed": spec.get("seed"),
        "kernels": fw.get("kernels") or meta.get("kernels"),
        "build_id": fw.get("build_id") or meta.get("build_id"),
        "compiler": meta.get("compiler"), "cflags": meta.get("cflags"),
        "qemu_version": meta.get("qemu_version"), "git_commit": meta.get("git_commit"),
        "created_at": meta.get("created_at") or utc_now(),
        "host": meta.get("host") or socket.gethostname(),
        "wall_seconds": _finite(r.get("wall_seconds", meta.get("wall_seconds"))),
        "matches_reference": None if report is None else int(bool(r.get("matches_reference"))),
        "clock_hz": r.get("clock_hz"),
        "prompt_ids": None if prompt is None else json.dumps(prompt),
        "generated": None if generated is None else json.dumps(generated),
        "text": r.get("text"),
        "spec": json.dumps(spec, sort_keys=True, default=str),
    }


def _child_rows(report: dict, predictions: list[dict]) -> dict[str, list[dict]]:
    ins = report["instructions"]
    by_phase = ins["by_phase"]
    decode = [int(x) for x in by_phase["decode"]]
    fetch = ins.get("by_phase_fetch_bytes") or {}
    extra = {"branches": ins.get("branches"), "by_phase_branches": ins.get("by_phase_branches"),
             "memory_traffic": report.get("memory_traffic"), "prompt_note": report.get("prompt_note")}
    counts = [{"instructions_total": int(ins["total"]), "validate_instructions": by_phase.get("validate"),
               "prefill_instructions": int(by_phase["prefill"]), "decode_instructions": sum(decode),
               "decode_instructions_mean": sum(decode) / len(decode) if decode else None,
               "prefill_fetch_bytes": fetch.get("prefill"), "decode_fetch_bytes": fetch.get("decode"),
               "extra": json.dumps(extra)}]
    bpc = ins.get("by_phase_class") or {}
    classes = [{"phase": phase, "cls": cls, "instructions": int(v)}
               for phase in ("prefill", "decode") for cls, v in sorted((bpc.get(phase) or {}).items())]
    n_prompt = len(report.get("prompt_tokens") or [])
    toks = report.get("tokens") or []
    cycles = (report.get("cycles") or {}).get("decode") or []
    tokens = [{"position": i, "context": n_prompt + i, "token": toks[i] if i < len(toks) else None,
               "instructions": v, "cycles": cycles[i] if i < len(cycles) else None}
              for i, v in enumerate(decode)]
    functions = [{"phase": "inference", "function": f["name"], "instructions": int(f["instructions"])}
                 for f in report.get("functions") or []]
    m = report.get("memory") or {}
    memory = [{k: m.get(k) for k in ("flash_bytes", "ram_static_bytes", "arena_bytes", "stack_peak_bytes",
                                     "model_image_bytes", "ram_bytes")}]
    preds = [_prediction_row(p) for p in predictions]
    return {"counts": counts, "class_counts": classes, "token_counts": tokens, "function_counts": functions,
            "memory": memory, "predictions": preds}


def _prediction_row(p: dict) -> dict:
    def iv(key: str) -> tuple[float | None, float | None, float | None]:
        v = p.get(key) or {}
        return _finite(v.get("value")), _finite(v.get("low")), _finite(v.get("high"))

    ttft, tps, e = iv("ttft_seconds"), iv("tokens_per_second"), iv("energy_per_token_joules")
    tok = iv("token_seconds")
    mem, twin, cyc = p.get("memory") or {}, p.get("twin") or {}, p.get("cycles") or {}
    return {
        "board": p["platform"], "calibration": p.get("calibration"),
        "calibration_model": (p.get("calibration_info") or {}).get("model"),
        "clock_mhz": _finite(p.get("clock_mhz")),
        "ttft_s": ttft[0], "ttft_s_low": ttft[1], "ttft_s_high": ttft[2],
        "token_s": tok[0], "token_s_low": tok[1], "token_s_high": tok[2],
        "tokens_per_s": tps[0], "tokens_per_s_low": tps[1], "tokens_per_s_high": tps[2],
        "energy_per_token_j": e[0], "energy_low": e[1], "energy_high": e[2],
        "fits": None if p.get("fits") is None else int(bool(p["fits"])),
        "flash_needed": mem.get("flash_bytes"), "ram_needed": mem.get("ram_bytes"),
        "flash_available": mem.get("flash_available"), "ram_available": mem.get("ram_available"),
        "prefill_cycles": _finite(cyc.get("prefill")), "token_cycles": _finite(cyc.get("per_token")),
        "twin_mode": twin.get("mode"), "confidence": twin.get("confidence"), "proxy": twin.get("proxy"),
        "kernels": twin.get("kernels"), "notes": json.dumps(p.get("notes") or []),
    }
