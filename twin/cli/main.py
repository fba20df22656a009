"""`twin` — the command line: a thin skin over the Python API."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from twin.platforms import KERNEL_SETS, PlatformError, all_platforms, get_platform

if TYPE_CHECKING:
    from twin.runner import RunSpec


class TwinCliError(click.ClickException):
    """One line: what was wrong and what to do."""

    def format_message(self) -> str:
        return self.message


class FiniteFloat(click.FloatRange):
    """A float option that refuses NaN and ±Infinity (which pass click's FloatRange comparisons)
    with one line naming the value."""

    name = "finite float"

    def convert(self, value, param, ctx):
        import math

        v = click.types.FloatParamType.convert(self, value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(v, param, ctx)


# Shared option types (twin bench's --voltage and --timeout should use these two as well).
SUPPLY_VOLTAGE = FiniteFloat(0.5, 5.5)                    # V: every MCU supply rail lies in here
POSITIVE_SECONDS = FiniteFloat(min=0.0, min_open=True)    # a timeout of 0 s can only report a hang
SEED = click.IntRange(0, 2**32 - 1)                        # the firmware's and reference's 32-bit seed


def _fail(exc: Exception) -> TwinCliError:
    return TwinCliError(str(exc))


def _human_bytes(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.0f} MiB"


def _emulated(rtl: bool = False) -> list[str]:
    """The emulated MCUs (the demo's); ``rtl``: every platform with a firmware build in an emulator (the
    RTL bench boards, and the catalog boards whose own ISA runs on an emulated machine: isa-proxy)."""
    return [p.id for p in all_platforms().values() if p.emulator is not None and (rtl or p.rtl is None)
            and (rtl or p.twin_mode.mode == "exact")]


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Digital-twin profiler for quantized tiny LLMs on microcontrollers."""
    from twin.device.procguard import exit_on_signals

    # SIGTERM/SIGHUP become SystemExit, so the emulator's context manager kills it (twin/device/procguard.py)
    ctx.call_on_close(exit_on_signals())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
def platforms(as_json: bool) -> None:
    """List the platforms: id, core, emulator, clock, memories."""
    rows = []
    for p in all_platforms().values():
        emu = f"{p.emulator.kind}:{p.emulator.machine}" if p.emulator else "-"
        t = p.twin_mode
        rows.append({"id": p.id, "core": p.core, "emulator": emu, "clock_mhz": p.clock_hz / 1e6,
                     "flash_bytes": p.flash.size, "model_bytes": p.model.size, "ram_bytes": p.ram.size,
                     "twin": {"mode": t.mode, "proxy": t.proxy, "confidence": t.confidence},
                     "firmware": p.has_firmware and not p.isa_build, "chip_flash_bytes": p.code_bytes_available,
                     "chip_ram_bytes": p.ram_bytes_available,
                     "rtl": None if p.rtl is None else {"core": p.rtl.core, "config": p.rtl.config,
                                                        "flash_wait_states": p.rtl.flash_wait_states,
                                                        "ram_wait_states": p.rtl.ram_wait_states}})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'id':<17}{'core':<18}{'emulator':<20}{'clock':>9}  {'code':>8} {'model':>8} {'RAM':>8}  twin")
    for r in rows:
        if r["firmware"]:
            sizes = (f"{_human_bytes(r['flash_bytes']):>8} {_human_bytes(r['model_bytes']):>8} "
                     f"{_human_bytes(r['ram_bytes']):>8}")
        else:   # no firmware build yet: the chip's flash (code + model) and RAM
            sizes = f"{_human_bytes(r['chip_flash_bytes']):>17} {_human_bytes(r['chip_ram_bytes']):>8}"
        t = r["twin"]
        via = "" if t["mode"] == "exact" else f" via {t['proxy']}"
        board = (f"; board: RTL {r['rtl']['core']}, {r['rtl']['flash_wait_states']} flash wait states"
                 if r["rtl"] else "")
        click.echo(f"{r['id']:<17}{r['core']:<18}{r['emulator']:<20}{r['clock_mhz']:>5.0f} MHz  {sizes}  "
                   f"{t['mode']}{via} ({t['confidence']}){board}")


