"""Platforms are data: one YAML file per board under ``platforms/``.

Loading validates every file; a broken one is an error that names the file and the field.

A file describes the board (core, clocks, memories, flash wait states against the clock, caches and
accelerators, FPU/DSP/vector extensions, cycle counter, power figures, each figure with its
``source``), how the twin runs its code (``twin: {mode: exact|proxy|none, proxy, confidence}``) and,
for boards we build firmware for, the board-support family, compiler flags, the kernel set
(``kernels:``, default ``ref``: firmware/kernels/README.md) and the linker memory map.  A board
without ``board:`` has no firmware build yet: it is predicted through its proxy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent      # the repository: firmware/, platforms/, models/, rtl/
PLATFORM_DIR = ROOT / "platforms"
KERNELS_DIR = ROOT / "firmware" / "kernels"


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
class RtlBoard:
    """A bench board that is a cycle-exact RTL simulation (twin/device/rtl.py): our SoC around ``core``
    (rtl/cores/<core>.sv, the RTL from a PyPI package) with ``config`` options for it, and memory
    wait states: accesses to the code and model windows cost ``flash_wait_states`` extra cycles, to
    the RAM window ``ram_wait_states``."""
    core: str
    config: dict = field(default_factory=dict, hash=False)
    flash_wait_states: int = 0
    ram_wait_states: int = 0
    note: str = ""


FLASH_RUNNERS = ("pyocd", "openocd", "probe-rs")   # twin/device/board.py builds their command lines


@dataclass(frozen=True)
class FlashSpec:
    """How a real board is flashed (``flash:``): ``runners`` in order of preference (the first one the
    machine has is used; pyOCD is the Python default), ``target`` the part name they take (pyOCD
    target, probe-rs chip), and per-runner overrides (``targets: {openocd: board/stm32f4discovery.cfg}``)."""
    runners: tuple[str, ...]
    target: str
    targets: dict[str, str] = field(default_factory=dict, hash=False)

    def target_for(self, runner: str) -> str:
        return self.targets.get(runner, self.target)


@dataclass(frozen=True)
class Clocks:
    max_hz: int
    default_hz: int
    source: str = ""


@dataclass(frozen=True)
class Memories:
    """What the chip and board offer (the linker map in ``memory:`` is what the firmware uses)."""
    sram_bytes: int
    flash_bytes: int                 # internal flash (0 when code runs from external flash)
    external_flash_bytes: int = 0    # QSPI/XIP flash on the board or in the package
    external_ram_bytes: int = 0      # PSRAM/SDRAM on the board
    source: str = ""

    @property
    def code_bytes_available(self) -> int:
        """Where code and model weights can live: internal plus external flash."""
        return self.flash_bytes + self.external_flash_bytes

    @property
    def ram_bytes_available(self) -> int:
        return self.sram_bytes + self.external_ram_bytes


@dataclass(frozen=True)
class FlashTiming:
    """Flash wait states against the core clock: ``table`` rows (max_hz, wait_states), ascending.

    ``kind`` is "internal" (embedded flash with wait states), "xip" (external flash behind a cache:
    the wait-state table does not apply, a miss costs a QSPI transfer) or "ram" (code in zero-wait
    RAM, e.g. QEMU).  An empty table means the figures were not found (see ``source``).
    """
    kind: str
    table: tuple[tuple[int, int], ...] = ()
    source: str = ""

    def wait_states(self, clock_hz: int) -> int | None:
        """Wait states at ``clock_hz``; None when the table is empty or does not apply.

        Above the last row the clock is out of range (None); below the first known row the
        first row's figure is used (an upper bound when lower rows were not found)."""
        if self.kind != "internal" or not self.table:
            return None
        for max_hz, ws in self.table:
            if clock_hz <= max_hz:
                return ws
        return None


