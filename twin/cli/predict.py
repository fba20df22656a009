"""`twin predict` and `twin compare`: counts to time, energy and memory fit for every catalog board
(a thin skin over calibration.predict). `twin calibrate` lives with `twin bench` (twin/cli/bench.py)
and calls calibration.fit_calibration."""

from __future__ import annotations

import json
import sys

import click

from twin.cli.main import SUPPLY_VOLTAGE, FiniteFloat, TwinCliError, _human_bytes, _run_errors
from twin.platforms import all_platforms


def _errors() -> tuple[type[Exception], ...]:
    from calibration.cycles import CycleModelError
    from calibration.dataset import DatasetError
    from calibration.predict import PredictError
    from calibration.store import CalibrationFileError
    from twin.atomic import OutputPathError

    return (*_run_errors(), PredictError, CycleModelError, CalibrationFileError, DatasetError, OutputPathError)


def _progress(as_json: bool):
    """Say on a terminal's stderr when counts need an emulator run; quiet when piped or with --json."""
    if as_json or not sys.stderr.isatty():
        return None
    return lambda platform: click.echo(f"  counting on {platform} (QEMU, once; cached after)…", err=True)


def _fmt_interval(d: dict, scale: float, unit: str, digits: int = 3) -> str:
    if d["value"] is None:
        return "n/a"
    high = "unbounded" if d["high"] is None else f"{d['high'] * scale:.{digits}g}"
    return f"{d['value'] * scale:.{digits}g} {unit} [{d['low'] * scale:.{digits}g}-{high}]"


def _common(f):
    for opt in reversed([
        click.option("--model", default="builtin", show_default=True,
                     help="'builtin' or the path of a model image."),
        click.option("--bits", default="4", show_default=True, type=click.Choice(["2", "3", "4", "8"])),
        click.option("--tokens", default=8, show_default=True, type=click.IntRange(1, 4096),
                     help="Tokens generated in the twin run that provides the counts."),
        click.option("--prompt", default=None, help="Prompt text (default: the runner's)."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON."),
    ]):
        f = opt(f)
    return f


@click.command("predict")
@click.option("--platform", required=True, help="Catalog board id (see `twin platforms`).")
@_common
@click.option("--clock", "clock_mhz", type=FiniteFloat(min=0.001), default=None,
              help="Core clock in MHz (default: the board's default clock).")
@click.option("--voltage", "voltage_v", type=SUPPLY_VOLTAGE, default=None,
              help="Supply voltage for a DVFS what-if, 0.5-5.5 V (default: the board's figure).")
@click.option("--calibration", "calibration", type=click.Path(dir_okay=False), default=None,
              help="A calibration file (twin calibrate); default: the prior from published timings.")
@click.option("--mca", "with_mca", is_flag=True,
              help="Also the second prior: LLVM's scheduling model of the core per executed block "
                   "(llvm-mca; JSON key 'mca').")
@click.option("--counts", "counts_file", type=click.Path(dir_okay=False), default=None,
              help="A count file of your own firmware (twin count -o FILE) instead of the model's run: "
                   "a token = one entry of its last --phase symbol.")
def predict_cmd(platform: str, model: str, bits: str, tokens: int, prompt: str | None, as_json: bool,
                clock_mhz: float | None, voltage_v: float | None, calibration: str | None,
                with_mca: bool, counts_file: str | None) -> None:
    """Predict time to first token, time per token, energy per token and memory fit on a board."""
    from calibration.predict import predict, predict_from_count_file

    try:
        if counts_file is not None:
            if with_mca:
                raise TwinCliError("--mca needs the model's run (its executed blocks); drop it with --counts")
            r = predict_from_count_file(platform, counts_file, clock_mhz=clock_mhz, voltage_v=voltage_v,
                                        calibration=calibration)
        else:
            r = predict(platform, model=model, bits=int(bits), clock_mhz=clock_mhz, voltage_v=voltage_v,
                        calibration=calibration, tokens=tokens, prompt=prompt, mca=with_mca,
                        on_run=_progress(as_json))
    except _errors() as exc:
        raise TwinCliError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(r))
        return
    t = r["twin"]
    mark = "  ** cross-core prediction: LOW confidence **" if t["cross_core"] else ""
    info = r.get("calibration_info") or {}
    kind = f" ({info['model']})" if info.get("model") not in (None, "prior") else ""
    click.echo(f"{r['platform']} · {r['model']} · {r['clock_mhz']:g} MHz · counts from {t['proxy']} "
               f"({t['mode']}, {t['confidence']} confidence) · calibration {r['calibration']}{kind}{mark}")
    if info.get("distance"):
        click.echo(f"  calibration          {info['distance']['kind']}: {info['distance']['detail']}")
    click.echo(f"  time to first token  {_fmt_interval(r['ttft_seconds'], 1e3, 'ms')}")
    click.echo(f"  time per token       {_fmt_interval(r['token_seconds'], 1e3, 'ms')}")
    click.echo(f"  tokens per second    {_fmt_interval(r['tokens_per_second'], 1, 'tok/s')}")
    click.echo(f"  energy per token     {_fmt_interval(r['energy_per_token_joules'], 1e3, 'mJ')}")
    terms = sorted(r["cycles"]["per_token_terms"].items(), key=lambda kv: -kv[1])
    total = r["cycles"]["per_token"] or 1.0
    click.echo("  cycles per token     " + " · ".join(f"{name.removeprefix('n_')} {100 * v / total:.0f}%"
                                                     for name, v in terms[:5] if v > 0))
    by_fn = r["cycles"].get("per_token_by_function")
    if by_fn:
        top = list(by_fn["functions"].items())[:5]
        click.echo("  cycles by function   " + " · ".join(f"{f} {100 * v / total:.0f}%" for f, v in top)
                   + f" · not attributed {100 * by_fn['unattributed'] / total:.0f}%")
    m = r["memory"]
    click.echo(f"  memory               flash {_human_bytes(m['flash_bytes'])} of "
               f"{_human_bytes(m['flash_available'])}, RAM {_human_bytes(m['ram_bytes'])} of "
               f"{_human_bytes(m['ram_available'])}: {'fits' if r['fits'] else 'DOES NOT FIT'}")
    if "mca" in r:
        _echo_mca(r["mca"], r["calibration"])
    for n in r["notes"]:
        click.echo(f"  · {n}")