@main.command()
@click.option("--platform", "platform_ids", multiple=True, help="Platform id (repeatable).")
@click.option("--all", "build_all", is_flag=True, help="Every platform that has an emulator model.")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: each ELF, its build id, compiler, flags.")
def build(platform_ids: tuple[str, ...], build_all: bool, quiet: bool, as_json: bool) -> None:
    """Build the firmware (and the profiling plugin, and an RTL board's simulation); cached by content hash."""
    from twin.device.build import BuildError, build_firmware
    from twin.device.rtl import RtlError, harness_for
    from twin.profile.counts import ProfileError, build_plugin

    ids = _emulated(rtl=True) if build_all else list(platform_ids)
    if not ids:
        raise TwinCliError("name a platform with --platform ID, or use --all")
    builds = []
    try:
        for pid in ids:
            p = get_platform(pid)
            fw = build_firmware(p)
            sim = harness_for(p).exe if p.rtl is not None else None
            builds.append({"platform": pid, "elf": str(fw.elf), "build_id": fw.build_id,
                           "kernels": fw.platform.kernels, "compiler": fw.compiler, "cflags": fw.cflags,
                           "rtl_simulation": None if sim is None else str(sim)})
            if not quiet and not as_json:
                click.echo(f"{pid:<16} {fw.elf}" + (f"\n{'':<16} {sim}" if sim else ""))
        plugin = build_plugin()
    except (PlatformError, BuildError, ProfileError, RtlError) as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps({"firmware": builds, "plugin": str(plugin)}))
    elif not quiet:
        click.echo(f"{'plugin':<16} {plugin}")


def _run_errors() -> tuple[type[Exception], ...]:
    from twin.device.build import BuildError
    from twin.device.protocol import DeviceError, ProtocolError
    from twin.device.qemu import EmulatorError
    from twin.device.transport import DeviceGone, DeviceTimeout
    from twin.model.image import ImageError
    from twin.model.tokenizer import TokenizerError
    from twin.profile.counts import ProfileError
    from twin.runner import RunError

    return (PlatformError, BuildError, ImageError, ProfileError, DeviceError, ProtocolError, EmulatorError,
            RunError, DeviceGone, DeviceTimeout, TokenizerError)


def _print_report(r: dict) -> None:
    ins = r["instructions"]
    decode = ins["by_phase"]["decode"]
    verdict = "matches the host reference" if r["matches_reference"] else (
        f"DIFFERS from the host reference {r['reference_tokens']}")
    emulator = "" if r.get("emulator", "qemu") == "qemu" else f" ({r['emulator']})"
    click.echo(f"{r['platform']}{emulator} · {r['model']} · {r['firmware']['kernels']} kernels · "
               f"{len(r['tokens'])} tokens · {verdict}")
    click.echo(f"  text        {r['text']!r}")
    click.echo(f"  tokens      {r['tokens']}")
    per_token = sum(decode) / len(decode) if decode else 0
    click.echo(f"  instructions {ins['total']:,} (prefill {ins['by_phase']['prefill']:,}; "
               f"decode {per_token:,.0f}/token; image check {ins['by_phase']['validate']:,})")
    total = max(ins["total"], 1)
    classes = [k for k, v in sorted(ins["by_class"].items(), key=lambda kv: -kv[1]) if v]
    pre, dec = ins["by_phase_class"]["prefill"], ins["by_phase_class"]["decode"]
    n = max(len(decode), 1)
    click.echo(f"  class mix   {'':<8}{'all':>8}{'prefill':>14}{'decode/token':>14}")
    for k in classes:
        click.echo(f"              {k:<8}{100 * ins['by_class'][k] / total:>7.1f}%{pre[k]:>14,}{dec[k] / n:>14,.0f}")
    if r.get("memory_traffic"):
        click.echo("  memory traffic (loads / stores)")
        for phase, regions in r["memory_traffic"].items():
            cells = "  ".join(f"{name} {v['loads']:,} / {v['stores']:,}" for name, v in regions.items()
                              if v["loads"] or v["stores"])
            click.echo(f"    {phase:<8}{cells}")
    caches = [(kind, key, d) for kind, field in (("I", "by_phase_icache"), ("D", "by_phase_dcache"))
              for key, d in ((ins.get(field) or {}).get("decode") or {}).items()]
    if caches:   # the catalog's caches of this ISA as the plugin simulated them, per decoded token
        click.echo("  caches      simulated, decode per token: hit rate · misses (· lines from the prefetch buffer)")
    for kind, key, d in caches:
        hits = 1 - (d["misses"] + d.get("prefetched", 0)) / max(d["lookups"], 1)
        pf = f" · {d['prefetched'] / n:,.0f} prefetched" if d.get("prefetched") else ""
        click.echo(f"    {kind} {key:<18}{100 * hits:6.2f}% · {d['misses'] / n:,.0f} misses{pf}")
    if r["functions"]:
        click.echo("  top functions")
    for f in r["functions"][:8]:
        click.echo(f"    {f['instructions']:>14,}  {100 * f['instructions'] / total:5.1f}%  {f['name']}")
    for name, why in (r.get("unavailable") or {}).items():
        click.echo(f"  unavailable {name}: {why}")
    m = r["memory"]
    click.echo(f"  memory      flash {m['flash_bytes']:,} B · static RAM {m['ram_static_bytes']:,} B · "
               f"run state {m['arena_bytes']:,} B · stack peak {m['stack_peak_bytes']:,} B · "
               f"model image {m['model_image_bytes']:,} B")
    cyc = r["cycles"]
    if any(cyc["decode"]) or cyc["prefill"]:
        click.echo(f"  cycles      prefill {cyc['prefill']:,}; decode {cyc['decode']}")
    click.echo(f"  wall        {r['wall_seconds']:.2f} s")


