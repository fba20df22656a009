"""The hardware map: which physical board is which, so two boards of the same kind are never confused.

A YAML file (``$TWIN_HARDWARE_MAP``, else ``./hardware.yaml``, else ``~/.config/tinyllm-twin/hardware.yaml``)::

    boards:
      - id: f407-left                # what --device takes
        platform: stm32f4-disco      # the platform file its firmware is built from
        serial: /dev/serial/by-id/usb-STMicroelectronics_STM32_STLink_066DFF-if02   # the console, or:
        usb: {vid: 0x0483, pid: 0x374b, serial_number: 066DFF485457725187092435}    # found by USB identity
        probe: 066DFF485457725187092435   # the debug probe's unique id (pyOCD -u, probe-rs --probe, OpenOCD adapter serial)
        runner: pyocd                # optional: overrides the platform's flash.runner
        target: stm32f407vg          # optional: overrides the platform's flash.target
        baudrate: 115200
        notes: left of the bench, blue cable

A board is found by its ``serial`` path (it must exist) or by its USB identity among pyserial's ports
(exactly one port must match: two boards with one VID/PID need their ``serial_number``).
``twin hardware scan`` proposes a map from the ports and the probes this machine sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from twin.platforms import FLASH_RUNNERS

MAP_ENV = "TWIN_HARDWARE_MAP"
DEFAULT_MAPS = (Path("hardware.yaml"), Path("~/.config/tinyllm-twin/hardware.yaml"))
# USB vendors of the debug probes / boards the catalog has, for the scan's guess of a platform
VENDOR_GUESS = {0x0483: ("STMicroelectronics ST-LINK", "stm32f4-disco"), 0x1366: ("SEGGER J-Link", "nrf52840-dk"),
                0x2E8A: ("Raspberry Pi", "rpi-pico"), 0x0D28: ("Arm DAPLink / CMSIS-DAP", None),
                0x0403: ("FTDI", None), 0x10C4: ("Silicon Labs CP210x", None), 0x1A86: ("WCH CH34x", None)}


class HardwareMapError(ValueError):
    """The hardware map is missing or broken, or names no such board."""


class BoardUnplugged(HardwareMapError):
    """The board's serial port does not exist / no port has its USB identity."""


@dataclass(frozen=True)
class UsbId:
    vid: int
    pid: int
    serial_number: str | None = None

    def matches(self, port) -> bool:
        return (getattr(port, "vid", None) == self.vid and getattr(port, "pid", None) == self.pid
                and (self.serial_number is None or getattr(port, "serial_number", None) == self.serial_number))

    def __str__(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}" + (f" serial {self.serial_number}" if self.serial_number else "")


@dataclass(frozen=True)
class HardwareBoard:
    id: str
    platform: str
    serial: str | None = None
    usb: UsbId | None = None
    probe: str | None = None
    runner: str | None = None
    target: str | None = None
    baudrate: int = 115200
    notes: str = ""


@dataclass(frozen=True)
class HardwareMap:
    boards: tuple[HardwareBoard, ...]
    source: Path | None = None

    def get(self, board_id: str) -> HardwareBoard:
        for b in self.boards:
            if b.id == board_id:
                return b
        known = ", ".join(b.id for b in self.boards) or "none"
        raise HardwareMapError(f"{self.source or 'the hardware map'}: no board {board_id!r}; boards: {known}")


def _int(value, where: str) -> int:
    if isinstance(value, bool):
        raise HardwareMapError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16 if not value.lower().startswith("0x") else 0)
        except ValueError:
            pass
    raise HardwareMapError(f"{where}: expected a USB id (e.g. 0x0483), got {value!r}")