@dataclass(frozen=True)
class Accelerator:
    name: str
    kind: str                        # "icache" | "dcache" | "cache" | "art" | "xip-cache" | "prefetch" | "tcm"
    size_bytes: int | None = None
    note: str = ""
    line_bytes: int | None = None    # optional geometry: bytes per line, associativity
    ways: int | None = None
    prefetch: bool | None = None     # fetches ahead of the core (None: not stated)
    covers: str | None = None        # the memory: window it serves (flash, model, ram); None: not stated
    bus_bytes: int | None = None     # bytes one memory access of a line fill reads (None: the whole line)


@dataclass(frozen=True)
class Power:
    """Run-mode power figures; None = not found (the ``source`` says so).

    ``basis`` says what the run current covers: ``vdd`` (the MCU's VDD supply only, e.g. an STM32
    datasheet IDD), ``chip`` (the whole chip, every rail), ``core`` (the core-logic rail only, e.g.
    RP2040 DVDD) or ``board`` (the whole board from its supply); None = not stated.
    ``second_hand``: the figure was quoted by a third party, not read in the vendor's document.
    ``use_case``: a current the vendor measured in an application (a demo), not a CPU benchmark.
    The energy prior widens its interval for all but ``vdd`` first-hand figures
    (calibration.energy.figure_uncertainty)."""
    run_ua_per_mhz: float | None
    voltage_v: float | None
    static_ma: float | None
    source: str = ""
    basis: str | None = None
    second_hand: bool = False
    use_case: bool = False


@dataclass(frozen=True)
class TwinMapping:
    """How the twin runs this board's code: ``exact`` (QEMU models the board, the very ELF runs),
    ``isa-proxy`` (the firmware built for the board's own instruction set, ``cflags``, runs on the
    emulated ``proxy`` machine, whose ISA is a superset: an ARMv6-M build on an M4 machine),
    ``proxy`` (counts from the same core on another emulated platform) or ``none`` (no emulator
    of this core: counts from ``proxy`` are mapped across cores, with low confidence)."""
    mode: str
    proxy: str | None
    confidence: str
    note: str = ""
    cflags: tuple[str, ...] = ()      # isa-proxy: the compiler flags of the board's own ISA


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
    cycle_counter: str             # "dwt" | "mcycle" | "systick" | "ccount" | "mpccr" | "none"
    board: str | None = None       # board-support family: firmware/boards/<board>.c; None = no build yet
    cflags: tuple[str, ...] = ()
    defines: dict[str, int | str] = field(default_factory=dict, hash=False)
    flash: Region = Region(0, 0)
    model: Region = Region(0, 0)
    ram: Region = Region(0, 0)
    stack_size: int = 0x4000
    emulator: Emulator | None = None
    source: Path | None = None
    vector: str = "none"           # "none" | "mve" | "pie" (ESP32-S3 128-bit SIMD)
    clocks: Clocks | None = None
    memories: Memories | None = None
    flash_timing: FlashTiming | None = None
    accelerators: tuple[Accelerator, ...] = ()
    power: Power | None = None
    twin: TwinMapping | None = None
    kernels: str = "ref"           # kernel set of the build: firmware/kernels/<kernels>/ over ref
    rtl: RtlBoard | None = None    # the board is an RTL simulation (`twin bench --port rtl`)
    flash_with: FlashSpec | None = None   # `flash:`: how a real board is flashed (twin/device/board.py)

    @property
    def has_firmware(self) -> bool:
        """True when the platform has a board-support family and a linker map: firmware builds."""
        return self.board is not None

    @property
    def max_clock_hz(self) -> int:
        return self.clocks.max_hz if self.clocks else self.clock_hz

    @property
    def default_clock_hz(self) -> int:
        return self.clocks.default_hz if self.clocks else self.clock_hz

    @property
    def code_bytes_available(self) -> int:
        """Bytes for firmware + model: the firmware's code + model windows where it has a build (what
        the linker lets it use), else the chip's flash."""
        if (self.has_firmware and not self.isa_build) or not self.memories:
            return self.flash.size + self.model.size
        return self.memories.code_bytes_available

    @property
    def ram_bytes_available(self) -> int:
        """RAM for the firmware: its linker window where it has a build (the F407 build leaves the 64 KiB
        CCM unused), else the chip's SRAM + external RAM."""
        if (self.has_firmware and not self.isa_build) or not self.memories:
            return self.ram.size
        return self.memories.ram_bytes_available

    @property
    def isa_build(self) -> bool:
        """True when the firmware is the board's ISA built for its twin's machine (twin mode isa-proxy):
        its memory windows are the machine's, the board's memories are the chip's."""
        return self.twin is not None and self.twin.mode == "isa-proxy"

    @property
    def twin_mode(self) -> TwinMapping:
        """The twin mapping; a file without ``twin:`` that has an emulator runs exactly."""
        if self.twin is not None:
            return self.twin
        return TwinMapping("exact" if self.emulator else "none", self.id if self.emulator else None,
                           "high" if self.emulator else "low")

    @property
    def counts_platform(self) -> str | None:
        """The emulated platform whose counts stand for this board's code."""
        t = self.twin_mode
        return self.id if t.mode in ("exact", "isa-proxy") else t.proxy

    @property
    def toolchain(self) -> str:
        if self.arch not in _TOOLCHAINS:
            raise PlatformError(f"platform {self.id}: no toolchain for arch {self.arch!r}")
        return _TOOLCHAINS[self.arch]

    @property
    def toolchain_package(self) -> str:
        return {"arm": "gcc-arm-none-eabi", "riscv": "gcc-riscv64-unknown-elf"}[self.arch]