def _run_options(f):
    for opt in reversed([
        click.option("--model", default="builtin", show_default=True,
                     help="'builtin' or the path of a model image."),
        click.option("--prompt", default=None,
                     help="Prompt text (the model's tokenizer; byte-level without one; '' is BOS alone) "
                          "[default: \"Once upon a time\"; folded into a byte-level vocabulary too small for it, "
                          "and said so]."),
        click.option("--tokens", default=16, show_default=True, type=click.IntRange(1, 4096)),
        click.option("--bits", default=4, show_default=True, type=click.Choice(["2", "3", "4", "8"])),
        click.option("--group-size", default=32, show_default=True, type=click.Choice(["32", "64", "128"])),
        click.option("--asymmetric", is_flag=True, help="Asymmetric quantization (per-group zero points)."),
        click.option("--override", "overrides", multiple=True, metavar="NAME=BITS",
                     help="Per-tensor bit width (mixed precision), e.g. tok_emb=8 or w2.0=8; repeatable."),
        click.option("--kv-cache", default="f32", show_default=True, type=click.Choice(["f32", "int8"]),
                     help="The firmware's KV-cache element type (the built-in model's image; a given image "
                          "carries its own)."),
        click.option("--seed", default=0, show_default=True, type=SEED),
        click.option("--temperature", default=0.0, show_default=True, type=FiniteFloat(0.0)),
        click.option("--top-p", "topp", default=0.9, show_default=True, type=FiniteFloat(0.0, 1.0)),
        click.option("--timeout", default=120.0, show_default=True, type=POSITIVE_SECONDS,
                     help="Seconds before the emulator is killed."),
        click.option("--mem-traffic", is_flag=True,
                     help="Also count loads/stores per memory region (code, model, RAM); slower."),
        click.option("--kernels", default=None, type=click.Choice(KERNEL_SETS),
                     help="Kernel set of the firmware [default: the platform's kernels: field]; "
                          "e.g. ref to see what the optimized kernels save."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
    ]):
        f = opt(f)
    return f


def _overrides(items: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """NAME=BITS options as RunSpec.overrides (checked again when the image is written)."""
    out = []
    for item in items:
        name, _, bits = item.partition("=")
        if not bits.strip().isdigit():
            raise TwinCliError(f"--override {item!r}: expected NAME=BITS, e.g. tok_emb=8")
        out.append((name.strip(), int(bits)))
    return tuple(out)


def _spec(platform: str, **kw) -> RunSpec:
    from twin.runner import DEFAULT_PROMPT, RunSpec

    return RunSpec(platform=platform, model=kw["model"], bits=int(kw["bits"]),
                   group_size=int(kw["group_size"]), symmetric=not kw["asymmetric"],
                   overrides=_overrides(kw["overrides"]), kv_cache=kw["kv_cache"], prompt=DEFAULT_PROMPT if kw["prompt"] is None else kw["prompt"],
                   tokens=kw["tokens"], seed=kw["seed"], temperature=kw["temperature"], topp=kw["topp"],
                   timeout=kw["timeout"], mem_traffic=kw["mem_traffic"], kernels=kw["kernels"],
                   emulator=kw.get("emulator", "qemu"))


def _refuse_quantization_for_image(kw: dict) -> None:
    """--bits/--group-size/--asymmetric/--override quantize the built-in model; an image's are fixed."""
    if kw["model"] == "builtin":
        return
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = [flag for name, flag in (("bits", "--bits"), ("group_size", "--group-size"),
                                     ("asymmetric", "--asymmetric"), ("overrides", "--override"))
             if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)]
    if given:
        raise TwinCliError(f"{'/'.join(given)} with --model {kw['model']}: an image's quantization is fixed when "
                           "it is written; requantize with `twin image --from MODEL -o IMAGE --bits N ...`, "
                           "or drop the option")


@main.command()
@click.option("--platform", required=True, help="Platform id (see `twin platforms`).")
@click.option("--device", default=None, metavar="ID",
              help="Also flash and run this board of the hardware map ($TWIN_HARDWARE_MAP, docs/hardware.md).")
@click.option("--emulator", default="qemu", show_default=True, type=click.Choice(["qemu", "renode"]),
              help="What runs the firmware and counts: QEMU's plugin, or Renode's opcode counters (pyrenode3; "
                   "no per-function or per-region counts, the report says so).")
@_run_options
def run(platform: str, device: str | None, as_json: bool, **kw) -> None:
    """Profile the model on one emulated platform (and, with --device, on a real board)."""
    from twin.runner import run as do_run

    _refuse_quantization_for_image(kw)
    live = not as_json and sys.stderr.isatty()

    def show(phase) -> None:   # stream tokens as the device produces them (terminals only)
        if phase.kind == 2:
            click.echo(f"{phase.token} ", nl=False, err=True)

    try:
        report = do_run(_spec(platform, **kw), on_phase=show if live else None)
        if live:
            click.echo(err=True)
        if device:
            from twin.cli.hardware import run_on_device

            report = run_on_device(report, device, _spec(platform, **kw))
    except _run_errors() as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps(report))
    else:
        if report.get("prompt_note"):
            click.echo(f"note: {report['prompt_note']}", err=True)
        _print_report(report)
    if not report["matches_reference"]:
        sys.exit(3)


