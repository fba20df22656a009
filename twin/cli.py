"""`twin` — the command line: a thin skin over the Python API."""

from __future__ import annotations

import json
import sys

import click

from .platforms import PlatformError, all_platforms, get_platform


class TwinCliError(click.ClickException):
    """One line: what was wrong and what to do."""

    def format_message(self) -> str:
        return self.message


def _fail(exc: Exception) -> TwinCliError:
    return TwinCliError(str(exc))


def _human_bytes(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.0f} MiB"


def _emulated() -> list[str]:
    return [p.id for p in all_platforms().values() if p.emulator is not None]


@click.group()
def main() -> None:
    """Digital-twin profiler for quantized tiny LLMs on microcontrollers."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
def platforms(as_json: bool) -> None:
    """List the platforms: id, core, emulator, clock, memories."""
    rows = []
    for p in all_platforms().values():
        emu = f"{p.emulator.kind}:{p.emulator.machine}" if p.emulator else "-"
        rows.append({"id": p.id, "core": p.core, "emulator": emu, "clock_mhz": p.clock_hz / 1e6,
                     "flash_bytes": p.flash.size, "model_bytes": p.model.size, "ram_bytes": p.ram.size})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'id':<16}{'core':<12}{'emulator':<22}{'clock':>9}  {'code':>8} {'model':>8} {'RAM':>8}")
    for r in rows:
        click.echo(f"{r['id']:<16}{r['core']:<12}{r['emulator']:<22}{r['clock_mhz']:>6.0f} MHz  "
                   f"{_human_bytes(r['flash_bytes']):>8} {_human_bytes(r['model_bytes']):>8} "
                   f"{_human_bytes(r['ram_bytes']):>8}")


@main.command()
@click.option("--platform", "platform_ids", multiple=True, help="Platform id (repeatable).")
@click.option("--all", "build_all", is_flag=True, help="Every platform that has an emulator model.")
@click.option("--quiet", is_flag=True)
def build(platform_ids: tuple[str, ...], build_all: bool, quiet: bool) -> None:
    """Build the firmware (and the profiling plugin); cached by content hash."""
    from .build import BuildError, build_firmware
    from .profile import ProfileError, build_plugin

    ids = _emulated() if build_all else list(platform_ids)
    if not ids:
        raise TwinCliError("name a platform with --platform ID, or use --all")
    try:
        for pid in ids:
            fw = build_firmware(get_platform(pid))
            if not quiet:
                click.echo(f"{pid:<16} {fw.elf}")
        plugin = build_plugin()
        if not quiet:
            click.echo(f"{'plugin':<16} {plugin}")
    except (PlatformError, BuildError, ProfileError) as exc:
        raise _fail(exc) from None


if __name__ == "__main__":
    sys.exit(main())