_TOOLCHAINS = {"arm": "arm-none-eabi-", "riscv": "riscv64-unknown-elf-"}
_ARCHES = ("arm", "riscv")
_NO_BUILD_ARCHES = ("xtensa",)          # catalog-only: no toolchain here, so no firmware build
_CYCLE_COUNTERS = ("dwt", "mcycle", "systick", "ccount", "mpccr", "none")
_FPUS = ("none", "sp", "dp")
_VECTORS = ("none", "mve", "pie")
_FLASH_KINDS = ("internal", "xip", "ram")
_ACCEL_KINDS = ("icache", "dcache", "cache", "art", "xip-cache", "prefetch", "tcm")
# Kernel sets (firmware/kernels/<set>/) and what a core needs to run one: ref is portable C (the
# truth), scalar portable C with fewer instructions (any core: the set of a core without packed SIMD);
# arm_dsp uses the Armv7E-M / Armv8-M DSP extension (SMLAD, SXTB16, ...); mve the Armv8.1-M Helium
# vector extension (VMLADAVA, VLD2/VLD4, ...: a core with vector: mve, e.g. the Cortex-M55).
KERNEL_SETS = ("ref", "arm_dsp", "mve", "scalar")
PORTABLE_KERNELS = "scalar"    # what a core gets when it cannot run its proxy's set
POWER_BASES = ("vdd", "chip", "core", "board")   # what a run-current figure covers (Power.basis)
TWIN_MODES = ("exact", "isa-proxy", "proxy", "none")
CONFIDENCES = ("high", "medium", "low")


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


def _optional(data: dict, key: str, kind: type | tuple[type, ...], where: str):
    """A field that may be absent or null: None then; else it must have the type."""
    if data.get(key) is None:
        return None
    return _need(data, key, kind, where)


def _number(data: dict, key: str, where: str, *, required: bool = True, positive: bool = True):
    value = _need(data, key, (int, float), where) if required else _optional(data, key, (int, float), where)
    if isinstance(value, bool):
        raise PlatformError(f"{where}: field '{key}' must be a number, got {value!r}")
    if value is not None and (value < 0 or (positive and value == 0)):
        raise PlatformError(f"{where}: field '{key}' must be {'positive' if positive else '>= 0'}, got {value!r}")
    return value


