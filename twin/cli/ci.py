"""`twin ci`: the matrix against a baseline, for CI without hardware (twin.results.gate; docs/ci.md)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from twin import atomic
from twin.cli.main import TwinCliError, _emulated

EXIT_BROKEN = 2


@click.command("ci")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="The matrix and threshold (twin-ci.yaml; default: ./twin-ci.yaml if present, else the "
                   "built-in model at 4 bits, 8 tokens, on every emulated platform).")
@click.option("--baseline", required=True, type=click.Path(dir_okay=False), help="The baseline JSON file.")
@click.option("--threshold", default=None, help="Growth that fails, e.g. 2% (default: the config's, else 2%).")
@click.option("--db", default=None, type=click.Path(dir_okay=False),
              help="Results store to run into / read from (default: a temporary one).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: one per core).")
@click.option("--junit", type=click.Path(dir_okay=False), default=None, help="Write JUnit XML here.")
@click.option("--summary", type=click.Path(dir_okay=False), default=None,
              help="Write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).")
@click.option("--update-baseline", is_flag=True, help="Write the current results as the baseline and pass.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
def ci_cmd(config: str | None, baseline: str, threshold: str | None, db: str | None, workers: int | None,
           junit: str | None, summary: str | None, update_baseline: bool, as_json: bool) -> None:
    """Run the CI matrix and compare it with a baseline: exit 1 on a regression, 2 on a broken set-up."""
    from twin.results import gate
    from twin.results.engine import run_matrix

    try:
        cfg_path = Path(config) if config else (Path("twin-ci.yaml") if Path("twin-ci.yaml").is_file() else None)
        cfg = gate.load_config(cfg_path, _emulated())
        limit = _threshold(threshold, cfg.threshold_percent)
        base = None if update_baseline else gate.load_baseline(Path(baseline))
        for out in (junit, summary) + ((baseline,) if update_baseline else ()):
            if out:
                atomic.check_output_path(out, "CI output")
    except (gate.GateError, atomic.OutputPathError, TwinCliError) as exc:
        _broken(str(exc))
    with tempfile.TemporaryDirectory(prefix="twin-ci-") as tmp:
        store_path = Path(db) if db else Path(tmp) / "ci.sqlite"
        try:
            run_matrix(cfg.cells, store_path, workers=workers)
            from twin.results.store import ResultsStore

            with ResultsStore(store_path) as store:
                current = gate.current_metrics(store, cfg.cells)
        except Exception as exc:  # noqa: BLE001 — any failure to run the matrix is a broken set-up
            _broken(f"the CI matrix could not run: {exc}")
    if update_baseline:
        ok = sum(1 for v in current.values() if v["status"] == "ok")
        if ok == 0:
            _broken("no cell ran: nothing to record as a baseline")
        gate.write_baseline(current, Path(baseline), limit)
        message = {"baseline": baseline, "cells": ok, "failed": len(current) - ok}
        click.echo(json.dumps(message) if as_json else f"baseline {baseline}: {ok} cells recorded")
        return
    result = gate.compare(current, base, limit)
    if junit:
        atomic.write_text(junit, gate.junit_xml(result))
    if summary:
        atomic.write_text(summary, gate.markdown_summary(result))
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(gate.markdown_summary(result).rstrip())
    sys.exit(result.exit_code)


def _threshold(text: str | None, default: float) -> float:
    if text is None:
        return default
    t = text.strip().rstrip("%")
    try:
        v = float(t)
    except ValueError:
        raise TwinCliError(f"--threshold {text!r}: give a percentage, e.g. 2%") from None
    if not (0 <= v < 1000):
        raise TwinCliError(f"--threshold {text!r}: give a percentage in [0, 1000)")
    return v


def _broken(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_BROKEN)
