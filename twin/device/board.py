"""A real board as a device backend: flash the ELF and the model image with pyOCD, OpenOCD or probe-rs
(whichever the board's descriptor names and this machine has; pyOCD is the Python default), reset it,
and talk the protocol over its serial port.

The same interface as the QEMU, RTL and Renode backends (``url``, ``start``, ``remaining``, ``proc``,
``wait_exit``, ``kill``, ``stderr``, context manager). ``url`` is a local socket the host opens with
pyserial; a relay thread, when the host connects, opens the board's serial port, resets the board
(so its BOOT announcement reaches a listening host, whatever the USB-serial bridge buffered before)
and copies bytes both ways. :func:`check_hello` refuses a board whose HELLO names another platform
or firmware build than the one flashed.

Errors are clear and nothing hangs: an unplugged board (no such port, no port with its USB identity)
fails before flashing; a flash whose runner exits non-zero (or runs past its time-out) names the
command and its last output lines; a silent board is the transport's time-out.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from twin.device.backend import EmulatorError, Relay
from twin.device.hardware import HardwareBoard, resolve_port
from twin.device.protocol import Info
from twin.platforms import FLASH_RUNNERS, Platform

FLASH_TIMEOUT = 180.0        # seconds one runner command may take (a full-chip erase of a big part)
EXECUTABLES = {"pyocd": "pyocd", "openocd": "openocd", "probe-rs": "probe-rs"}
INSTALL = {"pyocd": "pip install '.[hardware]' (pyOCD)", "openocd": "apt-get install openocd",
           "probe-rs": "install probe-rs (its installer or cargo install probe-rs-tools)"}


class BoardError(EmulatorError):
    """The board could not be flashed, found, or talked to; the message says what to do."""


@dataclass(frozen=True)
class FlashPlan:
    runner: str
    target: str
    commands: tuple[tuple[str, ...], ...]     # programming (ELF, then model image), then a reset


def flash_commands(runner: str, target: str, elf: Path | str, image: Path | str | None, model_origin: int,
                   probe: str | None = None, exe: str | None = None) -> list[list[str]]:
    """The runner's command lines: program the ELF, program the model image (raw) at ``model_origin``,
    reset and run. ``probe`` picks one probe when several are plugged in."""
    exe = exe or EXECUTABLES[runner]
    elf, addr = str(elf), f"{model_origin:#x}"
    if runner == "pyocd":
        sel = ["-t", target] + (["-u", probe] if probe else [])
        cmds = [[exe, "load", *sel, "--no-reset", elf]]
        if image is not None:
            cmds.append([exe, "load", *sel, "--no-reset", "--format", "bin", "--base-address", addr, str(image)])
        cmds.append([exe, "reset", *sel])
        return cmds
    if runner == "openocd":
        cmd = [exe] + (["-c", f"adapter serial {probe}"] if probe else []) + ["-f", target,
                                                                             "-c", f"program {{{elf}}} verify"]
        if image is not None:
            cmd += ["-c", f"program {{{image}}} {addr} verify"]
        return [cmd + ["-c", "reset run", "-c", "shutdown"]]
    if runner == "probe-rs":
        sel = ["--chip", target] + (["--probe", probe] if probe else [])
        cmds = [[exe, "download", *sel, elf]]
        if image is not None:
            cmds.append([exe, "download", *sel, "--binary-format", "bin", "--base-address", addr, str(image)])
        cmds.append([exe, "reset", *sel])
        return cmds
    raise BoardError(f"unknown flash runner {runner!r}; runners: {', '.join(FLASH_RUNNERS)}")


def reset_command(plan: FlashPlan, probe: str | None) -> list[str] | None:
    """The runner's reset alone (the relay resets the board once the host listens)."""
    exe = plan.commands[0][0]
    if plan.runner == "pyocd":
        return [exe, "reset", "-t", plan.target] + (["-u", probe] if probe else [])
    if plan.runner == "probe-rs":
        return [exe, "reset", "--chip", plan.target] + (["--probe", probe] if probe else [])
    if plan.runner == "openocd":
        return [exe] + (["-c", f"adapter serial {probe}"] if probe else []) + ["-f", plan.target, "-c", "init",
                                                                              "-c", "reset run", "-c", "shutdown"]
    return None