def _source(data: dict, where: str) -> str:
    """Every section with figures says where they come from (or that they were not found)."""
    src = _need(data, "source", str, where)
    if not src.strip():
        raise PlatformError(f"{where}: field 'source' must say where the figures come from (or 'nf')")
    return src


def _choice(data: dict, key: str, choices: tuple[str, ...], where: str, default: str | None = None) -> str:
    if default is not None and key not in data:
        return default
    value = _need(data, key, str, where)
    if value not in choices:
        raise PlatformError(f"{where}: field '{key}' must be one of {', '.join(choices)}, got {value!r}")
    return value


def _clocks(data: dict, where: str, clock_hz: int) -> Clocks | None:
    c = _optional(data, "clocks", dict, where)
    if c is None:
        return None
    cw = f"{where}: clocks"
    max_hz = _need(c, "max_hz", int, cw)
    default_hz = _need(c, "default_hz", int, cw)
    if max_hz <= 0 or default_hz <= 0:
        raise PlatformError(f"{cw}: fields 'max_hz' and 'default_hz' must be positive")
    if default_hz > max_hz:
        raise PlatformError(f"{cw}: field 'default_hz' ({default_hz}) exceeds 'max_hz' ({max_hz})")
    if clock_hz > max_hz:
        raise PlatformError(f"{where}: field 'clock_hz' ({clock_hz}) exceeds clocks.max_hz ({max_hz})")
    return Clocks(max_hz, default_hz, _source(c, cw))


def _memories(data: dict, where: str) -> Memories | None:
    m = _optional(data, "memories", dict, where)
    if m is None:
        return None
    mw = f"{where}: memories"
    sizes = {}
    for key in ("sram_bytes", "flash_bytes", "external_flash_bytes", "external_ram_bytes"):
        value = _need(m, key, int, mw) if key in ("sram_bytes", "flash_bytes") else m.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise PlatformError(f"{mw}: field '{key}' must be an int >= 0, got {value!r}")
        sizes[key] = value
    if sizes["sram_bytes"] == 0:
        raise PlatformError(f"{mw}: field 'sram_bytes' must be positive")
    if sizes["flash_bytes"] + sizes["external_flash_bytes"] == 0:
        raise PlatformError(f"{mw}: 'flash_bytes' + 'external_flash_bytes' must be positive")
    return Memories(**sizes, source=_source(m, mw))


def _flash_timing(data: dict, where: str) -> FlashTiming | None:
    f = _optional(data, "flash_wait_states", dict, where)
    if f is None:
        return None
    fw = f"{where}: flash_wait_states"
    kind = _choice(f, "kind", _FLASH_KINDS, fw)
    rows = _need(f, "table", list, fw)
    table: list[tuple[int, int]] = []
    for i, row in enumerate(rows):
        rw = f"{fw}.table[{i}]"
        if not isinstance(row, dict):
            raise PlatformError(f"{rw}: expected a mapping {{max_hz: int, wait_states: int}}")
        max_hz, ws = _need(row, "max_hz", int, rw), _need(row, "wait_states", int, rw)
        if max_hz <= 0 or ws < 0:
            raise PlatformError(f"{rw}: need max_hz > 0 and wait_states >= 0")
        if table and (max_hz <= table[-1][0] or ws < table[-1][1]):
            raise PlatformError(f"{rw}: rows must ascend in max_hz and not decrease in wait_states")
        table.append((max_hz, ws))
    if kind != "internal" and table:
        raise PlatformError(f"{fw}: field 'table' must be empty for kind {kind!r} (wait states apply to "
                            "internal flash only)")
    return FlashTiming(kind, tuple(table), _source(f, fw))


