"""The QEMU backend: start the right qemu-system-* for a platform, expose the console UART as a TCP
socket that the host opens through pyserial (``socket://127.0.0.1:PORT``, the same code path as
``/dev/ttyACM0``), and collect the profiling plugin's dump when the run ends."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from twin.device.backend import EmulatorError, ProcessBackend
from twin.platforms import Platform

__all__ = ["EmulatorError", "QemuConfig", "QemuProcess", "qemu_binary", "qemu_command"]


@dataclass(frozen=True)
class QemuConfig:
    """What to run: firmware ELF, model image (loaded at the platform's model address), plugin."""
    elf: Path
    image: Path | None = None
    extra_args: tuple[str, ...] = ()   # e.g. the profiling plugin's ("-plugin", "path.so,out=…")
    timeout: float = 120.0             # wall-clock limit for the whole run


def qemu_binary(platform: Platform) -> str:
    emu = platform.emulator
    if emu is None or emu.kind != "qemu":
        raise EmulatorError(f"platform {platform.id} has no QEMU model; it runs only on a real board")
    path = shutil.which(emu.binary)
    if path is None:
        raise EmulatorError(f"{emu.binary} not found: install the Debian package {emu.package} "
                            f"(scripts/setup does it)")
    return path


def qemu_command(platform: Platform, cfg: QemuConfig, listen_fd: int) -> list[str]:
    """The command line; the console UART is the chardev on ``listen_fd``, a TCP socket that is
    already listening (QEMU inherits it, so no other process can take its port in between)."""
    emu = platform.emulator
    assert emu is not None
    cmd = [qemu_binary(platform), "-M", emu.machine, "-display", "none", "-monitor", "none",
           "-no-reboot", *emu.extra_args, "-kernel", str(cfg.elf),
           "-chardev", f"socket,id=console,fd={listen_fd},server=on,wait=on,nodelay=on"]
    for role in emu.serial:
        cmd += ["-serial", "chardev:console" if role == "uart" else role]
    if cfg.image is not None:
        cmd += ["-device", f"loader,file={cfg.image},addr={platform.model.origin:#x},force-raw=on"]
    return cmd + list(cfg.extra_args)


class QemuProcess(ProcessBackend):
    """One running QEMU (twin/device/backend.py has the lifecycle)."""

    name = "QEMU"

    def __init__(self, platform: Platform, cfg: QemuConfig):
        super().__init__(platform, cfg.timeout)
        self.cfg = cfg

    def command(self, listen_fd: int) -> list[str]:
        return qemu_command(self.platform, self.cfg, listen_fd)

    def routine(self, line: str) -> bool:
        return "QEMU waiting for connection" in line     # its notice that it waits for the host