@main.command()
@click.option("--platforms", "platform_list", default=None,
              help="Comma-separated platform ids (default: every emulated platform).")
@_run_options
def demo(platform_list: str | None, as_json: bool, **kw) -> None:
    """Profile the model on several emulated platforms, compare them side by side, and predict the
    catalog boards they stand for (memory traffic is always counted: the what-if needs flash loads)."""
    from twin.runner import run as do_run

    kw["mem_traffic"] = True
    ids = platform_list.split(",") if platform_list else _emulated()
    reports = []
    for pid in ids:
        try:
            report = do_run(_spec(pid, **kw))
        except _run_errors() as exc:
            raise _fail(exc) from None
        reports.append(report)
        if not as_json:
            if report.get("prompt_note") and len(reports) == 1:     # the same prompt on every platform
                click.echo(f"note: {report['prompt_note']}", err=True)
            _print_report(report)
            click.echo()
    if as_json:
        click.echo(json.dumps(reports))
        return
    click.echo(f"{'platform':<16}{'ref':>5}{'instr/token':>14}{'prefill':>12}{'flash B':>10}"
               f"{'RAM B':>10}{'stack B':>9}{'wall s':>8}")
    for r in reports:
        dec = r["instructions"]["by_phase"]["decode"]
        m = r["memory"]
        click.echo(f"{r['platform']:<16}{'ok' if r['matches_reference'] else 'FAIL':>5}"
                   f"{sum(dec) / max(len(dec), 1):>14,.0f}{r['instructions']['by_phase']['prefill']:>12,}"
                   f"{m['flash_bytes']:>10,}{m['ram_static_bytes'] + m['arena_bytes']:>10,}"
                   f"{m['stack_peak_bytes']:>9,}{r['wall_seconds']:>8.2f}")
    _what_if(reports)
    if not all(r["matches_reference"] for r in reports):
        sys.exit(3)


def _what_if(reports: list[dict]) -> None:
    """The demo's last answer: the catalog boards these runs stand for, predicted from their counts."""
    from calibration.predict import PredictError, counts_from_report, counts_kernels, predict_from_counts
    from twin.cli.predict import print_comparison

    counts = {r["platform"]: counts_from_report(r) for r in reports}
    ran = {r["platform"] for r in reports}
    results, other_kernels, own_isa = [], [], []
    for plat in all_platforms().values():
        c = counts.get(plat.counts_platform)
        if c is None:
            if plat.isa_build and plat.twin.proxy in ran:    # its own ISA on a machine that ran: not these counts
                own_isa.append(plat.id)
            continue
        if counts_kernels(plat) != c.kernels:      # e.g. an M0+ cannot run the proxy's DSP kernels
            other_kernels.append(plat.id)
            continue
        try:
            results.append(predict_from_counts(plat, c))
        except PredictError as exc:
            click.echo(f"{plat.id}: no prediction: {exc}", err=True)
    if results:
        click.echo("\nWhat if: the catalog boards these runs stand for (prior from published timings; "
                   "`twin calibrate` on a bench narrows the ranges)")
        print_comparison(results)
    if other_kernels:
        click.echo(f"(not shown: {', '.join(other_kernels)} — their cores cannot run these runs' kernels; "
                   "`twin predict --platform ID` counts them with the portable (scalar) kernels)")
    if own_isa:
        click.echo(f"(not shown: {', '.join(own_isa)} — counted on their own instruction set: "
                   "`twin predict --platform ID` runs their build)")


