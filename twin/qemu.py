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

from .platforms import Platform


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qemu_command(platform: Platform, cfg: QemuConfig, port: int) -> list[str]:
    emu = platform.emulator
    assert emu is not None
    cmd = [qemu_binary(platform), "-M", emu.machine, "-display", "none", "-monitor", "none",
           "-no-reboot", *emu.extra_args, "-kernel", str(cfg.elf)]
    for role in emu.serial:
        if role == "uart":
            cmd += ["-serial", f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on"]
        else:
            cmd += ["-serial", role]
    if cfg.image is not None:
        cmd += ["-device", f"loader,file={cfg.image},addr={platform.model.origin:#x},force-raw=on"]
    return cmd + list(cfg.extra_args)


class QemuProcess:
    """One running QEMU. Use as a context manager; ``url`` is what pyserial opens."""

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
        for _attempt in range(5):   # another process may grab the free port before QEMU binds it
            self.port = _free_port()
            self._stderr.seek(0)
            self._stderr.truncate()
            cmd = qemu_command(self.platform, self.cfg, self.port)
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=self._stderr)
            self.deadline = time.monotonic() + self.cfg.timeout
            if self._wait_listening():
                return self
            if "Address already in use" not in self.stderr():
                raise EmulatorError(f"{Path(cmd[0]).name} failed to start for {self.platform.id} "
                                    f"(exit status {self.proc.returncode}): {self.stderr() or 'no message'}")
        raise EmulatorError("could not find a free TCP port for the emulated UART after 5 tries")

    def _wait_listening(self) -> bool:
        """Wait until QEMU listens on the UART port (True) or has exited (False)."""
        limit = time.monotonic() + 15
        while time.monotonic() < limit:
            if self.proc.poll() is not None:
                return False
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", self.port))
                except OSError:
                    return True          # the port is taken: QEMU is listening on it
            time.sleep(0.01)
        self.kill()
        raise EmulatorError(f"QEMU did not open its UART socket within 15 s: {self.stderr()}")

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

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
