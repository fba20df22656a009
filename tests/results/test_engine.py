"""The matrix engine (twin/results/engine.py) with real emulators: a matrix lands in the store with the
counts of single runs, a re-run skips finished cells, failing cells are stored and the batch goes on,
kill -9 mid-batch loses nothing finished, the Dask path equals the pool, ten concurrent sessions do not
interfere. Few tokens (4) keep it fast."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from twin.cli.main import _emulated
from twin.platforms import ROOT  # the repository
from twin.profile.isa import CLASSES
from twin.results import engine
from twin.results.engine import Cell, matrix, run_matrix
from twin.results.store import ResultsStore
from twin.runner import RunSpec, run

pytestmark = pytest.mark.qemu
TOKENS = 4
BITS = (4, 8)
TWIN = str(Path(sys.executable).with_name("twin"))
PROVENANCE = {"run_id", "created_at", "wall_seconds", "host"}      # differ between two runs of one cell


@pytest.fixture(scope="module")
def cells() -> list[Cell]:
    return matrix(_emulated(), bits=BITS, tokens=TOKENS)


@pytest.fixture(scope="module")
def pool_db(tmp_path_factory, cells) -> tuple[Path, dict]:
    db = tmp_path_factory.mktemp("pool") / "r.sqlite"
    seen = []
    summary = run_matrix(cells, db, workers=2, on_progress=lambda p: seen.append((p.finished, p.ok, p.failed)))
    assert seen[0] == (0, 0, 0) and seen[-1] == (len(cells), len(cells), 0)
    return db, summary


def cell_counts(s: ResultsStore) -> dict[str, dict]:
    """Everything a cell's counts are, by cell key: totals, per token, by class, by function, memory."""
    runs = s.runs()
    tok, cls, fn = s.token_counts(), s.classes(), s.functions()
    out = {}
    for r in runs.itertuples():
        out[r.cell_key] = {
            "status": r.status, "total": r.instructions_total, "prefill": r.prefill_instructions,
            "decode": list(tok[tok.run_id == r.run_id].instructions),
            "classes": {(p, c): v for p, c, v in cls[cls.run_id == r.run_id][["phase", "cls", "instructions"]]
                        .itertuples(index=False)},
            "functions": list(fn[fn.run_id == r.run_id][["function", "instructions"]].itertuples(index=False, name=None)),
            "memory": tuple(getattr(r, k) for k in ("flash_bytes", "ram_static_bytes", "arena_bytes",
                                                   "stack_peak_bytes", "model_image_bytes", "ram_bytes")),
            "build_id": r.build_id, "matches_reference": r.matches_reference, "model_sha256": r.model_sha256,
        }
    return out