def plan_flash(platform: Platform, elf: Path | str, image: Path | str | None, board: HardwareBoard | None = None,
               which=shutil.which) -> FlashPlan:
    """Pick the runner (the hardware map's, else the platform's ``flash:`` runners in order, else pyOCD)
    that this machine has, and its target; the command lines to flash with it."""
    spec = platform.flash_with
    wanted = ((board.runner,) if board is not None and board.runner else
              spec.runners if spec is not None else ("pyocd",))
    missing = []
    for runner in wanted:
        exe = which(EXECUTABLES[runner])
        if exe is None:
            missing.append(runner)
            continue
        target = (board.target if board is not None and board.target else
                  spec.target_for(runner) if spec is not None else None)
        if not target:
            raise BoardError(f"platform {platform.id} names no flash target: add `flash: {{runner: {runner}, "
                             f"target: PART}}` to its platform file or `target:` to the board in the hardware map")
        probe = board.probe if board is not None else None
        return FlashPlan(runner, target, tuple(tuple(c) for c in
                                               flash_commands(runner, target, elf, image, platform.model.origin,
                                                              probe, exe)))
    how = "; ".join(f"{r}: {INSTALL[r]}" for r in missing)
    raise BoardError(f"no flash runner for {platform.id} on this machine (wanted {', '.join(wanted)}): {how}")


def run_flash(plan: FlashPlan, timeout: float = FLASH_TIMEOUT) -> str:
    """Run the plan's commands in order; the first that fails (or hangs) is a BoardError naming it."""
    log = []
    for cmd in plan.commands:
        try:
            proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BoardError(f"flashing with {plan.runner} did not finish within {timeout:.0f} s: "
                             f"{' '.join(cmd)} — is the probe connected and the board powered?") from None
        except OSError as exc:
            raise BoardError(f"cannot run {cmd[0]}: {exc}") from None
        out = (proc.stdout + proc.stderr).strip()
        log.append(out)
        if proc.returncode != 0:
            tail = "\n".join(out.splitlines()[-8:]) or "(no output)"
            raise BoardError(f"flashing failed: `{' '.join(cmd)}` exited with status {proc.returncode}:\n{tail}")
    return "\n".join(x for x in log if x)


def check_hello(info: Info, platform: Platform, build_id: str | None, where: str) -> None:
    """The board runs the firmware that was flashed: its HELLO names this platform and build."""
    if info.board != platform.id:
        raise BoardError(f"the board on {where} runs firmware for {info.board!r}, not {platform.id}: the wrong "
                         "board is plugged in there, or the flash did not take (check the hardware map)")
    if build_id is not None and info.build_id != build_id:
        raise BoardError(f"the board on {where} runs firmware build {info.build_id!r}, not the {build_id!r} just "
                         "flashed: the flash did not take (or another board answered)")


class _Status:
    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if timeout:
                time.sleep(min(timeout, 0.1))
            raise subprocess.TimeoutExpired("board", timeout or 0)
        return self.returncode


class BoardProcess:
    """A flashed board behind a local socket (``url``). ``board``: its hardware-map entry (port, probe,
    runner); ``port`` instead: a serial port or pyserial URL (then no USB matching). ``flash=False``
    talks to the firmware already on the board."""

    name = "the board"

    def __init__(self, platform: Platform, elf: Path | None, image: Path | None = None, *,
                 board: HardwareBoard | None = None, port: str | None = None, timeout: float = 600.0,
                 flash: bool = True, baudrate: int | None = None, which=shutil.which):
        if board is None and port is None:
            raise BoardError("a board backend needs a hardware-map entry or a serial port")
        self.platform = platform
        self.elf = elf
        self.image = image
        self.board = board
        self.serial_port = port
        self.timeout = timeout
        self.flash = flash
        self.baudrate = baudrate or (board.baudrate if board is not None else 115200)
        self.which = which
        self.plan: FlashPlan | None = None
        self.port = 0
        self.proc = _Status()
        self.deadline = 0.0
        self.notes: list[str] = []
        self._relay: Relay | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    @property
    def where(self) -> str:
        return self.serial_port or (self.board.id if self.board else "?")

    def start(self) -> BoardProcess:
        # Find the board before touching a probe: an unplugged board fails here, at once.
        self.serial_port = resolve_port(self.board) if self.board is not None else self.serial_port
        if self.serial_port and "://" not in self.serial_port and not Path(self.serial_port).exists():
            raise BoardError(f"serial port {self.serial_port} does not exist — is the board unplugged?")
        if self.flash:
            if self.elf is None:
                raise BoardError("nothing to flash: no ELF given")
            self.plan = plan_flash(self.platform, self.elf, self.image, self.board, self.which)
            out = run_flash(self.plan)
            if out:
                self.notes.append(out)
        self.deadline = time.monotonic() + self.timeout
        self._relay = Relay(self._serve, "twin-board-relay", self.timeout)
        self.port = self._relay.port
        return self

    def _serve(self, host: socket.socket) -> None:
        import serial

        try:
            ser = serial.serial_for_url(self.serial_port, baudrate=self.baudrate, timeout=0.05)
        except (serial.SerialException, OSError, ValueError) as exc:
            self.notes.append(f"cannot open {self.serial_port}: {exc} — unplugged?")
            host.close()
            self.proc.returncode = 1
            return
        if self.plan is not None:           # reset now that the host listens: BOOT reaches it
            cmd = reset_command(self.plan, self.board.probe if self.board else None)
            if cmd:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
                if r.returncode != 0:
                    self.notes.append(f"reset `{' '.join(cmd)}` failed: {(r.stdout + r.stderr).strip()[-300:]}")

        def to_board() -> None:
            try:
                while not self._stop.is_set():
                    data = host.recv(4096)
                    if not data:
                        break
                    ser.write(data)
            except (OSError, serial.SerialException):
                pass
            self._stop.set()

        t = threading.Thread(target=to_board, daemon=True)
        t.start()
        try:
            while not self._stop.is_set():
                data = ser.read(ser.in_waiting or 1)
                if data:
                    host.sendall(data)
        except (OSError, serial.SerialException) as exc:
            self.notes.append(f"{self.serial_port}: {exc} — the board was unplugged?")
        self._stop.set()
        for closer in (host.close, ser.close):
            try:
                closer()
            except (OSError, serial.SerialException):
                pass
        t.join(timeout=2)

    def alive(self) -> bool:
        return self.proc.poll() is None and not self._stop.is_set()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def wait_exit(self, timeout: float = 10.0) -> int:
        """The firmware has said BYE and resets itself: the board stays; the run is over."""
        self.kill()
        self.proc.returncode = 0
        return 0

    def kill(self) -> None:
        self._stop.set()
        if self._relay is not None:
            self._relay.close()
        if self.proc.returncode is None:
            self.proc.returncode = -1

    def stderr(self) -> str:
        return "\n".join(self.notes[-3:]).strip()

    def __enter__(self) -> BoardProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
        if self._relay is not None:
            self._relay.join(3)


