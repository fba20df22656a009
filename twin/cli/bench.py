"""`twin bench` and `twin calibrate` (registered on the `twin` group by twin/cli/main.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from twin.cli.main import POSITIVE_SECONDS, SUPPLY_VOLTAGE, TwinCliError, _run_errors


def _errors() -> tuple[type[Exception], ...]:
    from twin.bench.traces import TraceError
    from twin.bench.workflow import BenchError

    return (*_run_errors(), BenchError, TraceError, KeyError, ValueError)


@click.command()
@click.option("--port", default=None,
              help="The device: a pyserial URL (/dev/ttyACM0, socket://host:port), 'rtl' to start the "
                   "platform's RTL-simulated board (rtl-* platforms), or 'qemu' to start its emulator.")
@click.option("--emulate", is_flag=True, help="Same as --port qemu.")
@click.option("--device", default=None, metavar="ID",
              help="A board of the hardware map (docs/hardware.md): flash it and bench it (instead of --port).")
@click.option("--platform", required=True, help="Platform id (see `twin platforms`).")
@click.option("--board", default=None, help="Board id written to the dataset (default: the platform id).")
@click.option("--model", default="builtin", show_default=True,
              help="'builtin', a model image path, or 'none' (the workload suite only).")
@click.option("--bits", default=4, show_default=True, type=click.Choice(["4", "8"]))
@click.option("--tokens", default=8, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workloads", default=None,
              help="Comma-separated workload names (every size) or suite labels such as matvec_q8@64x172 "
                   "(that size) (default: the whole suite; 'none': the model only).")
@click.option("--scale", default=1.0, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
              help="Multiply every workload's iteration count (longer runs for slow power monitors).")
@click.option("-o", "--output", "output", default="bench.csv", show_default=True, type=click.Path(),
              help="The dataset (CSV) to write.")
@click.option("--baudrate", default=115200, show_default=True, type=int)
@click.option("--no-mem-traffic", is_flag=True, help="Do not count loads/stores per memory in the twin.")
@click.option("--trace", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A power trace of this run (CSV) to compute energy per phase.")
@click.option("--trace-format", default="generic", show_default=True,
              type=click.Choice(["ppk2", "joulescope", "generic"]))
@click.option("--trace-channel", default=None, help="The trace's digital marker channel (e.g. D0, in0).")
@click.option("--trace-windows", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV of start_s,end_s phase windows (instead of a marker channel).")
@click.option("--voltage", type=SUPPLY_VOLTAGE, default=None, help="Supply voltage when the trace has none (PPK2).")
@click.option("--timeout", default=600.0, show_default=True, type=POSITIVE_SECONDS, help="Seconds for the whole run.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def bench(port: str | None, emulate: bool, device: str | None, platform: str, board: str | None, model: str, bits: str, tokens: int,
          workloads: str | None, scale: float, output: str, baudrate: int, no_mem_traffic: bool,
          trace: str | None, trace_format: str, trace_channel: str | None, trace_windows: str | None,
          voltage: float | None, timeout: float, as_json: bool) -> None:
    """Run the calibration suite and a model on a device; write the bench dataset."""
    from twin.bench.workflow import BenchSpec, write_dataset
    from twin.bench.workflow import bench as do_bench
    from twin.bench.workloads import default_suite
    from twin.cli.hardware import device_port

    if (port is None and not emulate) == (device is None):
        raise TwinCliError("give the device: --port PORT (or --emulate), or --device ID from the hardware map")

    try:
        names = tuple(w.strip() for w in workloads.split(",") if w.strip()) if workloads else None
        suite = [] if names == ("none",) else default_suite(scale, names)
        spec = BenchSpec(platform=platform, port="qemu" if emulate else port or "device", board=board,
                         model=None if model.lower() == "none" else model, bits=int(bits), tokens=tokens,
                         suite=suite, scale=scale, baudrate=baudrate, mem_traffic=not no_mem_traffic,
                         trace=Path(trace) if trace else None, trace_format=trace_format,
                         trace_channel=trace_channel, trace_windows=Path(trace_windows) if trace_windows else None,
                         voltage=voltage, timeout=timeout)
        with device_port(spec, device) as spec:
            result = do_bench(spec, on_step=None if as_json else lambda s: click.echo(f"  running {s}", err=True))
        write_dataset(result.rows, output)
    except _errors() as exc:
        raise TwinCliError(str(exc).strip("'\"")) from None
    if result.interrupted:
        raise TwinCliError(_interrupted_message(result, spec.port, output))
    summary = {"platform": platform, "port": spec.port, "rows": len(result.rows), "output": output,
               "cycle_counter": result.cycle_counter, "build_id": result.info.build_id,
               "wall_seconds": result.wall_seconds, "notes": result.notes}
    if as_json:
        click.echo(json.dumps(summary))
        return
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{len(result.rows)} rows -> {output} (cycles: {result.cycle_counter}; "
               f"{result.wall_seconds:.1f} s)")


def _interrupted_message(result, port: str, output: str) -> str:
    """The device stopped part-way: where the rows measured before are, and the --workloads that
    measure exactly the missing ones (suite labels: 'matvec_q8@172x64', not every size of matvec_q8)."""
    from twin.bench.workflow import is_emulated_port

    rest = [r for r in result.remaining if not r.startswith("model:")]
    again = f"--workloads {','.join(rest)}" if rest else "--workloads none"
    model_note = " (and the model's generation)" if len(rest) < len(result.remaining) else ""
    check = ("they were counted in a complete twin run; see why the emulator stopped (killed, out of memory, "
             "--timeout)" if is_emulated_port(port) else "check the cable and power")
    return (f"{result.interrupted}. The {len(result.rows)} rows measured before are in {output}; {check}, then "
            f"measure the rest{model_note} into another file with {again} (calibrate takes several datasets)")


@click.command()
@click.argument("datasets", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(), help="The calibration file.")
@click.option("--skip-unmeasured", is_flag=True,
              help="Drop rows without measured cycles instead of refusing the datasets.")
@click.option("--residual", is_flag=True,
              help="Fit the cycle model with a boosted residual on the class mix (linear × (1 + r)) and "
                   "store it in the file; the report cross-validates linear-only and with-residual side "
                   "by side.")
@click.option("--residual-auto", is_flag=True,
              help="Like --residual, but keep the residual only when it lowers the cross-validated "
                   "error (by workload); the file says which was chosen.")
@click.option("--prior-strength", type=click.FloatRange(min=0.0), default=None,
              help="Pull of the fitted costs toward the core's published timings [default: "
                   "calibration.fit.PRIOR_STRENGTH, 1.0, set on the RTL boards]; 0 fits the data alone.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary (id, core, boards, CV errors).")
def calibrate(datasets: tuple[str, ...], output: str, skip_unmeasured: bool, residual: bool,
              residual_auto: bool, prior_strength: float | None, as_json: bool) -> None:
    """Fit the cycle/energy models to bench datasets (rows with a real board's cycle counts)."""
    from calibration.fit import calibrate_files

    fit_kw = {"residual": "auto"} if residual_auto else {"residual": "on"} if residual else {}
    if prior_strength is not None:
        fit_kw["prior_strength"] = prior_strength
    try:
        r = calibrate_files(list(datasets), output, skip_unmeasured=skip_unmeasured, **fit_kw)
    except (ValueError, KeyError) as exc:      # DatasetError and the calibration file's errors are ValueErrors
        raise TwinCliError(str(exc).strip("'\"")) from None
    if as_json:
        click.echo(json.dumps({"rows": r["rows"], "skipped": r["skipped"], "output": output,
                               **(r.get("result") or {})}))
        return
    skipped = f" ({r['skipped']} unmeasured rows skipped)" if r["skipped"] else ""
    click.echo(f"calibrated on {r['rows']} rows{skipped} -> {output}")
    fit = r.get("result") or {}
    candidates = fit.get("cv_candidates")
    if candidates:
        _echo_cv_side_by_side(candidates, fit.get("model"), fit.get("choice"))
    elif fit.get("cv_mape_percent") is not None:
        click.echo(f"  cross-validated cycle error (MAPE by workload): {fit['cv_mape_percent']:.1f}%")


def _echo_cv_side_by_side(candidates: dict, chosen: str | None, choice: str | None) -> None:
    """Linear-only and with-residual cross-validation, one row each, one column per hold-out."""
    splits = [s for s in ("by_workload", "by_board") if any(s in c for c in candidates.values())]

    def cell(r: dict | None) -> str:
        if not r or r.get("mape_percent") is None:
            return "n/a"
        cov = f" (coverage {r['coverage']:.2f})" if r.get("coverage") is not None else ""
        return f"{r['mape_percent']:.2f}%{cov}"

    names = {"linear": "linear only", "linear+residual": "with residual"}
    click.echo("  cross-validated cycle error (MAPE), holding out:")
    click.echo(("    " + f"{'':<16}" + "".join(f"{s.replace('_', ' '):<26}" for s in splits)).rstrip())
    for kind, c in candidates.items():
        row = "    " + f"{names.get(kind, kind):<16}" + "".join(f"{cell(c.get(s)):<26}" for s in splits)
        click.echo(row + "<- stored" if kind == chosen else row.rstrip())
    if choice:
        click.echo(f"  cycle model in the file: {chosen} ({choice})")