def test_matrix_lands_in_the_store_with_the_counts_of_single_runs(pool_db, cells) -> None:
    db, summary = pool_db
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (len(cells), 0, 0)
    assert len(cells) == 2 * len(_emulated()) >= 10
    with ResultsStore(db) as s:
        stored = cell_counts(s)
        runs = s.runs().set_index("cell_key")
        preds = s.predictions()
    assert set(stored) == {c.key for c in cells}
    for c in cells:
        r = run(RunSpec(platform=c.platform, bits=c.bits, tokens=TOKENS))      # as `twin run --json`
        got = stored[c.key]
        ins = r["instructions"]
        assert got["status"] == "ok" and bool(got["matches_reference"])
        assert got["total"] == ins["total"] and got["prefill"] == ins["by_phase"]["prefill"]
        assert got["decode"] == ins["by_phase"]["decode"]
        assert got["classes"] == {(p, k): v for p, d in ins["by_phase_class"].items() for k, v in d.items()}
        assert got["functions"] == [(f["name"], f["instructions"]) for f in r["functions"]]
        m = r["memory"]
        assert got["memory"] == (m["flash_bytes"], m["ram_static_bytes"], m["arena_bytes"], m["stack_peak_bytes"],
                                 m["model_image_bytes"], m["ram_bytes"])
        assert got["build_id"] == r["firmware"]["build_id"]
        row = runs.loc[c.key]
        assert (row.platform, row.bits, row.tokens, row.prompt_tokens) == (c.platform, c.bits, TOKENS,
                                                                          len(r["prompt_tokens"]))
        assert row.model == r["model"] and row.recipe == f"q{c.bits}g32" and len(row.model_sha256) == 64
        assert row.qemu_version.startswith("QEMU emulator version") and row.compiler and "-O2" in row.cflags
        assert row.git_commit and row.created_at.endswith("Z")
        boards = set(preds[preds.run_id == row.run_id].board)
        assert c.platform in boards                        # an emulated platform predicts itself (exact twin)
    # the predictions are the what-if of `twin demo` from the same counts
    c = cells[0]
    report = run(engine.run_spec(c))
    expected, _ = engine.predictions_for(report)
    with ResultsStore(db) as s:
        pr = s.predictions()
        rid = int(s.runs(f"cell_key == '{c.key}'").run_id.iloc[0])
    mine = pr[pr.run_id == rid].set_index("board")
    assert sorted(mine.index) == sorted(p["platform"] for p in expected)
    for p in expected:
        assert mine.loc[p["platform"]].tokens_per_s == pytest.approx(p["tokens_per_second"]["value"], rel=1e-12)
        assert bool(mine.loc[p["platform"]].fits) == p["fits"]


def test_a_rerun_skips_finished_cells(pool_db, cells, tmp_path: Path) -> None:
    db, _ = pool_db
    with ResultsStore(db) as s:
        before = s.runs()[["cell_key", "run_id", "created_at"]]
    summary = run_matrix(cells, db)
    assert (summary["ran"], summary["skipped"]) == (0, len(cells))
    with ResultsStore(db) as s:
        assert s.runs()[["cell_key", "run_id", "created_at"]].equals(before)
    # a store missing one cell runs exactly that one
    part = tmp_path / "part.sqlite"
    run_matrix(cells[:3], part, workers=2)
    summary = run_matrix(cells[:4], part, workers=2)
    assert (summary["ran"], summary["skipped"], summary["ok"]) == (1, 3, 1)


def test_failing_cells_are_stored_with_their_error_and_the_batch_goes_on(tmp_path: Path) -> None:
    big = tmp_path / "big.twlm"          # 1.3 MB: larger than stm32f4-disco's 768 KiB model partition
    subprocess.run([TWIN, "image", "--from", str(ROOT / "models" / "austen-1m.npz"),
                    "-o", str(big), "--bits", "8"], check=True, capture_output=True)
    torn = tmp_path / "torn.twlm"
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 0xFF           # a flipped byte: the image's CRC fails
    torn.write_bytes(bytes(data))
    good = Cell("mps2-an386", tokens=TOKENS)
    bad = {Cell("stm32f4-disco", model=str(big), bits=None, tokens=TOKENS): "larger than stm32f4-disco's model partition",
           Cell("mps2-an386", model=str(torn), bits=None, tokens=TOKENS): "CRC",
           Cell("mps2-an500", tokens=TOKENS, timeout=0.001): "hung",    # no reply in time: killed as hung
           Cell("mps2-an386", tokens=60, prompt_tokens=8): "exceed the model's context"}
    db = tmp_path / "r.sqlite"
    summary = run_matrix([*bad, good], db, workers=2)
    assert (summary["ok"], summary["failed"]) == (1, len(bad))
    with ResultsStore(db) as s:
        runs = s.runs().set_index("cell_key")
        assert runs.loc[good.key].status == "ok"
        for cell, why in bad.items():
            row = runs.loc[cell.key]
            assert row.status == "failed" and why in row.error and "\n" not in row.error, row.error
        assert set(s.token_counts().run_id) == {runs.loc[good.key].run_id}     # no rows of failed cells
    assert {f["cell_key"] for f in summary["failures"]} == {c.key for c in bad}
    # failed cells count as done; --retry-failed runs them again
    assert run_matrix([*bad, good], db)["ran"] == 0
    again = run_matrix([*bad, good], db, retry_failed=True, workers=2)
    assert (again["ran"], again["failed"], again["skipped"]) == (len(bad), len(bad), 1)