def board_for(board_id: str, map_file: Path | str | None = None):
    """(hardware-map entry, its Platform) for ``--device ID``."""
    from twin.device.hardware import load_hardware_map
    from twin.platforms import PlatformError, get_platform

    entry = load_hardware_map(map_file).get(board_id)
    try:
        return entry, get_platform(entry.platform)
    except PlatformError as exc:
        raise BoardError(f"board {board_id} in the hardware map: {exc}") from None


@dataclass
class BoardSession:
    backend: BoardProcess
    device: object              # twin.device.transport.Device
    boot_phases: list
    info: Info


@contextmanager
def board_session(backend: BoardProcess, build_id: str | None, reply_timeout: float = 30.0) -> Iterator[BoardSession]:
    """Flash (``backend.start``), open the board through the relay, say HELLO and check it names the
    platform and build flashed; on leaving, EXIT. A silent or vanished board is a BoardError."""
    from twin.device.protocol import ProtocolError
    from twin.device.transport import Device, DeviceGone, DeviceTimeout

    with backend:
        where = backend.where
        try:
            with Device.from_url(backend.url, timeout=reply_timeout, deadline=backend.remaining()) as dev:
                if backend.plan is not None:          # just reset: it announces itself
                    dev.wait_boot()
                phases, info = dev.hello()
                check_hello(info, backend.platform, build_id, where)
                yield BoardSession(backend, dev, phases, info)
                dev.exit()
        except DeviceTimeout as exc:
            said = backend.stderr()
            raise BoardError(f"{exc}. The board on {where} is silent: is the twin firmware on it (flash it: drop "
                             f"--no-flash), the baud rate {backend.baudrate}, and its console on this port?"
                             + (f" ({said})" if said else "")) from None
        except DeviceGone as exc:
            said = backend.stderr()
            raise BoardError(f"{exc}. The board on {where} went away" + (f": {said}" if said else "")) from None
        except ProtocolError as exc:
            raise BoardError(f"the board on {where}: {exc}") from None


def run_on_board(entry: HardwareBoard, platform: Platform, elf: Path, build_id: str, image: Path | None,
                 prompt_ids: list[int], tokens: int, *, seed: int = 0, temperature: float = 0.0, topp: float = 0.9,
                 expected: list[int] | None = None, reply_timeout: float = 30.0, flash: bool = True) -> dict:
    """Flash ``entry`` and run one generation on it: the board's part of a `twin run --device` report."""
    if entry.platform != platform.id:
        raise BoardError(f"board {entry.id} is a {entry.platform} in the hardware map, not {platform.id}: "
                         f"use --platform {entry.platform}, or another --device")
    backend = BoardProcess(platform, elf, image, board=entry, flash=flash)
    with board_session(backend, build_id if flash else None, reply_timeout) as s:
        phases, _ = s.device.run(prompt_ids, tokens, seed=seed, temperature=temperature, topp=topp)
    got = [p.token for p in phases if p.kind == 2]
    return {"kind": "hardware", "device": entry.id, "port": backend.where, "runner": backend.plan.runner
            if backend.plan else None, "tokens": got, "matches_reference": expected is None or got == expected,
            "cycles": {"counter": platform.cycle_counter, "prefill": sum(p.cycles for p in phases if p.kind == 1),
                       "decode": [p.cycles for p in phases if p.kind == 2]},
            "build_id": s.info.build_id, "clock_hz": s.info.clock_hz}