@main.command()
@click.option("--model", default="builtin", show_default=True, help="'builtin' or a model file the importers read.")
@click.option("--bits", "bits_list", default="2,3,4,8", show_default=True,
              help="Comma-separated default bit widths, one scheme each (2, 3, 4, 8).")
@click.option("--group-size", default="32", show_default=True, type=click.Choice(["32", "64", "128"]))
@click.option("--asymmetric", is_flag=True, help="Asymmetric quantization (per-group zero points).")
@click.option("--override", "overrides", multiple=True, metavar="NAME=BITS",
              help="Per-tensor bit width applied to every scheme, e.g. tok_emb=8; repeatable.")
@click.option("--eval", "eval_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Held-out text file for perplexity and agreement.")
@click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(1),
              help="Evaluate the first N tokens of the text.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@click.option("-o", "--output", "chart_path", default=None, type=click.Path(dir_okay=False),
              help="Write a chart (PNG) of perplexity vs size and top-1 agreement.")
def quantize(model: str, bits_list: str, group_size: str, asymmetric: bool, overrides: tuple[str, ...],
             eval_file: str, max_tokens: int, as_json: bool, chart_path: str | None) -> None:
    """Quantize the model with several schemes and measure their accuracy against the float model."""
    from pathlib import Path

    from twin.atomic import atomic_path, check_output_path
    from twin.model import accuracy
    from twin.model.image import ImageError, QuantRecipe

    if chart_path:
        try:
            check_output_path(chart_path, "-o")
        except ValueError as exc:
            raise _fail(exc) from None
    try:
        widths = [int(b) for b in bits_list.split(",") if b.strip()]
    except ValueError:
        raise TwinCliError(f"--bits {bits_list!r}: expected comma-separated widths, e.g. 2,3,4,8") from None
    try:
        over = dict(_overrides(overrides))
        recipes = [QuantRecipe.make(b, int(group_size), not asymmetric, over) for b in widths]
        if not recipes:
            raise ValueError("--bits names no width")
        float_model = accuracy.load_model(model)
        text = Path(eval_file).read_text(encoding="utf-8", errors="replace")
        results = accuracy.evaluate(float_model, text, recipes, max_tokens=max_tokens)
        if chart_path:
            with atomic_path(chart_path) as tmp:    # whole or not at all (twin/atomic.py)
                accuracy.chart(results, tmp, title=f"{float_model.config.name} on {Path(eval_file).name}")
    except (ValueError, ImageError, OSError) as exc:
        raise _fail(exc) from None
    if as_json:
        click.echo(json.dumps(accuracy.as_dicts(results)))
        return
    click.echo(accuracy.table(results))
    if chart_path:
        click.echo(f"chart: {chart_path}")


# Commands that live in their own modules (they import helpers from this one, hence at the end).
from twin.cli.bench import bench, calibrate  # noqa: E402
from twin.cli.model import fit_cmd, image_cmd  # noqa: E402
from twin.cli.predict import compare_cmd, predict_cmd  # noqa: E402

for _command in (image_cmd, fit_cmd, bench, calibrate, predict_cmd, compare_cmd):
    main.add_command(_command)
main.add_command(__import__("twin.cli.results", fromlist=["profile_cmd"]).profile_cmd)   # twin profile
main.add_command(__import__("twin.cli.count", fromlist=["count_cmd"]).count_cmd)        # twin count
main.add_command(__import__("twin.cli.ci", fromlist=["ci_cmd"]).ci_cmd)                  # twin ci
for _c in ("recommend_cmd", "report_cmd", "export_cmd"): main.add_command(getattr(__import__("twin.cli.report", fromlist=[_c]), _c))  # noqa: E701  twin recommend/report/export
for _c in ("hardware", "renode_script_cmd"): main.add_command(getattr(__import__("twin.cli.hardware", fromlist=[_c]), _c))  # noqa: E701  twin hardware scan / renode-script

if __name__ == "__main__":
    sys.exit(main())
