"""Platforms are data: one YAML file per board under ``platforms/``.

Loading validates every file; a broken one is an error that names the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

PLATFORM_DIR = Path(__file__).resolve().parent.parent / "platforms"


class PlatformError(ValueError):
    """A platform file is broken, or a platform id is unknown."""


@dataclass(frozen=True)
class Region:
    origin: int
    size: int

    @property
    def end(self) -> int:
        return self.origin + self.size


@dataclass(frozen=True)
class Emulator:
    kind: str                      # "qemu" (Renode comes later)
    binary: str                    # e.g. qemu-system-arm
    package: str                   # the Debian package that provides it
    machine: str
    serial: tuple[str, ...]        # -serial order: "uart" is the console, "null" a silent UART
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Platform:
    id: str
    name: str
    core: str
    isa: str
    arch: str                      # "arm" | "riscv": selects toolchain, start-up and disassembler
    fpu: str                       # "none" | "sp" | "dp"
    dsp: bool
    clock_hz: int
    cycle_counter: str             # "dwt" | "mcycle" | "systick" | "none"
    board: str                     # board-support family: firmware/boards/<board>.c
    cflags: tuple[str, ...]
    defines: dict[str, int | str] = field(hash=False)
    flash: Region = Region(0, 0)
    model: Region = Region(0, 0)
    ram: Region = Region(0, 0)
    stack_size: int = 0x4000
    emulator: Emulator | None = None
    source: Path | None = None

    @property
    def toolchain(self) -> str:
        return {"arm": "arm-none-eabi-", "riscv": "riscv64-unknown-elf-"}[self.arch]

    @property
    def toolchain_package(self) -> str:
        return {"arm": "gcc-arm-none-eabi", "riscv": "gcc-riscv64-unknown-elf"}[self.arch]


_ARCHES = ("arm", "riscv")
_CYCLE_COUNTERS = ("dwt", "mcycle", "systick", "none")


def _need(data: dict, key: str, kind: type | tuple[type, ...], where: str):
    if key not in data:
        raise PlatformError(f"{where}: missing field '{key}'")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise PlatformError(f"{where}: field '{key}' must be {names}, got {value!r}")
    return value


def _region(data: dict, key: str, where: str) -> Region:
    r = _need(data, key, dict, where)
    origin = _need(r, "origin", int, f"{where}: memory.{key}")
    size = _need(r, "size", int, f"{where}: memory.{key}")
    if size <= 0 or origin < 0:
        raise PlatformError(f"{where}: memory.{key} must have origin >= 0 and size > 0")
    return Region(origin, size)


def parse_platform(data: object, source: Path) -> Platform:
    where = str(source)
    if not isinstance(data, dict):
        raise PlatformError(f"{where}: expected a mapping of fields at the top level")
    pid = _need(data, "id", str, where)
    if pid != source.stem:
        raise PlatformError(f"{where}: field 'id' is {pid!r} but the file name says {source.stem!r}")
    arch = _need(data, "arch", str, where)
    if arch not in _ARCHES:
        raise PlatformError(f"{where}: field 'arch' must be one of {', '.join(_ARCHES)}, got {arch!r}")
    counter = _need(data, "cycle_counter", str, where)
    if counter not in _CYCLE_COUNTERS:
        raise PlatformError(f"{where}: field 'cycle_counter' must be one of {', '.join(_CYCLE_COUNTERS)}")
    clock = _need(data, "clock_hz", int, where)
    if clock <= 0:
        raise PlatformError(f"{where}: field 'clock_hz' must be positive")
    mem = _need(data, "memory", dict, where)
    flash, model, ram = (_region(mem, k, where) for k in ("flash", "model", "ram"))
    emulator = None
    if "emulator" in data:
        e = _need(data, "emulator", dict, where)
        ew = f"{where}: emulator"
        emulator = Emulator(
            kind=_need(e, "kind", str, ew),
            binary=_need(e, "binary", str, ew),
            package=_need(e, "package", str, ew),
            machine=_need(e, "machine", str, ew),
            serial=tuple(_need(e, "serial", list, ew)),
            extra_args=tuple(str(a) for a in e.get("extra_args", [])),
        )
        if "uart" not in emulator.serial:
            raise PlatformError(f"{ew}.serial must name the console as 'uart'")
    defines = data.get("defines", {}) or {}
    if not isinstance(defines, dict):
        raise PlatformError(f"{where}: field 'defines' must be a mapping")
    return Platform(
        id=pid,
        name=_need(data, "name", str, where),
        core=_need(data, "core", str, where),
        isa=_need(data, "isa", str, where),
        arch=arch,
        fpu=_need(data, "fpu", str, where),
        dsp=_need(data, "dsp", bool, where),
        clock_hz=clock,
        cycle_counter=counter,
        board=_need(data, "board", str, where),
        cflags=tuple(_need(data, "cflags", list, where)),
        defines=defines,
        flash=flash,
        model=model,
        ram=ram,
        stack_size=int(data.get("stack_size", 0x4000)),
        emulator=emulator,
        source=source,
    )


def load_platform_file(path: Path) -> Platform:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PlatformError(f"{path}: not valid YAML: {exc}") from None
    return parse_platform(data, path)


@cache
def all_platforms(directory: Path = PLATFORM_DIR) -> dict[str, Platform]:
    return {p.stem: load_platform_file(p) for p in sorted(directory.glob("*.yaml"))}


def get_platform(pid: str) -> Platform:
    platforms = all_platforms()
    if pid not in platforms:
        raise PlatformError(f"unknown platform {pid!r}; valid platforms: {', '.join(platforms)}")
    return platforms[pid]