def parse_hardware_map(data: object, source: Path | None = None) -> HardwareMap:
    where = str(source or "hardware map")
    if not isinstance(data, dict) or not isinstance(data.get("boards"), list):
        raise HardwareMapError(f"{where}: expected a mapping with a 'boards' list")
    boards, seen = [], {}
    for i, b in enumerate(data["boards"]):
        bw = f"{where}: boards[{i}]"
        if not isinstance(b, dict):
            raise HardwareMapError(f"{bw}: expected a mapping (id, platform, serial or usb, probe, runner, notes)")
        unknown = sorted(set(b) - {"id", "platform", "serial", "usb", "probe", "runner", "target", "baudrate", "notes"})
        if unknown:
            raise HardwareMapError(f"{bw}: unknown field '{unknown[0]}'")
        for key in ("id", "platform"):
            if not isinstance(b.get(key), str) or not b[key].strip():
                raise HardwareMapError(f"{bw}: field '{key}' must be a non-empty string")
        bid = b["id"]
        if bid in seen:
            raise HardwareMapError(f"{bw}: board id {bid!r} is used twice (also boards[{seen[bid]}])")
        seen[bid] = i
        usb = None
        if b.get("usb") is not None:
            u = b["usb"]
            if not isinstance(u, dict) or "vid" not in u or "pid" not in u:
                raise HardwareMapError(f"{bw}: field 'usb' needs vid and pid (and serial_number to tell boards apart)")
            sn = u.get("serial_number")
            usb = UsbId(_int(u["vid"], f"{bw}.usb.vid"), _int(u["pid"], f"{bw}.usb.pid"),
                        None if sn is None else str(sn))
        serial = b.get("serial")
        if serial is not None and not isinstance(serial, str):
            raise HardwareMapError(f"{bw}: field 'serial' must be a port path, got {serial!r}")
        if serial is None and usb is None:
            raise HardwareMapError(f"{bw} ({bid}): give 'serial' (the port) or 'usb' (vid, pid, serial_number)")
        runner = b.get("runner")
        if runner is not None and runner not in FLASH_RUNNERS:
            raise HardwareMapError(f"{bw}: field 'runner' must be one of {', '.join(FLASH_RUNNERS)}, got {runner!r}")
        baud = b.get("baudrate", 115200)
        if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
            raise HardwareMapError(f"{bw}: field 'baudrate' must be a positive integer, got {baud!r}")
        boards.append(HardwareBoard(bid, b["platform"], serial, usb, None if b.get("probe") is None else str(b["probe"]),
                                    runner, b.get("target"), baud, str(b.get("notes") or "")))
    # two boards that the map could not tell apart
    for i, a in enumerate(boards):
        for c in boards[i + 1:]:
            if a.serial and a.serial == c.serial:
                raise HardwareMapError(f"{where}: boards {a.id} and {c.id} name the same serial port {a.serial}")
            if (a.serial is None and c.serial is None and a.usb and c.usb and (a.usb.vid, a.usb.pid) == (c.usb.vid, c.usb.pid)
                    and (a.usb.serial_number is None or c.usb.serial_number is None
                         or a.usb.serial_number == c.usb.serial_number)):
                raise HardwareMapError(f"{where}: boards {a.id} and {c.id} have the same USB identity {a.usb}: give "
                                       "each its usb.serial_number (or its serial port path)")
            if a.probe and a.probe == c.probe:
                raise HardwareMapError(f"{where}: boards {a.id} and {c.id} name the same probe {a.probe}")
    return HardwareMap(tuple(boards), source)


def map_path(path: Path | str | None = None) -> Path:
    if path is not None:
        return Path(path)
    if os.environ.get(MAP_ENV):
        return Path(os.environ[MAP_ENV])
    for p in DEFAULT_MAPS:
        if p.expanduser().is_file():
            return p.expanduser()
    raise HardwareMapError(f"no hardware map: set {MAP_ENV}=FILE or write ./hardware.yaml "
                           "(`twin hardware scan -o hardware.yaml` proposes one)")


