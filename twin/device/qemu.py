"""The QEMU backend: start the right qemu-system-* for a platform, expose the console UART as a TCP
socket that the host opens through pyserial (``socket://127.0.0.1:PORT``, the same code path as
``/dev/ttyACM0``), and collect the profiling plugin's dump when the run ends."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from twin.device.procguard import spawn
from twin.platforms import Platform


class EmulatorError(RuntimeError):
    """QEMU could not start, crashed, or had to be killed."""


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


class QemuProcess:
    """One running QEMU. Use as a context manager; ``url`` is what pyserial opens."""

    name = "QEMU"

    def __init__(self, platform: Platform, cfg: QemuConfig):
        self.platform = platform
        self.cfg = cfg
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._stderr = tempfile.TemporaryFile()
        self.deadline = 0.0

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def start(self) -> QemuProcess:
        # Bind and listen here, then hand the socket to QEMU: the port is ours from the first
        # moment, and a client may connect before QEMU accepts (the backlog holds it).
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            self.port = listener.getsockname()[1]
            cmd = qemu_command(self.platform, self.cfg, listener.fileno())
            # spawn: QEMU is killed by the kernel if this process dies (twin/device/procguard.py)
            self.proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=self._stderr, pass_fds=(listener.fileno(),))
        self.deadline = time.monotonic() + self.cfg.timeout
        return self

    def stderr(self) -> str:
        """What QEMU wrote to stderr, without its routine notice that it waits for the host."""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").splitlines()
        return "\n".join(x for x in lines if "QEMU waiting for connection" not in x).strip()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the guest to end the run; kill QEMU if it does not."""
        try:
            return self.proc.wait(timeout=min(timeout, self.remaining() + 0.1))
        except subprocess.TimeoutExpired:
            self.kill()
            raise EmulatorError(f"QEMU did not exit {timeout:.0f} s after the firmware was told to stop; "
                                f"killed it. {self.stderr()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> QemuProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
        self._stderr.close()