def _accelerators(data: dict, where: str) -> tuple[Accelerator, ...]:
    items = _optional(data, "accelerators", list, where) or []
    memory = data.get("memory")
    windows = tuple(memory) if isinstance(memory, dict) else ()
    out = []
    for i, a in enumerate(items):
        aw = f"{where}: accelerators[{i}]"
        if not isinstance(a, dict):
            raise PlatformError(f"{aw}: expected a mapping with name, kind, size_bytes, source")
        sizes = {}
        for key in ("size_bytes", "line_bytes", "ways", "bus_bytes"):
            sizes[key] = _optional(a, key, int, aw)
            if sizes[key] is not None and sizes[key] <= 0:
                raise PlatformError(f"{aw}: field '{key}' must be positive (or null when not found)")
        _check_geometry(sizes, aw)
        covers = _optional(a, "covers", str, aw)
        if covers is not None and covers not in windows:
            raise PlatformError(f"{aw}: field 'covers' must name a window of memory: "
                                f"({', '.join(windows) or 'none given'}), got {covers!r}")
        out.append(Accelerator(_need(a, "name", str, aw), _choice(a, "kind", _ACCEL_KINDS, aw), sizes["size_bytes"],
                               _source(a, aw), line_bytes=sizes["line_bytes"], ways=sizes["ways"],
                               prefetch=_optional(a, "prefetch", bool, aw), covers=covers,
                               bus_bytes=sizes["bus_bytes"]))
    return tuple(out)


def _check_geometry(g: dict, where: str) -> None:
    """A cache the twin simulates (size, line and ways all given) needs power-of-two lines and sets; a
    bus width divides the line."""
    size, line, ways, bus = g["size_bytes"], g["line_bytes"], g["ways"], g["bus_bytes"]
    if line is not None and line & (line - 1):
        raise PlatformError(f"{where}: line_bytes {line} is not a power of two")
    if bus is not None and (line is None or line % bus):
        raise PlatformError(f"{where}: bus_bytes {bus} must divide line_bytes ({line})")
    if size and line and ways:
        sets, rest = divmod(size, line * ways)
        if rest or sets & (sets - 1) or not sets:
            raise PlatformError(f"{where}: size_bytes {size} is not a power-of-two number of sets of {ways} "
                                f"ways × {line}-byte lines")


def _power(data: dict, where: str) -> Power | None:
    p = _optional(data, "power", dict, where)
    if p is None:
        return None
    pw = f"{where}: power"
    for key in ("run_ua_per_mhz", "voltage_v", "static_ma"):
        if key not in p:
            raise PlatformError(f"{pw}: missing field '{key}' (write null when the figure was not found)")
    run = _number(p, "run_ua_per_mhz", pw, required=False)
    basis = None if p.get("basis") is None else _choice(p, "basis", POWER_BASES, pw)
    flags = {}
    for key in ("second_hand", "use_case"):
        value = p.get(key, False)
        if not isinstance(value, bool):
            raise PlatformError(f"{pw}: field '{key}' must be true or false, got {value!r}")
        flags[key] = value
    if run is None and (basis is not None or any(flags.values())):
        given = [k for k in ("basis", *flags) if p.get(k) not in (None, False)]
        raise PlatformError(f"{pw}: field '{given[0]}' describes a run current, but 'run_ua_per_mhz' is null")
    return Power(
        run_ua_per_mhz=run,
        voltage_v=_number(p, "voltage_v", pw, required=False),
        static_ma=_number(p, "static_ma", pw, required=False, positive=False),
        source=_source(p, pw),
        basis=basis,
        **flags,
    )