KILLED_BATCH = textwrap.dedent("""
    import sys
    from twin.cli.main import _emulated
    from twin.results.engine import matrix, run_matrix
    run_matrix(matrix(_emulated(), bits=(4, 8), tokens=4), sys.argv[1], workers=2)
""")


def _ok_rows(db: Path) -> int:
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status = 'ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def test_kill_9_mid_batch_loses_nothing_finished_and_leaves_no_half_cell(pool_db, cells, tmp_path: Path) -> None:
    db = tmp_path / "killed.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BATCH, str(db)], start_new_session=True)
    deadline = time.monotonic() + 120
    while _ok_rows(db) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)           # the batch, its workers and their emulators
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the batch finished before it could be killed"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ok = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'ok'")]
    assert 2 <= len(ok) < len(cells)
    for table, per_run in (("counts", {1}), ("memory", {1}), ("token_counts", {TOKENS}), ("class_counts", {2 * len(CLASSES)})):
        counts = dict(con.execute(f"SELECT run_id, COUNT(*) FROM {table} GROUP BY run_id").fetchall())
        assert set(counts) == set(ok) and set(counts.values()) == per_run, table
    for table in ("function_counts", "predictions"):
        assert {r[0] for r in con.execute(f"SELECT DISTINCT run_id FROM {table}")} == set(ok), table
    con.close()
    summary = run_matrix(cells, db, workers=2)       # resume: only the rest runs
    assert summary["skipped"] == len(ok) and summary["ran"] == len(cells) - len(ok) and summary["failed"] == 0
    with ResultsStore(db) as s, ResultsStore(pool_db[0]) as clean:
        assert cell_counts(s) == cell_counts(clean)


def _comparable(s: ResultsStore):
    """The runs and predictions without what differs between two runs of a cell (ids, times, host)."""
    runs = s.runs()
    keys = dict(runs[["run_id", "cell_key"]].itertuples(index=False))
    preds = s.predictions()
    preds["cell_key"] = preds.run_id.map(keys)
    preds = preds.drop(columns=["run_id"]).sort_values(["cell_key", "board"]).reset_index(drop=True)
    runs = runs.drop(columns=sorted(PROVENANCE)).sort_values("cell_key").reset_index(drop=True)
    return runs, preds


def test_dask_path_gives_identical_results_to_the_pool(pool_db, cells, tmp_path: Path) -> None:
    pytest.importorskip("dask.distributed", reason="dask[distributed] not installed (the engine extra)")
    from dask.distributed import LocalCluster

    db = tmp_path / "dask.sqlite"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = run_matrix(cells, db, scheduler=cluster)
        assert summary["backend"] == "dask" and (summary["ok"], summary["failed"]) == (len(cells), 0)
        assert run_matrix(cells, db, scheduler=cluster.scheduler_address)["ran"] == 0    # by address too
    with ResultsStore(db) as s, ResultsStore(pool_db[0]) as pool:
        assert cell_counts(s) == cell_counts(pool)
        for mine, theirs in zip(_comparable(s), _comparable(pool), strict=True):
            pd.testing.assert_frame_equal(mine, theirs)