def load_hardware_map(path: Path | str | None = None) -> HardwareMap:
    p = map_path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise HardwareMapError(f"cannot read the hardware map {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise HardwareMapError(f"{p}: not valid YAML: {exc}") from None
    return parse_hardware_map(data, p)


def list_ports() -> list:
    """pyserial's port listing (serial.tools.list_ports)."""
    from serial.tools import list_ports as lp

    return list(lp.comports())


def list_probes() -> tuple[list[dict], str | None]:
    """The debug probes pyOCD sees ([{unique_id, description, vendor}]), and a note when it cannot look."""
    try:
        from pyocd.probe.aggregator import DebugProbeAggregator
    except ImportError:
        return [], "pyOCD not installed (pip install '.[hardware]'): probes not listed"
    try:
        probes = DebugProbeAggregator.get_all_connected_probes()
    except Exception as exc:      # noqa: BLE001 - a USB back-end error is a note, not a failure
        return [], f"pyOCD could not list probes: {exc}"
    return [{"unique_id": p.unique_id, "description": p.description,
             "vendor": getattr(p, "vendor_name", "")} for p in probes], None


def resolve_port(board: HardwareBoard, ports: list | None = None) -> str:
    """The serial port of ``board`` now: its ``serial`` path (which must exist) or the one port with its
    USB identity. An unplugged board is a BoardUnplugged naming what was looked for."""
    if board.serial:
        if "://" in board.serial:          # a pyserial URL (socket://, rfc2217://): opened as it is
            return board.serial
        if not os.path.exists(board.serial):
            raise BoardUnplugged(f"board {board.id}: its serial port {board.serial} does not exist — is it "
                                 "unplugged, or did it enumerate under another name? (`twin hardware scan`)")
        return board.serial
    assert board.usb is not None
    ports = list_ports() if ports is None else ports
    found = [p for p in ports if board.usb.matches(p)]
    if not found:
        raise BoardUnplugged(f"board {board.id}: no serial port has USB id {board.usb} — is it unplugged? "
                             f"({len(ports)} port(s) seen: `twin hardware scan`)")
    if len(found) > 1:
        names = ", ".join(f"{p.device} (serial {getattr(p, 'serial_number', None)})" for p in found)
        raise HardwareMapError(f"board {board.id}: {len(found)} ports have USB id {board.usb}: {names}; give "
                               "usb.serial_number so the two boards are never confused")
    return found[0].device


def propose_map(ports: list, probes: list[dict], probe_note: str | None = None) -> str:
    """A hardware map proposal (YAML text) for these ports and probes: one board per USB serial port;
    a probe whose unique id equals the port's USB serial number (ST-LINK, CMSIS-DAP) is its probe."""
    lines = ["# proposed by `twin hardware scan`: check each board's platform and id, then point",
             f"# {MAP_ENV} at this file (docs/hardware.md)."]
    if probe_note:
        lines.append(f"# {probe_note}")
    lines.append("boards:")
    head = len(lines) - 1
    by_uid = {str(p["unique_id"]): p for p in probes}
    used: set[str] = set()
    n = 0
    for port in sorted(ports, key=lambda p: p.device):
        vid, pid = getattr(port, "vid", None), getattr(port, "pid", None)
        if vid is None or pid is None:
            continue                          # not a USB serial port (a built-in UART, a Bluetooth port)
        n += 1
        vendor, guess = VENDOR_GUESS.get(vid, (getattr(port, "manufacturer", None) or "unknown vendor", None))
        sn = getattr(port, "serial_number", None)
        probe = by_uid.get(str(sn)) if sn else None
        platform = guess or "FILL-IN"
        lines += [f"  - id: board{n}", f"    platform: {platform}" + ("" if guess else "     # not guessed: name it"),
                  f"    serial: {port.device}"]
        usb = f"    usb: {{vid: {vid:#06x}, pid: {pid:#06x}"
        lines.append(usb + (f", serial_number: '{sn}'}}" if sn else "}"))
        if probe is not None:
            used.add(str(sn))
            lines.append(f"    probe: '{probe['unique_id']}'")
        desc = getattr(port, "description", "") or ""
        lines.append(f"    notes: '{vendor}; {desc}'".replace("\n", " ") if desc else f"    notes: '{vendor}'")
    for uid, p in by_uid.items():
        if uid not in used:
            lines.append(f"  # probe {uid} ({p.get('description', '')}) has no serial port of its own: add it to "
                         "the board it is wired to as 'probe:'")
    if n == 0:
        lines[head] = "boards: []     # no USB serial port found: plug a board in and scan again"
    return "\n".join(lines) + "\n"