def _twin(data: dict, where: str, has_emulator: bool, pid: str) -> TwinMapping | None:
    t = _optional(data, "twin", dict, where)
    if t is None:
        return None
    tw = f"{where}: twin"
    mode = _choice(t, "mode", TWIN_MODES, tw)
    proxy = _optional(t, "proxy", str, tw)
    confidence = _choice(t, "confidence", CONFIDENCES, tw)
    if mode == "exact":
        if not has_emulator:
            raise PlatformError(f"{tw}: field 'mode' is 'exact' but the file has no 'emulator' section")
        if proxy not in (None, pid):
            raise PlatformError(f"{tw}: field 'proxy' must be absent for mode 'exact' (the board runs itself)")
        proxy = pid
    elif proxy is None:
        raise PlatformError(f"{tw}: field 'proxy' is required for mode {mode!r}: the emulated platform "
                            "whose counts stand for this board")
    cflags: tuple[str, ...] = ()
    if mode == "isa-proxy":
        flags = t.get("cflags")
        if not isinstance(flags, list) or not flags or not all(isinstance(f, str) and f for f in flags):
            raise PlatformError(f"{tw}: field 'cflags' is required for mode 'isa-proxy': the compiler flags of "
                                "the board's own instruction set, e.g. [-mcpu=cortex-m0plus, -mthumb]")
        if has_emulator or data.get("board") is not None:
            raise PlatformError(f"{tw}: mode 'isa-proxy' takes its machine and board support from the proxy: "
                                "remove 'board' and 'emulator'")
        cflags = tuple(flags)
    elif "cflags" in t:
        raise PlatformError(f"{tw}: field 'cflags' applies to mode 'isa-proxy' only")
    return TwinMapping(mode, proxy, confidence, str(t.get("note", "")), cflags)


def _flash_spec(data: dict, where: str, builds: bool) -> FlashSpec | None:
    f = _optional(data, "flash", dict, where)
    if f is None:
        return None
    fw = f"{where}: flash"
    if not builds:
        raise PlatformError(f"{fw}: a board without 'board:' has no firmware to flash")
    unknown = sorted(set(f) - {"runner", "target", "targets"})
    if unknown:
        raise PlatformError(f"{fw}: unknown field '{unknown[0]}' (fields: runner, target, targets)")
    runner = f.get("runner", "pyocd")
    runners = (runner,) if isinstance(runner, str) else runner
    if (not isinstance(runners, (list, tuple)) or not runners
            or any(not isinstance(r, str) or r not in FLASH_RUNNERS for r in runners)):
        raise PlatformError(f"{fw}: field 'runner' must be one of {', '.join(FLASH_RUNNERS)} or a list of them, "
                            f"got {runner!r}")
    target = _need(f, "target", str, fw)
    if not target.strip():
        raise PlatformError(f"{fw}: field 'target' must name the part (e.g. stm32f407vg)")
    targets = f.get("targets", {}) or {}
    if not isinstance(targets, dict) or any(k not in FLASH_RUNNERS or not isinstance(v, str) or not v.strip()
                                            for k, v in targets.items()):
        raise PlatformError(f"{fw}: field 'targets' must map runners ({', '.join(FLASH_RUNNERS)}) to their "
                            f"target names, got {targets!r}")
    return FlashSpec(tuple(runners), target, dict(targets))


RTL_CORES = ("ibex", "cv32e40p")   # rtl/cores/<core>.sv; their build recipes: twin/device/rtl.py


def _rtl(data: dict, where: str, arch: str, counter: str, has_emulator: bool) -> RtlBoard | None:
    r = _optional(data, "rtl", dict, where)
    if r is None:
        return None
    rw = f"{where}: rtl"
    if arch != "riscv" or counter != "mcycle" or not has_emulator:
        raise PlatformError(f"{rw}: an RTL board needs arch: riscv, cycle_counter: mcycle and an 'emulator' "
                            "section (the QEMU twin that runs the same ELF)")
    core = _choice(r, "core", RTL_CORES, rw)
    config = r.get("config", {}) or {}
    if not isinstance(config, dict):
        raise PlatformError(f"{rw}: field 'config' must be a mapping of core options")
    waits = {}
    for key in ("flash_wait_states", "ram_wait_states"):
        value = r.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise PlatformError(f"{rw}: field '{key}' must be an int in 0..255, got {value!r}")
        waits[key] = value
    return RtlBoard(core, dict(config), **waits, note=str(r.get("note", "")))


