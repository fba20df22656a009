"""`twin profile`: a matrix of profiled runs into the results store (a thin skin over
twin.results.engine.run_matrix; docs/results.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from twin.cli.main import POSITIVE_SECONDS, SEED, TwinCliError, _emulated
from twin.platforms import PlatformError, get_platform

BITS = (2, 3, 4, 8)


def _ints(value: str, option: str, low: int, allowed: tuple[int, ...] | None = None) -> list[int]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise TwinCliError(f"{option} {value!r}: give comma-separated numbers, e.g. 4,8")
    out = []
    for v in items:
        if not v.isdigit() or int(v) < low:
            raise TwinCliError(f"{option} {value!r}: {v!r} is not a whole number of at least {low}")
        if allowed is not None and int(v) not in allowed:
            raise TwinCliError(f"{option} {value!r}: {v} is not one of {', '.join(map(str, allowed))}")
        out.append(int(v))
    return list(dict.fromkeys(out))


def _platforms(value: str | None) -> list[str]:
    ids = [p.strip() for p in value.split(",") if p.strip()] if value else _emulated()
    if not ids:
        raise TwinCliError(f"--platforms {value!r}: name at least one platform (see `twin platforms`)")
    for pid in ids:
        try:
            p = get_platform(pid)
        except PlatformError as exc:
            raise TwinCliError(str(exc)) from None
        if p.emulator is None:
            hint = f" (`--platforms {p.counts_platform}` runs the twin it is predicted from)" if p.counts_platform else ""
            raise TwinCliError(f"--platforms: {pid} has no emulator model{hint}; its predictions come with the "
                               "runs of its twin")
    return list(dict.fromkeys(ids))


def _models(value: str) -> list[str]:
    models = [m.strip() for m in value.split(",") if m.strip()]
    if not models:
        raise TwinCliError(f"--models {value!r}: name at least one model ('builtin' or an image file)")
    for m in models:
        if m != "builtin" and not Path(m).is_file():
            raise TwinCliError(f"--models: model file {m} not found: give a model image made by `twin image`, "
                               "or 'builtin'")
    return list(dict.fromkeys(models))


@click.command("profile")
@click.option("--platforms", "platform_list", default=None,
              help="Comma-separated emulated platform ids [default: every emulated platform].")
@click.option("--models", "model_list", default="builtin", show_default=True,
              help="Comma-separated: 'builtin' and/or model images (.twlm; their bit widths are their own).")
@click.option("--bits", "bits_list", default="4", show_default=True,
              help="Comma-separated bit widths of the built-in model (2, 3, 4, 8).")
@click.option("--prompt-lengths", "prompt_list", default=None,
              help="Comma-separated prompt lengths in tokens, BOS included [default: the prompt "
                   "\"Once upon a time\"].")
@click.option("--tokens", "tokens_list", default="16", show_default=True,
              help="Tokens to generate (comma-separated: one cell each).")
@click.option("--kv-cache", default="f32", show_default=True, type=click.Choice(["f32", "int8"]),
              help="The built-in model's KV cache (an image carries its own).")
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--db", "db_path", default="twin-results.sqlite", show_default=True, type=click.Path(dir_okay=False),
              help="The results store (SQLite; created when missing).")
@click.option("--workers", default=None, type=click.IntRange(1, 1024),
              help="Local worker processes [default: one per core].")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run the cells on a Dask cluster (needs the engine extra: dask[distributed]).")
@click.option("--retry-failed", is_flag=True, help="Run again the cells stored as failed (default: done).")
@click.option("--timeout", default=120.0, show_default=True, type=POSITIVE_SECONDS,
              help="Seconds before a cell's emulator is killed (the cell is then failed).")
@click.option("--mem-traffic/--no-mem-traffic", default=True, show_default=True,
              help="Count loads/stores per memory region: the predictions' flash loads (without: an assumed "
                   "fraction; faster on RISC-V).")
@click.option("--device", default=None, metavar="ID",
              help="Also run every cell on this board of the hardware map ($TWIN_HARDWARE_MAP, docs/hardware.md), "
                   "one cell at a time: its tokens and cycle counts go to the store.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the batch summary.")
def profile_cmd(platform_list, model_list, bits_list, prompt_list, tokens_list, kv_cache, seed, db_path, workers,
                scheduler, retry_failed, timeout, mem_traffic, device, as_json) -> None:
    """Profile a matrix (platforms × models × bits × prompt lengths × tokens) into the results store.

    Resumable: the cells the store has are skipped. A failing cell is stored with its error and the
    batch goes on; exit status 1 when a cell failed, 3 when one's tokens differ from the host reference."""
    from twin.results.engine import EngineError, matrix, prompt_text, run_matrix
    from twin.results.store import ResultsStore, StoreError

    platforms = _platforms(platform_list)
    models = _models(model_list)
    bits = _ints(bits_list, "--bits", 2, BITS)
    prompts = _ints(prompt_list, "--prompt-lengths", 1) if prompt_list else [None]
    tokens = _ints(tokens_list, "--tokens", 1)
    if scheduler is not None and workers is not None:
        raise TwinCliError("--workers and --scheduler: the Dask cluster has its own workers; give one of them")
    for m in models:          # a model whose tokenizer cannot make the prompt fails here, not once per cell
        for n in prompts:
            if n is not None:
                try:
                    prompt_text(m, n)
                except Exception as exc:
                    raise TwinCliError(f"--models {m} --prompt-lengths {n}: {' '.join(str(exc).split())}") from None
    if device is not None:
        from twin.device.board import board_for
        from twin.device.hardware import HardwareMapError

        try:
            entry, _ = board_for(device)         # a missing map or id fails before any cell runs
        except HardwareMapError as exc:
            raise TwinCliError(str(exc)) from None
        others = [p for p in platforms if p != entry.platform]
        if others:
            raise TwinCliError(f"--device {device} is a {entry.platform}: profile it with --platforms "
                               f"{entry.platform} (not {', '.join(others)})")
    cells = matrix(platforms, models, bits, prompts, tokens, kv_cache=kv_cache, seed=seed, timeout=timeout,
                   mem_traffic=mem_traffic, device=device)
    try:
        store = ResultsStore(db_path)
    except StoreError as exc:
        raise TwinCliError(str(exc)) from None
    live = not as_json and sys.stderr.isatty()
    bar = None

    def show(p) -> None:       # the first call comes before any cell ran
        nonlocal bar
        if p.finished == 0:
            if p.skipped:
                click.echo(f"{p.skipped} of {p.total} cells already in {db_path}: skipped", err=True)
            if p.to_run:
                bar = click.progressbar(length=p.to_run, label=f"profiling {p.to_run} cells", file=sys.stderr,
                                        show_eta=True, show_pos=True, item_show_func=lambda s: s)
                bar.__enter__()
        elif bar is not None:
            bar.update(1, f"{p.ok} ok, {p.failed} failed")

    try:
        summary = run_matrix(cells, store, workers=workers, scheduler=scheduler, on_progress=show if live else None,
                             retry_failed=retry_failed)
    except (EngineError, StoreError) as exc:
        raise TwinCliError(str(exc)) from None
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
        store.close()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for f in summary["failures"]:
            click.echo(f"failed: {f['cell_key']}: {f['error']}", err=True)
        rate = f" ({summary['profiles_per_hour']:,} profiles/hour)" if summary["profiles_per_hour"] else ""
        where = f"Dask {scheduler}" if scheduler else f"{summary['workers']} workers"
        mism = f", {summary['mismatched']} differ from the host reference" if summary["mismatched"] else ""
        click.echo(f"{summary['cells']} cells: {summary['ok']} ok, {summary['failed']} failed{mism}, "
                   f"{summary['skipped']} already stored; {summary['ran']} run in {summary['wall_seconds']:.1f} s "
                   f"on {where}{rate} → {db_path}")
    if summary["failed"]:
        sys.exit(1)
    if summary["mismatched"]:
        sys.exit(3)