def _echo_mca(x: dict, main: str) -> None:
    if not x["available"]:
        click.echo(f"  llvm-mca prior        n/a: {x['reason']}")
        return
    click.echo(f"  llvm-mca prior        {x['token_seconds'] * 1e3:.3g} ms/token, time to first token "
               f"{x['ttft_seconds'] * 1e3:.3g} ms ({x['ratio_to_main']:.2f}× the "
               f"{'class prior' if main == 'prior' else 'calibrated figure'}; -mcpu={x['mcpu']}, "
               f"{x['llvm_model']}; {x['unparsed_fraction']:.1%} of instructions at class cost)")
    for n in x["notes"]:
        click.echo(f"    · {n}")


@click.command("compare")
@click.option("--platforms", "platform_list", default=None,
              help="Comma-separated catalog board ids (default: the whole catalog).")
@_common
@click.option("--calibration", "calibrations", multiple=True, type=click.Path(dir_okay=False),
              help="Calibration file(s); each applies to the boards of its core (repeatable).")
@click.option("--mca", "with_mca", is_flag=True,
              help="Add llvm-mca's ms/token (LLVM's scheduling model of each core) as a column.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="Write a chart (PNG) of latency, tokens/s, energy/token and memory headroom.")
def compare_cmd(platform_list: str | None, model: str, bits: str, tokens: int, prompt: str | None,
                as_json: bool, calibrations: tuple[str, ...], with_mca: bool, output: str | None) -> None:
    """Compare predicted latency, tokens/s, energy/token and memory fit across boards."""
    from calibration import store
    from calibration.predict import chart, predict
    from twin.atomic import check_output_path

    ids = [p.strip() for p in platform_list.split(",") if p.strip()] if platform_list else list(all_platforms())
    try:
        if output:
            check_output_path(output, "-o")
        cals = {c.core: c for c in (store.load(path) for path in calibrations)}
        results = []
        for pid in ids:
            core = all_platforms().get(pid)
            cal = cals.get(core.core) if core is not None else None
            results.append(predict(pid, model=model, bits=int(bits), tokens=tokens, prompt=prompt,
                                   calibration=cal, mca=with_mca, on_run=_progress(as_json)))
    except _errors() as exc:
        raise TwinCliError(str(exc)) from None
    if output:
        try:
            chart(results, output)
        except OSError as exc:
            raise TwinCliError(f"cannot write {output}: {exc.strerror or exc}; the previous file, if any, "
                               "is unchanged") from None
    if as_json:
        click.echo(json.dumps(results))
        return
    print_comparison(results)
    if output:
        click.echo(f"chart: {output}")


def print_comparison(results: list[dict]) -> None:
    """The comparison table of ``predict`` results (twin compare, and the demo's what-if)."""
    with_mca = any("mca" in r for r in results)
    click.echo(f"{'platform':<17}{'twin':<18}{'calibration':<17}{'MHz':>5}{'ms/token':>10}{'range':>17}"
               + (f"{'mca ms':>8}" if with_mca else "")
               + f"{'tok/s':>8}{'mJ/token':>10}{'flash':>17}{'RAM':>17}  fit")
    for r in results:
        ts, e, m = r["token_seconds"], r["energy_per_token_joules"], r["memory"]
        energy = f"{e['value'] * 1e3:.3g}" if e["value"] is not None else "n/a"
        twin = f"{r['twin']['mode']}/{r['twin']['confidence']}"
        calib = (r.get("calibration_info") or {}).get("model") or ("prior" if r["calibration"] == "prior" else "fitted")
        flash = f"{_human_bytes(m['flash_bytes'])}/{_human_bytes(m['flash_available'])}"
        ram = f"{_human_bytes(m['ram_bytes'])}/{_human_bytes(m['ram_available'])}"
        headroom = min(1 - m["flash_bytes"] / m["flash_available"], 1 - m["ram_bytes"] / m["ram_available"])
        short = [f"{what} short by {_human_bytes(need - have)}" for what, need, have in
                 (("flash", m["flash_bytes"], m["flash_available"]), ("RAM", m["ram_bytes"], m["ram_available"]))
                 if need > have]
        fit = f"yes ({headroom:+.0%} headroom)" if r["fits"] else f"NO ({', '.join(short)})"
        mca = ""
        if with_mca:
            x = r.get("mca") or {}
            mca = f"{x['token_seconds'] * 1e3:>8.3g}" if x.get("available") else f"{'n/a':>8}"
        click.echo(f"{r['platform']:<17}{twin:<18}{calib:<17}{r['clock_mhz']:>5.0f}{ts['value'] * 1e3:>10.3g}"
                   f"{ts['low'] * 1e3:>8.3g}-{ts['high'] * 1e3:<8.3g}{mca}{r['tokens_per_second']['value']:>8.3g}"
                   f"{energy:>10}{flash:>17}{ram:>17}  {fit}")
    if any(r["twin"]["cross_core"] for r in results):
        click.echo("(mode none: cross-core prediction from another core's counts, low confidence)")
    used = sorted({r["calibration"] for r in results if r["calibration"] != "prior"})
    if used:
        click.echo("calibration files: " + ", ".join(used))