def _kernels(data: dict, where: str, arch: str, dsp: bool, board: str | None, vector: str = "none") -> str:
    if "kernels" not in data:
        return "ref"
    if board is None:
        raise PlatformError(f"{where}: field 'kernels' given without 'board': it picks the kernels of a "
                            "firmware build")
    return _check_kernels(_choice(data, "kernels", KERNEL_SETS, where), arch, dsp, f"{where}: field 'kernels'",
                          vector)


def _missing_for(kernels: str, arch: str, dsp: bool, vector: str = "none") -> str | None:
    """What a core lacks to run kernel set ``kernels`` (None: it runs it)."""
    if kernels == "arm_dsp" and not (arch == "arm" and dsp):
        return "the core has no Arm DSP extension (it needs arch: arm and dsp: true)"
    if kernels == "mve" and not (arch == "arm" and vector == "mve"):
        return "the core has no Helium (MVE) vector extension (it needs arch: arm and vector: mve)"
    return None


def runs_kernels(platform: Platform, kernels: str) -> bool:
    """Whether ``platform``'s core can run kernel set ``kernels`` (e.g. a proxy's, for its counts)."""
    return _missing_for(kernels, platform.arch, platform.dsp, platform.vector) is None


def _check_kernels(kernels: str, arch: str, dsp: bool, what: str, vector: str = "none") -> str:
    missing = _missing_for(kernels, arch, dsp, vector)
    if missing is not None:
        raise PlatformError(f"{what} is {kernels!r} but {missing}; use kernels: ref")
    if not (KERNELS_DIR / kernels).is_dir():
        raise PlatformError(f"{what} is {kernels!r} but there is no directory {KERNELS_DIR / kernels}")
    return kernels


def with_kernels(platform: Platform, kernels: str | None) -> Platform:
    """``platform`` built with another kernel set (e.g. ``ref`` to compare with its optimized set);
    a set the core cannot run is a PlatformError."""
    if kernels is None or kernels == platform.kernels:
        return platform
    if kernels not in KERNEL_SETS:
        raise PlatformError(f"unknown kernel set {kernels!r}; valid sets: {', '.join(KERNEL_SETS)}")
    if not platform.has_firmware:
        raise PlatformError(f"platform {platform.id} has no firmware build: a kernel set applies to a build")
    return dataclasses.replace(platform, kernels=_check_kernels(kernels, platform.arch, platform.dsp,
                                                                f"platform {platform.id}: kernel set",
                                                                platform.vector))


