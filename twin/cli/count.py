"""`twin count`: profile your own bare-metal firmware in a platform's emulator (twin/profile/own.py);
`twin predict --counts FILE --platform BOARD` then predicts a catalog board that runs its ISA."""

from __future__ import annotations

import json

import click

from twin.cli.main import FiniteFloat, TwinCliError


@click.command("count")
@click.option("--elf", "elf", required=True, type=click.Path(dir_okay=False),
              help="The bare-metal ELF to run (as QEMU's -kernel).")
@click.option("--platform", required=True, help="An emulated platform (twin platforms: mode exact).")
@click.option("--phase", "phases", multiple=True, metavar="SYMBOL",
              help="Cut a phase at every entry of this function (repeatable); default: the whole run.")
@click.option("--load", "loads", multiple=True, metavar="ADDR=FILE",
              help="Load a raw file into guest memory at ADDR before the reset (repeatable).")
@click.option("--timeout", type=FiniteFloat(min=0.001), default=60.0, show_default=True,
              help="Seconds before a firmware that has not exited is called hung.")
@click.option("--no-mem", "no_mem", is_flag=True, help="Do not count loads/stores per memory region (faster).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None,
              help="Write the count file (the --json object) here, for twin predict --counts.")
@click.option("--json", "as_json", is_flag=True, help="Print the count records as JSON.")
def count_cmd(elf: str, platform: str, phases: tuple[str, ...], loads: tuple[str, ...], timeout: float,
              no_mem: bool, output: str | None, as_json: bool) -> None:
    """Count what your own firmware executes: class mix, per function, per phase, memory regions."""
    from pathlib import Path

    from twin import atomic
    from twin.device.qemu import EmulatorError
    from twin.platforms import PlatformError
    from twin.profile.own import CountError, CountSpec, count, parse_load

    try:
        if output:
            atomic.check_output_path(Path(output))
        spec = CountSpec(elf=Path(elf), platform=platform, phases=phases,
                         loads=tuple(parse_load(x) for x in loads), timeout=timeout, mem_traffic=not no_mem)
        r = count(spec)
    except (CountError, EmulatorError, PlatformError, atomic.OutputPathError) as exc:
        raise TwinCliError(str(exc)) from None
    if output:
        atomic.write_text(Path(output), json.dumps(r, indent=1) + "\n")
    if as_json:
        click.echo(json.dumps(r))
        return
    ins = r["instructions"]
    click.echo(f"{r['elf']} on {r['platform']} ({r['elf_isa'] or r['isa']}): {ins['total']:,} instructions, "
               f"exit status {r['exit']['status']}")
    if r["uart"]:
        click.echo("  uart: " + r["uart"].rstrip("\n").replace("\n", "\n        "))
    for p in r["phases"]:
        n = ins["by_phase_entries"][p]
        click.echo(f"  phase {p:<20} {ins['by_phase'][p]:>14,}  ({len(n)} entr{'y' if len(n) == 1 else 'ies'})")
    click.echo("  by class  " + ", ".join(f"{c} {v:,}" for c, v in ins["by_class"].items() if v))
    for f in r["functions"][:8]:
        click.echo(f"  {f['name']:<28} {f['instructions']:>14,}")
    for n in r["notes"]:
        click.echo(f"  · {n}")
    if output:
        click.echo(f"count file: {output} (twin predict --counts {output} --platform BOARD)")
