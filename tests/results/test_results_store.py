"""The results store (twin/results/store.py): schema migrations, the query API's columns, atomic cells
(a writer killed by SIGKILL at any instant leaves only whole cells), exports. No emulator needed."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from twin.results import store as st
from twin.results.store import MIGRATIONS, SCHEMA_VERSION, ResultsStore, StoreError

CLASSES = ["alu", "load", "store", "mul", "div", "branch", "fp", "fdiv", "simd", "other"]
TABLES = {"runs", "counts", "class_counts", "token_counts", "function_counts", "memory", "predictions"}


def fake_report(n_tokens: int = 6, n_functions: int = 12, platform: str = "mps2-an386", seed: int = 0) -> dict:
    """A report shaped like twin.runner.run's (the keys the store reads)."""
    rnd = random.Random(seed)
    decode = [900_000 + 7_000 * i + rnd.randrange(100) for i in range(n_tokens)]
    pre = {c: rnd.randrange(1, 10**6) for c in CLASSES}
    dec = {c: rnd.randrange(1, sum(decode) // len(CLASSES)) for c in CLASSES[:-1]}
    dec[CLASSES[-1]] = sum(decode) - sum(dec.values())          # the classes add up to the phase
    prefill = sum(pre.values())
    functions = sorted(({"name": f"fn_{i}", "instructions": rnd.randrange(1, 10**6)} for i in range(n_functions)),
                       key=lambda f: -f["instructions"])
    return {
        "platform": platform, "model": "builtin-q4g32", "bits": 4, "kv_cache": "f32",
        "prompt_tokens": list(range(11)), "prompt_note": None, "tokens": [40 + i for i in range(n_tokens)],
        "text": "x" * n_tokens, "reference_tokens": [40 + i for i in range(n_tokens)], "matches_reference": True,
        "instructions": {"total": prefill + sum(decode), "by_class": {c: pre[c] + dec[c] for c in CLASSES},
                         "by_phase": {"validate": 1_723_811, "prefill": prefill, "decode": decode},
                         "by_phase_class": {"prefill": pre, "decode": dec},
                         "branches": {"taken": 5, "not_taken": 6, "unresolved": 0},
                         "by_phase_branches": {"prefill": {"taken": 2, "not_taken": 3, "unresolved": 0},
                                               "decode": {"taken": 3, "not_taken": 3, "unresolved": 0}},
                         "by_phase_fetch_bytes": {"prefill": 2 * prefill, "decode": 2 * sum(decode)}},
        "functions": functions, "memory_traffic": None,
        "cycles": {"counter": "none", "prefill": 0, "decode": [0] * n_tokens},
        "memory": {"flash_bytes": 20284, "ram_static_bytes": 1600, "stack_peak_bytes": 572, "arena_bytes": 96072,
                   "model_image_bytes": 170544, "ram_bytes": 4194304},
        "firmware": {"build_id": "04ba0ce7faad", "elf": "/x.elf", "kernels": "arm_dsp"},
        "clock_hz": 25_000_000, "board": None, "wall_seconds": 0.2,
    }


def fake_prediction(board: str, tps: float = 75.0) -> dict:
    t = 1 / tps

    def iv(v, lo=0.4, hi=0.4):
        return {"value": v, "low": v * (1 - lo), "high": v * (1 + hi)}

    return {"platform": board, "model": "builtin-q4g32", "clock_mhz": 120.0, "calibration": "prior",
            "calibration_info": {"id": "prior", "model": "prior", "residual": False},
            "ttft_seconds": iv(10 * t), "token_seconds": iv(t),
            "tokens_per_second": {"value": tps, "low": tps / 1.4, "high": tps / 0.6},
            "energy_per_token_joules": {"value": None, "low": None, "high": None},
            "fits": True, "memory": {"flash_bytes": 190828, "ram_bytes": 98244, "flash_available": 2 << 20,
                                     "ram_available": 640 << 10},
            "twin": {"mode": "proxy", "proxy": "mps2-an386", "confidence": "medium", "cross_core": False,
                     "kernels": "arm_dsp"},
            "cycles": {"prefill": 1.4e7, "per_token": 1.6e6, "wait_states": 4}, "notes": ["a", "b"]}


META = {"build_id": "04ba0ce7faad", "compiler": "gcc 12", "cflags": "-O2", "qemu_version": "QEMU 7.2",
        "git_commit": "abc123", "created_at": "2026-01-01T00:00:00Z", "host": "h", "model_sha256": "f" * 64,
        "recipe": "q4g32"}
SPEC = {"platform": "mps2-an386", "model": "builtin", "bits": 4, "prompt_tokens": None, "tokens": 6, "seed": 0,
        "kv_cache": "f32"}


def test_new_file_and_empty_file_migrate_from_version_0_and_reopen_idempotently(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")              # version 0: a zero-length file is an empty database
    plain = tmp_path / "plain.sqlite"
    sqlite3.connect(plain).close()      # a database with no tables, user_version 0
    for path in (tmp_path / "new.sqlite", empty, plain):
        with ResultsStore(path) as s:
            assert s.version == SCHEMA_VERSION == len(MIGRATIONS)
            s.record("k", SPEC, fake_report(), [fake_prediction("b1")], None, META)
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert TABLES <= {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        schema = con.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
        con.close()
        for _ in range(2):               # re-open: nothing applied again, the data kept
            with ResultsStore(path) as s:
                assert s.version == SCHEMA_VERSION and len(s) == 1 and s.done("k")
        con = sqlite3.connect(path)
        assert con.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == schema
        con.close()


def test_migrations_apply_in_order_from_any_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.sqlite"
    with ResultsStore(path) as s:
        s.record("k", SPEC, fake_report(), [], None, META)
    extra = "ALTER TABLE runs ADD COLUMN note TEXT; CREATE TABLE seen (x INTEGER); INSERT INTO seen VALUES (1)"
    monkeypatch.setattr(st, "MIGRATIONS", [*MIGRATIONS, extra])
    monkeypatch.setattr(st, "SCHEMA_VERSION", len(MIGRATIONS) + 1)
    for _ in range(2):
        with ResultsStore(path) as s:
            assert s.version == len(MIGRATIONS) + 1 and s.done("k")
    con = sqlite3.connect(path)
    assert con.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 1     # applied exactly once
    con.close()


def test_refuses_newer_schema_and_foreign_files_in_one_line(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    con = sqlite3.connect(newer)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="newer than this twin"):
        ResultsStore(newer)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database, certainly not one of ours" * 100)
    with pytest.raises(StoreError, match="cannot be opened") as exc:
        ResultsStore(junk)
    assert "\n" not in str(exc.value)
    with pytest.raises(StoreError, match="is a directory"):
        ResultsStore(tmp_path)
    with pytest.raises(StoreError, match="does not exist"):
        ResultsStore(tmp_path / "no" / "such.sqlite")


def test_query_api_columns_and_values(tmp_path: Path) -> None:
    rep = fake_report(n_tokens=5, n_functions=7)
    with ResultsStore(tmp_path / "r.sqlite") as s:
        rid = s.record("ok-cell", SPEC, rep, [fake_prediction("b1"), fake_prediction("b2", 50.0)], None, META)
        s.record("bad-cell", {**SPEC, "bits": 8}, None, [], "RunError: the model does not fit", META)
        runs = s.runs()
        assert list(runs.columns[:len(st.RUN_COLUMNS)]) == [
            "run_id", "cell_key", "status", "error", "platform", "model", "model_sha256", "bits", "recipe",
            "kv_cache", "prompt_tokens", "tokens", "seed", "build_id", "compiler", "cflags", "qemu_version",
            "git_commit", "created_at", "host", "wall_seconds", "instructions_total", "prefill_instructions",
            "decode_instructions_mean", "flash_bytes", "ram_static_bytes", "arena_bytes", "stack_peak_bytes",
            "model_image_bytes", "ram_bytes", "matches_reference"]
        ok = runs.set_index("cell_key").loc["ok-cell"]
        assert ok.status == "ok" and pd.isna(ok.error) and ok.run_id == rid
        assert ok.instructions_total == rep["instructions"]["total"]
        assert ok.prefill_instructions == rep["instructions"]["by_phase"]["prefill"]
        dec = rep["instructions"]["by_phase"]["decode"]
        assert ok.decode_instructions_mean == pytest.approx(sum(dec) / len(dec))
        assert (ok.prompt_tokens, ok.tokens, ok.bits, ok.recipe, ok.kv_cache) == (11, 5, 4, "q4g32", "f32")
        assert ok.matches_reference and ok.ram_bytes == 4194304 and ok.arena_bytes == 96072
        for k in ("build_id", "compiler", "cflags", "qemu_version", "git_commit", "created_at", "host", "model_sha256"):
            assert ok[k] == META[k]
        bad = runs.set_index("cell_key").loc["bad-cell"]
        assert bad.status == "failed" and bad.error.startswith("RunError") and bad.bits == 8
        assert pd.isna(bad.instructions_total) and pd.isna(bad.matches_reference)
        assert list(s.runs("status == 'failed'").cell_key) == ["bad-cell"]
        with pytest.raises(StoreError, match="runs query"):
            s.runs("no_such_column > 1")

        tok = s.token_counts()
        assert list(tok.columns[:3]) == ["run_id", "position", "instructions"]
        assert list(tok.instructions) == dec and list(tok.position) == list(range(5))
        assert list(tok.context) == list(range(11, 16))
        fn = s.functions()
        assert list(fn.columns) == ["run_id", "phase", "function", "instructions"]
        assert list(zip(fn.function, fn.instructions, strict=True)) == [(f["name"], f["instructions"])
                                                                         for f in rep["functions"]]
        cl = s.classes()
        assert list(cl.columns) == ["run_id", "phase", "cls", "instructions"]
        for phase in ("prefill", "decode"):
            got = dict(cl[cl.phase == phase][["cls", "instructions"]].itertuples(index=False))
            assert got == rep["instructions"]["by_phase_class"][phase]
        assert cl.instructions.sum() == rep["instructions"]["total"]
        pr = s.predictions()
        assert list(pr.columns[:len(st.PREDICTION_COLUMNS)]) == [
            "run_id", "board", "calibration", "ttft_s", "ttft_s_low", "ttft_s_high", "token_s", "token_s_low",
            "token_s_high", "tokens_per_s", "energy_per_token_j", "energy_low", "energy_high", "fits",
            "flash_needed", "ram_needed", "flash_available", "ram_available", "clock_mhz"]
        b2 = pr.set_index("board").loc["b2"]
        assert b2.tokens_per_s == 50.0 and b2.token_s == pytest.approx(1 / 50) and b2.fits
        assert pd.isna(b2.energy_per_token_j) and b2.clock_mhz == 120.0 and b2.calibration == "prior"


def test_a_cell_is_replaced_whole_and_a_failing_write_leaves_nothing(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as s:
        s.record("k", SPEC, fake_report(n_tokens=8), [fake_prediction("b1"), fake_prediction("b2")], None, META)
        s.record("k", SPEC, fake_report(n_tokens=3), [fake_prediction("b1")], None, META)    # a retry
        assert len(s) == 1 and len(s.token_counts()) == 3 and len(s.predictions()) == 1
        assert len(s.classes()) == 2 * len(CLASSES)
        broken = fake_report(n_functions=30)
        broken["functions"][17]["instructions"] = None      # NOT NULL fails after the run row is in
        with pytest.raises(TypeError):
            s.record("k2", SPEC, broken, [], None, META)
        bad = fake_report()
        bad["functions"] = [{"name": "f", "instructions": 1}, {"name": "f", "instructions": 2}]   # duplicate key
        with pytest.raises(sqlite3.IntegrityError):
            s.record("k", SPEC, bad, [], None, META)
        assert s.keys() == {"k"} and len(s.token_counts()) == 3     # the earlier result of k intact
        assert s.delete("k") and len(s) == 0 and s.functions().empty and s.predictions().empty


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json"])
def test_export_runs_joined_with_predictions(tmp_path: Path, fmt: str) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as s:
        s.record("a", SPEC, fake_report(), [fake_prediction("b1"), fake_prediction("b2", 40.0)], None, META)
        s.record("f", SPEC, None, [], "EmulatorError: hung", META)
        out = s.export(tmp_path / f"x.{fmt}")
        with pytest.raises(StoreError, match="export format"):
            s.export(tmp_path / "x.xlsx")
    if fmt == "csv":
        df = pd.read_csv(out)
    elif fmt == "parquet":
        df = pd.read_parquet(out)
    else:
        rows = json.loads(out.read_text())       # strict JSON (null, never NaN)
        df = pd.DataFrame(rows)
    assert len(df) == 3                           # a: two boards; f: once, without a prediction
    assert {"cell_key", "status", "board", "tokens_per_s", "instructions_total"} <= set(df.columns)
    a = df[df.cell_key == "a"].sort_values("board")
    assert list(a.board) == ["b1", "b2"] and list(a.tokens_per_s) == [75.0, 40.0]
    assert df[df.cell_key == "f"].board.isna().all()


# A writer that records synthetic cells as fast as it can (big cells: many rows per transaction).
WRITER = textwrap.dedent("""
    import json, sys
    from twin.results.store import ResultsStore
    db, payload, start = sys.argv[1], json.loads(open(sys.argv[2]).read()), int(sys.argv[3])
    s = ResultsStore(db)
    i = start
    while True:
        s.record(f"cell-{i}", payload["spec"], payload["report"], payload["predictions"], None, payload["meta"])
        i += 1
""")


def _check_whole(db: Path, n_tokens: int, n_functions: int, n_preds: int) -> int:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        runs = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'ok'")]
        for table, n in (("counts", 1), ("memory", 1), ("class_counts", 2 * len(CLASSES)), ("token_counts", n_tokens),
                         ("function_counts", n_functions), ("predictions", n_preds)):
            per = dict(con.execute(f"SELECT run_id, COUNT(*) FROM {table} GROUP BY run_id").fetchall())
            assert set(per) == set(runs), table                      # no orphan rows, no run without its rows
            assert set(per.values()) <= {n}, table
        return len(runs)
    finally:
        con.close()


@pytest.mark.slow
def test_sigkill_at_any_instant_leaves_only_whole_cells(tmp_path: Path) -> None:
    n_tokens, n_functions, n_preds = 48, 400, 6
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"spec": SPEC, "meta": META,
                                   "report": fake_report(n_tokens=n_tokens, n_functions=n_functions),
                                   "predictions": [fake_prediction(f"b{i}") for i in range(n_preds)]}))
    db = tmp_path / "r.sqlite"
    rnd = random.Random(11)
    stored = 0
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(payload), str(10_000 * attempt)],
                                start_new_session=True)
        deadline = time.monotonic() + 60
        while _count(db) <= stored and time.monotonic() < deadline:     # at least one more cell committed
            time.sleep(0.02)
        time.sleep(rnd.uniform(0.0, 0.3))                                # then any instant, mid-transaction likely
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        now = _check_whole(db, n_tokens, n_functions, n_preds)
        assert now > stored                                               # every committed cell survives
        stored = now
    with ResultsStore(db) as s:                                           # and the store opens and reads
        assert len(s) == stored and len(s.token_counts()) == stored * n_tokens


def _count(db: Path) -> int:
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:        # not created yet
        return 0