def parse_platform(data: object, source: Path) -> Platform:
    where = str(source)
    if not isinstance(data, dict):
        raise PlatformError(f"{where}: expected a mapping of fields at the top level")
    pid = _need(data, "id", str, where)
    if pid != source.stem:
        raise PlatformError(f"{where}: field 'id' is {pid!r} but the file name says {source.stem!r}")
    builds = data.get("board") is not None
    arch = _need(data, "arch", str, where)
    if arch not in _ARCHES and not (arch in _NO_BUILD_ARCHES and not builds and "emulator" not in data):
        extra = (f" (or {', '.join(_NO_BUILD_ARCHES)} for a catalog-only board without 'board' and "
                 "'emulator')")
        raise PlatformError(f"{where}: field 'arch' must be one of {', '.join(_ARCHES)}{extra}, got {arch!r}")
    counter = _need(data, "cycle_counter", str, where)
    if counter not in _CYCLE_COUNTERS:
        raise PlatformError(f"{where}: field 'cycle_counter' must be one of {', '.join(_CYCLE_COUNTERS)}")
    clock = _need(data, "clock_hz", int, where)
    if clock <= 0:
        raise PlatformError(f"{where}: field 'clock_hz' must be positive")
    fpu = _choice(data, "fpu", _FPUS, where)
    flash = model = ram = Region(0, 0)
    if builds or "emulator" in data or "memory" in data:
        mem = _need(data, "memory", dict, where)
        flash, model, ram = (_region(mem, k, where) for k in ("flash", "model", "ram"))
    board = _optional(data, "board", str, where)
    cflags: tuple[str, ...] = ()
    if board is not None:
        cflags = tuple(_need(data, "cflags", list, where))
    elif "cflags" in data:
        raise PlatformError(f"{where}: field 'cflags' given without 'board': a firmware build needs both")
    emulator = None
    if "emulator" in data:
        if board is None:
            raise PlatformError(f"{where}: field 'emulator' needs 'board' (the firmware the emulator runs)")
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
    dsp = _need(data, "dsp", bool, where)
    return Platform(
        id=pid,
        name=_need(data, "name", str, where),
        core=_need(data, "core", str, where),
        isa=_need(data, "isa", str, where),
        arch=arch,
        fpu=fpu,
        dsp=dsp,
        clock_hz=clock,
        cycle_counter=counter,
        board=board,
        cflags=cflags,
        defines=defines,
        flash=flash,
        model=model,
        ram=ram,
        stack_size=int(data.get("stack_size", 0x4000)),
        emulator=emulator,
        source=source,
        vector=_choice(data, "vector", _VECTORS, where, default="none"),
        clocks=_clocks(data, where, clock),
        memories=_memories(data, where),
        flash_timing=_flash_timing(data, where),
        accelerators=_accelerators(data, where),
        power=_power(data, where),
        twin=_twin(data, where, emulator is not None, pid),
        kernels=_kernels(data, where, arch, dsp, board, _choice(data, "vector", _VECTORS, where, default="none")),
        rtl=_rtl(data, where, arch, counter, emulator is not None),
        flash_with=_flash_spec(data, where, builds),
    )


def check_catalog(platforms: dict[str, Platform]) -> None:
    """Cross-file rules: a proxy must be an emulated platform of the catalog (for isa-proxy, one of the
    same architecture that runs exactly)."""
    for p in platforms.values():
        t = p.twin
        if t is None or t.mode == "exact":
            continue
        target = platforms.get(t.proxy or "")
        if target is None or target.emulator is None:
            raise PlatformError(f"{p.source}: twin.proxy {t.proxy!r} is not an emulated platform; "
                                f"emulated: {', '.join(k for k, v in platforms.items() if v.emulator)}")
        if t.mode == "isa-proxy" and (target.arch != p.arch or target.twin_mode.mode != "exact"):
            raise PlatformError(f"{p.source}: twin.proxy {t.proxy!r} must be an emulated {p.arch} machine that "
                                "runs exactly (mode isa-proxy builds this board's ISA for it)")


def with_isa_build(board: Platform, machine: Platform) -> Platform:
    """``board`` (twin mode isa-proxy) with a firmware build: its own ISA flags, the machine's board
    support, memory windows and emulator, the portable kernels (a subset ISA has no DSP set)."""
    return dataclasses.replace(board, board=machine.board, cflags=board.twin.cflags, defines=dict(machine.defines),
                               flash=machine.flash, model=machine.model, ram=machine.ram,
                               stack_size=machine.stack_size, emulator=machine.emulator,
                               kernels=PORTABLE_KERNELS)


def load_platform_file(path: Path) -> Platform:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PlatformError(f"{path}: not valid YAML: {exc}") from None
    return parse_platform(data, path)


@cache
def all_platforms(directory: Path = PLATFORM_DIR) -> dict[str, Platform]:
    platforms = {p.stem: load_platform_file(p) for p in sorted(directory.glob("*.yaml"))}
    check_catalog(platforms)
    for pid, p in platforms.items():
        if p.isa_build:
            platforms[pid] = with_isa_build(p, platforms[p.twin.proxy])
    return platforms


def get_platform(pid: str) -> Platform:
    platforms = all_platforms()
    if pid not in platforms:
        raise PlatformError(f"unknown platform {pid!r}; valid platforms: {', '.join(platforms)}")
    return platforms[pid]
