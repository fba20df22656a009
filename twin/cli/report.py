"""`twin recommend`, `twin report` and `twin export`: the results store's analysis, HTML reports and
trace exports (a thin skin over twin.results.analysis, report and export; docs/results.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from twin.cli.main import FiniteFloat, TwinCliError

DEFAULT_DB = "twin-results.sqlite"        # twin.results.store.DEFAULT_DB (not imported: keeps --help fast)


class Headroom(FiniteFloat):
    """A fraction of memory left free: 0.2 or 20%."""

    name = "headroom"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                value = float(value.strip()[:-1]) / 100
            except ValueError:
                self.fail(f"{value!r} is not a percentage.", param, ctx)
        return super().convert(value, param, ctx)


def _errors() -> tuple[type[Exception], ...]:
    from twin.results.export import ExportError
    from twin.results.store import StoreError

    return (ValueError, OSError, StoreError, ExportError)


def _frames(db: str, query: str | None = None):
    """The frames of the store ``db`` (refusing a missing file rather than creating an empty store)."""
    from twin.results.analysis import frames_from_store
    from twin.results.store import ResultsStore

    if not Path(db).is_file():
        raise TwinCliError(f"no results store {db}: `twin profile --db {db} ...` fills one (or give --db FILE)")
    try:
        with ResultsStore(db) as store:
            return frames_from_store(store, query)
    except _errors() as exc:
        raise TwinCliError(str(exc)) from None


def _fmt(v: float | None, scale: float = 1.0, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v * scale:.{digits}g}"


@click.command("recommend")
@click.option("--model", required=True, help="Model name (e.g. builtin, or an image's name) or its sha256.")
@click.option("--max-ms-per-token", type=FiniteFloat(min=0.0, min_open=True), default=None,
              help="Largest predicted time per token, ms.")
@click.option("--max-mj-per-token", type=FiniteFloat(min=0.0, min_open=True), default=None,
              help="Largest predicted energy per token, mJ (a board without power figures fails it).")
@click.option("--min-headroom", type=Headroom(-1e9, 1.0), default=None,
              help="Smallest free share of the board's flash and of its RAM: 0.2 or 20%.")
@click.option("--boards", default=None, help="Comma-separated catalog boards (default: every one predicted).")
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False),
              help="The results store (twin profile --db).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def recommend_cmd(model: str, max_ms_per_token: float | None, max_mj_per_token: float | None,
                  min_headroom: float | None, boards: str | None, db: str, as_json: bool) -> None:
    """The boards and bit widths that meet the constraints: the Pareto front over (ms/token, mJ/token,
    memory headroom), ranked, and the reason each other one is not recommended."""
    from twin.results.analysis import recommend

    frames = _frames(db)
    board_list = [b.strip() for b in boards.split(",") if b.strip()] if boards else None
    try:
        rec = recommend(frames.runs, frames.predictions, model=model, max_ms_per_token=max_ms_per_token,
                        max_mj_per_token=max_mj_per_token, min_headroom=min_headroom, boards=board_list)
    except ValueError as exc:
        raise TwinCliError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(rec.to_json(), allow_nan=False))
        return
    if rec.recommended.empty:
        click.echo(f"no board × bit width of {model} meets the constraints")
    else:
        click.echo(f"{'#':>2}  {'board':<17}{'bits':>4}  {'KV':<5}{'ms/token':>10}{'tok/s':>8}{'mJ/token':>10}"
                   f"{'headroom':>10}  run")
        for r in rec.recommended.itertuples():
            click.echo(f"{r.rank:>2}  {r.board:<17}{int(r.bits):>4}  {r.kv_cache:<5}{_fmt(r.ms_per_token):>10}"
                       f"{_fmt(r.tokens_per_s):>8}{_fmt(r.mj_per_token):>10}{r.headroom:>10.1%}  {r.run_id}")
    if len(rec.rejected):
        click.echo("not recommended:")
        for r in rec.rejected.itertuples():
            what = f"{r.board or r.platform} {'' if r.bits is None or r.bits != r.bits else f'{int(r.bits)}-bit'}"
            click.echo(f"  {what.strip():<24} {r.reason}")


@click.command("report")
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False),
              help="The results store (twin profile --db).")
@click.option("--runs", "query", default=None,
              help="A pandas query over the runs' columns, e.g. \"platform == 'mps2-an386' and bits == 4\".")
@click.option("--compare", "compare", nargs=2, type=click.Path(dir_okay=False), default=None, metavar="A B",
              help="Compare two stores (e.g. two commits) instead: what changed from A to B.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the page (index.html, or compare.html with --compare).")
@click.option("--title", default=None, help="The page's title.")
def report_cmd(db: str, query: str | None, compare: tuple[str, str] | None, out_dir: str, title: str | None) -> None:
    """One self-contained HTML page (charts embedded, no network needed to view it) of a results store,
    or of what changed between two."""
    from twin.results import report

    try:
        if compare:
            a, b = (_frames(p, query) for p in compare)
            path = report.write_comparison(a, b, out_dir, labels=(Path(compare[0]).stem, Path(compare[1]).stem))
        else:
            frames = _frames(db, query)
            if frames.runs.empty:
                raise TwinCliError(f"no runs in {db}" + (f" match --runs {query!r}" if query else ""))
            path = report.write_report(frames, out_dir, title=title or f"tinyllm-twin report: {Path(db).name}")
    except _errors() as exc:
        raise TwinCliError(str(exc)) from None
    click.echo(f"report: {path}")


def _export_frames(run: str, db: str, board: str | None):
    """(frames, run id): a `twin run --json` file, or a run id in the store."""
    from twin.results import analysis

    p = Path(run)
    if p.is_file():
        try:
            report = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TwinCliError(f"{run}: not a `twin run --json` file ({exc})") from None
        if not isinstance(report, dict) or "instructions" not in report or "platform" not in report:
            raise TwinCliError(f"{run}: not a `twin run --json` report (no platform/instructions)")
        try:
            preds = analysis.predict_reports([report], boards=[board] if board else None)
        except Exception as exc:        # a report of a platform the catalog no longer has, ...
            raise TwinCliError(f"{run}: cannot predict its boards: {exc}") from None
        return analysis.frames_from_reports([report], preds, run_ids=[p.stem]), p.stem
    if not Path(db).is_file():
        raise TwinCliError(f"{run}: neither a `twin run --json` file nor a run id in a store (no {db}; --db FILE)")
    return _frames(db), run


@click.command("export")
@click.option("--format", "fmt", required=True, type=click.Choice(["speedscope", "perfetto"]),
              help="speedscope: per-function profile (speedscope.app); perfetto: phases and tokens as a "
                   "Chrome trace (ui.perfetto.dev).")
@click.argument("run")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="The JSON file.")
@click.option("--db", default=DEFAULT_DB, show_default=True, type=click.Path(dir_okay=False),
              help="The results store RUN is looked up in (when RUN is not a file).")
@click.option("--board", default=None,
              help="Catalog board whose prediction times the trace / weighs the cycles profile "
                   "(default: the run's platform, else its first predicted board).")
def export_cmd(fmt: str, run: str, output: str, db: str, board: str | None) -> None:
    """Export one run (a run id in the store, or a `twin run --json` file) as a speedscope profile or a
    Chrome/Perfetto trace."""
    from twin.atomic import check_output_path
    from twin.results.export import write_export

    try:
        check_output_path(output, "-o")
    except (ValueError, OSError) as exc:
        raise TwinCliError(str(exc)) from None
    frames, run_id = _export_frames(run, db, board)
    try:
        path = write_export(frames, run_id, fmt, output, board=board)
    except _errors() as exc:
        raise TwinCliError(str(exc)) from None
    click.echo(f"{fmt}: {path}")
