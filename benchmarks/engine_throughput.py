"""Matrix engine throughput: profiles per hour on this machine for the built-in model, 16 tokens, across
the emulated platforms (twin/results/engine.py into a fresh results store), beside the single-run wall
time measured in the same run, and the store's size per 1,000 runs. Printed, not asserted.

    .venv/bin/python benchmarks/engine_throughput.py [--cells 100] [--workers 2,4] [--tokens 16] [--dask]

The cells are the emulated platforms × seeds (distinct cells of the same work: greedy decoding, so the
seed changes no token). The issue's seed floor is 1,000 profiles/hour, its goal 12,000 on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from twin.cli.main import _emulated
from twin.results.engine import Cell, default_workers, profile_cell, run_matrix
from twin.results.store import ResultsStore
from twin.runner import RunSpec, run


def single_runs(platforms: list[str], tokens: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Per platform: median wall of twin.runner.run and of the engine's profile_cell (run + predictions)."""
    out = {}
    for p in platforms:
        run(RunSpec(platform=p, tokens=tokens))          # warm: firmware, plugin, image caches
        runs, cells = [], []
        for i in range(repeats):
            t = time.perf_counter()
            run(RunSpec(platform=p, tokens=tokens))
            runs.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = profile_cell(Cell(p, tokens=tokens, seed=1000 + i))
            cells.append(time.perf_counter() - t)
            assert r["error"] is None, r["error"]
        out[p] = (statistics.median(runs), statistics.median(cells))
    return out


def batch(cells: list[Cell], workers: int | None = None, scheduler=None) -> tuple[dict, int]:
    with tempfile.TemporaryDirectory(prefix="twin-bench-engine-") as tmp:
        db = Path(tmp) / "r.sqlite"
        summary = run_matrix(cells, db, workers=workers, scheduler=scheduler)
        with ResultsStore(db) as s:       # a checkpointed file: its size without the WAL
            s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = os.path.getsize(db)
    return summary, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--workers", default=None, help="comma-separated pool sizes [default: one per core, then 2x]")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5, help="single runs per platform")
    ap.add_argument("--dask", action="store_true", help="also a Dask LocalCluster (one worker process per core)")
    args = ap.parse_args()

    platforms = _emulated()
    cores = default_workers()
    print(f"engine throughput: built-in model, {args.tokens} tokens, {len(platforms)} emulated platforms, "
          f"{cores} cores ({os.cpu_count()} CPUs)")
    singles = single_runs(platforms, args.tokens, args.repeats)
    print(f"\nsingle runs (median of {args.repeats}, sequential, warm caches)")
    print(f"  {'platform':<16}{'twin.runner.run':>17}{'profile_cell':>14}")
    for p, (r, c) in singles.items():
        print(f"  {p:<16}{r:>15.3f} s{c:>12.3f} s")
    mean_run = statistics.mean(r for r, _ in singles.values())
    mean_cell = statistics.mean(c for _, c in singles.values())
    print(f"  {'mean':<16}{mean_run:>15.3f} s{mean_cell:>12.3f} s   → one process, back to back: "
          f"{3600 / mean_cell:,.0f} profiles/hour")

    seeds = -(-args.cells // len(platforms))
    cells = [Cell(p, tokens=args.tokens, seed=s) for s in range(seeds) for p in platforms][: args.cells]
    pools = [int(w) for w in args.workers.split(",")] if args.workers else [cores, 2 * cores]
    print(f"\nmatrix of {len(cells)} cells into a fresh store (run, predictions of every catalog board, one "
          "transaction per cell)")
    print(f"  {'backend':<22}{'wall':>9}{'profiles/hour':>15}{'per cell':>10}{'store/1000 runs':>17}")
    for w in pools:
        summary, size = batch(cells, workers=w)
        assert summary["failed"] == 0, summary["failures"][:3]
        wall = summary["wall_seconds"]
        print(f"  {f'pool, {w} workers':<22}{wall:>7.2f} s{summary['profiles_per_hour']:>15,}"
              f"{wall / len(cells):>8.3f} s{size / len(cells) * 1000 / 2**20:>13.1f} MiB")
    if args.dask:
        from dask.distributed import LocalCluster

        with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            batch(cells[: 2 * cores], scheduler=cluster)          # warm the workers' imports and caches
            summary, size = batch(cells, scheduler=cluster)
        wall = summary["wall_seconds"]
        print(f"  {f'dask, {cores} workers':<22}{wall:>7.2f} s{summary['profiles_per_hour']:>15,}"
              f"{wall / len(cells):>8.3f} s{size / len(cells) * 1000 / 2**20:>13.1f} MiB")
    print("\n(the issue: seed floor 1,000 profiles/hour, goal 12,000/hour on 2 cores; one run goal ≤ 0.25 s)")


if __name__ == "__main__":
    main()
