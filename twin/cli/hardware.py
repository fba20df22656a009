"""`twin hardware scan` (propose a hardware map from the serial ports and debug probes this machine
sees) and `twin renode-script` (a .resc for driving Renode by hand). Registered on the main group at
the bottom of twin/cli/main.py."""

from __future__ import annotations

import click

from twin.cli.main import TwinCliError


@click.group("hardware")
def hardware() -> None:
    """Real boards on this machine: the hardware map (docs/hardware.md)."""


@hardware.command("scan")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="Write the proposed hardware map here (default: print it).")
def scan_cmd(output: str | None) -> None:
    """Propose a hardware map from pyserial's port listing and the probes pyOCD sees (edit it, then
    use `--device ID` with `twin run` / `twin bench`)."""
    from twin.atomic import check_output_path, write_text
    from twin.device.hardware import list_ports, list_probes, propose_map

    if output:
        try:
            check_output_path(output, "-o")
        except ValueError as exc:
            raise TwinCliError(str(exc)) from None
    probes, note = list_probes()
    text = propose_map(list_ports(), probes, probe_note=note)
    if output:
        write_text(output, text)
        click.echo(f"hardware map proposal -> {output} (check each board's platform, then TWIN_HARDWARE_MAP={output})")
    else:
        click.echo(text, nl=False)


@click.command("renode-script")
@click.option("--platform", required=True, help="Platform id (see `twin platforms`).")
@click.option("--model", default="builtin", show_default=True, help="'builtin', a model image, or 'none'.")
@click.option("--bits", default=4, show_default=True, type=click.Choice(["2", "3", "4", "8"]))
@click.option("--port", default=3456, show_default=True, type=click.IntRange(1, 65535),
              help="The console's server-socket port (open it as socket://127.0.0.1:PORT).")
@click.option("--counts", default="twin-counts.txt", show_default=True,
              help="Where the twin_mark hook appends the opcode-counter snapshots.")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="The .resc (default: print it).")
def renode_script_cmd(platform: str, model: str, bits: str, port: int, counts: str, output: str | None) -> None:
    """Write a Renode script (.resc) that runs the platform's firmware and model image with the console on
    a socket and the opcode counters of the twin's instruction classes."""
    from twin.atomic import check_output_path, write_text
    from twin.device.build import BuildError, build_firmware
    from twin.device.renode import RenodeError, renode_script
    from twin.model.image import ImageError
    from twin.platforms import PlatformError, get_platform
    from twin.runner import RunError, RunSpec, model_image

    try:
        if output:
            check_output_path(output, "-o")
        p = get_platform(platform)
        fw = build_firmware(p)
        image = None if model.lower() == "none" else model_image(RunSpec(platform=p.id, model=model, bits=int(bits)))[0]
        text = renode_script(p, fw.elf, image, port=port, counts=counts)
    except (ValueError, PlatformError, BuildError, RenodeError, RunError, ImageError) as exc:
        raise TwinCliError(str(exc)) from None
    if output:
        write_text(output, text)
        click.echo(f"{output}: `renode {output}`, then the console is socket://127.0.0.1:{port}")
    else:
        click.echo(text, nl=False)


# --------------------------------------------------------------------------- --device for `twin run` / `twin bench`


def run_on_device(report: dict, device: str, spec) -> dict:
    """`twin run --device ID`: twin.runner.with_board, its hardware-map errors as one line."""
    from twin.device.hardware import HardwareMapError
    from twin.runner import with_board

    try:
        return with_board(report, device, spec)
    except HardwareMapError as exc:            # no map, an unknown id, an unplugged board
        raise TwinCliError(str(exc)) from None


class device_port:
    """`twin bench --device ID`: flash the board with the bench's firmware and model image, and give the
    bench its port (the board backend's relay) for the run. A context manager over the BenchSpec."""

    def __init__(self, spec, device: str | None):
        self.spec, self.device, self.backend = spec, device, None

    def __enter__(self):
        if self.device is None:
            return self.spec
        import dataclasses

        from twin.device.board import BoardError, BoardProcess, board_for
        from twin.device.build import build_firmware
        from twin.device.hardware import HardwareMapError
        from twin.platforms import get_platform
        from twin.runner import RunSpec, model_image

        try:
            entry, plat = board_for(self.device)
        except HardwareMapError as exc:
            raise TwinCliError(str(exc)) from None
        if plat.id != self.spec.platform:
            raise BoardError(f"board {entry.id} is a {plat.id} in the hardware map, not {self.spec.platform}: use "
                             f"--platform {plat.id}, or another --device")
        platform = get_platform(self.spec.platform)
        image = (model_image(RunSpec(platform=platform.id, model=self.spec.model, bits=self.spec.bits))[0]
                 if self.spec.model else None)
        self.backend = BoardProcess(platform, build_firmware(platform).elf, image, board=entry,
                                    timeout=self.spec.timeout).start()
        return dataclasses.replace(self.spec, port=self.backend.url, baudrate=entry.baudrate)

    def __exit__(self, *exc) -> None:
        if self.backend is not None:
            self.backend.__exit__(*exc)