@pytest.mark.slow
def test_ten_concurrent_sessions_from_an_empty_cache_do_not_interfere(tmp_path: Path) -> None:
    """Ten `twin profile` processes at once, one store, a cache none of them has built yet: one firmware,
    one plugin, images written once each; every cell equals a single run."""
    cache = tmp_path / "cache"
    db = tmp_path / "shared.sqlite"
    env = {**os.environ, "TWIN_CACHE": str(cache)}
    sessions = [(b, n) for b in BITS for n in (2, 3, 4, 5, 6)]
    procs = [subprocess.Popen([TWIN, "profile", "--platforms", "mps2-an386",
                               "--bits", str(b), "--prompt-lengths", str(n), "--tokens", str(TOKENS), "--db", str(db),
                               "--workers", "1", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for b, n in sessions]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out)["ok"] == 1
    assert len(list((cache / "firmware").glob("mps2-an386-*.elf"))) == 1
    assert len(list((cache / "images").glob("*.twlm"))) == len(BITS)
    leftovers = [p for p in cache.rglob("*") if p.is_file() and (p.name.startswith((".", "tmp")) or "staging" in p.name)]
    assert not leftovers
    with ResultsStore(db) as s:
        stored = cell_counts(s)
    assert len(stored) == len(sessions)
    for b, n in sessions:
        cell = Cell("mps2-an386", bits=b, prompt_tokens=n, tokens=TOKENS)
        r = run(RunSpec(platform="mps2-an386", bits=b, tokens=TOKENS, prompt=engine.prompt_text("builtin", n)))
        got = stored[cell.key]
        assert len(r["prompt_tokens"]) == n
        assert (got["total"], got["decode"]) == (r["instructions"]["total"], r["instructions"]["by_phase"]["decode"])
        assert got["functions"] == [(f["name"], f["instructions"]) for f in r["functions"]]


def test_a_worker_process_that_dies_fails_its_cell_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = engine.run_spec

    def deadly(cell):          # the forked workers inherit this: the cell with seed 666 kills its worker
        if cell.seed == 666:
            os._exit(9)
        return real(cell)

    monkeypatch.setattr(engine, "run_spec", deadly)
    good = [Cell("mps2-an386", tokens=TOKENS, seed=s) for s in (1, 2, 3)]
    killer = Cell("mps2-an386", tokens=TOKENS, seed=666)
    summary = run_matrix([good[0], killer, *good[1:]], tmp_path / "r.sqlite", workers=2)
    assert (summary["ok"], summary["failed"]) == (3, 1)
    assert summary["failures"] == [{"cell_key": killer.key, "error": summary["failures"][0]["error"]}]
    assert "worker process died" in summary["failures"][0]["error"]


def _twin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TWIN, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (("--platforms", "nope"), "unknown platform 'nope'"),
    (("--platforms", "nucleo-h743zi"), "has no emulator model (`--platforms mps2-an500`"),
    (("--bits", "5"), "5 is not one of 2, 3, 4, 8"),
    (("--prompt-lengths", "0"), "at least 1"),
    (("--tokens", "x"), "'x' is not a whole number"),
    (("--models", "missing.twlm"), "model file missing.twlm not found"),
    (("--workers", "2", "--scheduler", "tcp://127.0.0.1:1"), "give one of them"),
    (("--scheduler", "nonsense"), "Dask scheduler nonsense"),
])
def test_twin_profile_refuses_in_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    if "nonsense" in args:
        pytest.importorskip("dask.distributed", reason="dask[distributed] not installed (the engine extra)")
    r = _twin("profile", "--db", str(tmp_path / "r.sqlite"), "--tokens", "2", *args)
    assert r.returncode == 2 if "Usage" in r.stderr else r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_twin_profile_json_summary_and_exit_status(tmp_path: Path) -> None:
    db = str(tmp_path / "r.sqlite")
    r = _twin("profile", "--platforms", "mps2-an386", "--prompt-lengths", "4,60", "--tokens", "8", "--db", db, "--json")
    assert r.returncode == 1 and r.stderr == ""                 # a failed cell: exit 1, quiet with --json
    out = json.loads(r.stdout)
    assert (out["cells"], out["ok"], out["failed"]) == (2, 1, 1)
    assert out["failures"][0]["cell_key"].startswith("mps2-an386/builtin/q4g32/p60/t8")
    r = _twin("profile", "--platforms", "mps2-an386", "--prompt-lengths", "4", "--tokens", "8", "--db", db)
    assert r.returncode == 0 and "1 already stored" in r.stdout and r.stderr == ""    # piped: no progress bar
