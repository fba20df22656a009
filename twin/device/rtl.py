"""The RTL backend: a cycle-exact Verilator simulation of a real RISC-V core as a bench board.

Our SoC (rtl/soc/twin_soc.sv) puts a core from a PyPI package (pythondata-cpu-ibex,
pythondata-cpu-cv32e40p; rtl/cores/<core>.sv wraps it) on two memory ports with the wait states of
the board's platform file; the C++ harness (rtl/harness/main.cc) implements QEMU's riscv32 ``virt``
memory map behind them and exposes the console UART as a TCP socket. So the very ELF the QEMU twin
runs, runs here, and the host opens it with pyserial (``socket://127.0.0.1:PORT``) exactly as it
opens a board on ``/dev/ttyACM0``. Its ``mcycle`` is a cycle counter nobody on this project wrote.

The harness is built once per core configuration and cached by content hash, like the firmware.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from twin.device.backend import EmulatorError, ProcessBackend
from twin.device.build import ROOT, cache_dir
from twin.platforms import Platform

RTL = ROOT / "rtl"
SOC = RTL / "soc" / "twin_soc.sv"
HARNESS = RTL / "harness" / "main.cc"
ROM_BASE = 0x1000          # the harness's reset ROM: a jump to the DRAM base (at +0 and +0x80; --cpuctrl)
DRAM_SIZE = 16 << 20       # 0x8000_0000 .. 0x80ff_ffff: the code, model and RAM windows of the firmware
RTL_SLOWDOWN = 20          # a run's time-outs on an RTL board: the QEMU ones × this (2-5 M cycles/s vs ~1 G instr/s)


class RtlError(EmulatorError):
    """The RTL board could not be built, started, or had to be killed."""


@dataclass(frozen=True)
class CoreRecipe:
    """How to build one core: the PyPI package with its RTL, and the files Verilator needs from it.
    Paths are relative to the package's ``data_location``; ``files`` are given in order (packages
    first), other modules are found in ``search`` by file name."""
    name: str
    package: str              # PyPI name
    module: str               # its import name
    files: tuple[str, ...]
    search: tuple[str, ...]
    include: tuple[str, ...]
    flags: tuple[str, ...] = ()
    options: dict[str, dict[str, str]] | None = None    # rtl.config key -> value -> Verilator define

    def defines(self, config: dict[str, object]) -> list[str]:
        out = []
        for key, value in sorted(config.items()):
            choices = (self.options or {}).get(key)
            if choices is None:
                raise RtlError(f"core {self.name}: unknown rtl.config option {key!r}; options: "
                               f"{', '.join(sorted(self.options or {})) or 'none'}")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if text not in choices:
                raise RtlError(f"core {self.name}: rtl.config {key} must be one of {', '.join(choices)}, "
                               f"got {value!r}")
            out.append(choices[text])
        return out


_IBEX_PRIM = "vendor/lowrisc_ip/ip/prim/rtl"
_IBEX_DV_PRIM = "dv/uvm/core_ibex/common/prim"
CORES: dict[str, CoreRecipe] = {
    "ibex": CoreRecipe(
        name="ibex", package="pythondata-cpu-ibex", module="pythondata_cpu_ibex",
        files=(f"{_IBEX_DV_PRIM}/prim_pkg.sv", *(f"{_IBEX_PRIM}/{p}.sv" for p in (
            "prim_ram_1p_pkg", "prim_secded_pkg", "prim_mubi_pkg", "prim_util_pkg", "prim_count_pkg",
            "prim_cipher_pkg")), "rtl/ibex_pkg.sv"),
        search=("rtl", _IBEX_PRIM, "vendor/lowrisc_ip/ip/prim_generic/rtl", _IBEX_DV_PRIM),
        include=(_IBEX_PRIM, "vendor/lowrisc_ip/dv/sv/dv_utils"),
        options={
            "multiplier": {"fast": "+define+IBEX_RV32M=ibex_pkg::RV32MFast",
                           "single-cycle": "+define+IBEX_RV32M=ibex_pkg::RV32MSingleCycle",
                           "slow": "+define+IBEX_RV32M=ibex_pkg::RV32MSlow"},
            "branch_target_alu": {"true": "+define+IBEX_BRANCH_TARGET_ALU=1'b1",
                                  "false": "+define+IBEX_BRANCH_TARGET_ALU=1'b0"},
            "writeback_stage": {"true": "+define+IBEX_WRITEBACK_STAGE=1'b1",
                                "false": "+define+IBEX_WRITEBACK_STAGE=1'b0"},
            # ibex_icache.sv (its 4 kB, 2 ways, 64-bit lines); on only once software sets cpuctrlsts bit 0,
            # which the reset ROM does on such a board (RtlProcess.command: --cpuctrl)
            "icache": {"true": "+define+IBEX_ICACHE=1'b1", "false": "+define+IBEX_ICACHE=1'b0"},
        }),
    "cv32e40p": CoreRecipe(
        name="cv32e40p", package="pythondata-cpu-cv32e40p", module="pythondata_cpu_cv32e40p",
        files=("rtl/include/cv32e40p_apu_core_pkg.sv", "rtl/include/cv32e40p_fpu_pkg.sv",
               "rtl/include/cv32e40p_pkg.sv", "rtl/vendor/pulp_platform_common_cells/src/cf_math_pkg.sv",
               "rtl/vendor/pulp_platform_fpnew/src/fpnew_pkg.sv", "rtl/cv32e40p_register_file_ff.sv",
               "bhv/cv32e40p_sim_clock_gate.sv"),
        search=("rtl", "bhv", "rtl/vendor/pulp_platform_fpnew/src", "rtl/vendor/pulp_platform_common_cells/src",
                *(f"rtl/vendor/pulp_platform_fpnew/vendor/opene906/E906_RTL_FACTORY/gen_rtl/{d}/rtl"
                  for d in ("clk", "fdsu", "fpu"))),
        include=("rtl/include", "bhv", "bhv/include", "rtl/vendor/pulp_platform_common_cells/include"),
        flags=("-Wno-BLKANDNBLK",),
        options={"fpu": {"true": "+define+CV32E40P_FPU_ON=1", "false": "+define+CV32E40P_FPU_ON=0"}}),
}


def _package(recipe: CoreRecipe):
    try:
        return importlib.import_module(recipe.module)
    except ImportError:
        raise RtlError(f"the RTL of core {recipe.name} is missing: install the PyPI package {recipe.package} "
                       f"(scripts/setup does it: .venv/bin/pip install '.[rtl]')") from None


def verilator() -> str:
    path = shutil.which("verilator")
    if path is None:
        raise RtlError("verilator not found: install the Debian package verilator (scripts/setup does it)")
    return path


@dataclass(frozen=True)
class Harness:
    core: str
    exe: Path
    key: str


def _harness_key(recipe: CoreRecipe, defines: list[str], version: str, pkg) -> str:
    h = hashlib.sha256()
    h.update(repr((recipe, defines, version, getattr(pkg, "version_str", ""),
                   getattr(pkg, "data_git_hash", ""))).encode())
    for path in sorted(RTL.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(RTL)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def build_harness(recipe: CoreRecipe, config: dict[str, object] | None = None) -> Harness:
    """Verilate and compile the SoC around ``recipe``'s core (a minute or two, once): cached by
    the content hash of our RTL and harness, the core package's version, the options and Verilator."""
    tool = verilator()
    pkg = _package(recipe)
    defines = recipe.defines(config or {})
    version = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()
    key = _harness_key(recipe, defines, version, pkg)[:12]
    out_dir = cache_dir() / "rtl" / f"{recipe.name}-{key}"
    exe = out_dir / "twin-rtl"
    harness = Harness(recipe.name, exe, key)
    if exe.exists():
        return harness
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f"{recipe.name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # parallel runs build a harness once
        if exe.exists():
            return harness
        base = Path(pkg.data_location)
        with tempfile.TemporaryDirectory(prefix="twin-rtl-build-", dir=out_dir.parent) as tmp:
            cmd = [tool, "--cc", "--exe", "--build", "-j", str(min(4, os.cpu_count() or 1)),
                   "-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert",
                   "-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-COMBDLY", "-Wno-UNOPTFLAT", *recipe.flags,
                   "--top-module", "twin_soc", "-Mdir", str(Path(tmp) / "obj"), "-o", "twin-rtl",
                   "-CFLAGS", "-O2", *defines,
                   *(f"-I{base / d}" for d in recipe.include), *(x for d in recipe.search for x in ("-y", str(base / d))),
                   *(str(base / f) for f in recipe.files), str(RTL / "cores" / f"{recipe.name}.sv"), str(SOC),
                   str(HARNESS)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            built = Path(tmp) / "obj" / "twin-rtl"
            if proc.returncode != 0 or not built.exists():
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
                raise RtlError(f"building the RTL board for core {recipe.name} failed (verilator):\n{tail}")
            staging = Path(tmp) / "out"
            staging.mkdir()
            shutil.copy2(built, staging / "twin-rtl")
            os.replace(staging, out_dir)
    return harness


def harness_for(platform: Platform) -> Harness:
    rtl = _rtl(platform)
    return build_harness(CORES[rtl.core], rtl.config)


IBEX_CPUCTRL_ICACHE_ENABLE = 1    # Ibex's cpuctrlsts (CSR 0x7C0) bit 0: icache_enable (ibex_cs_registers.sv)


def icache_enabled(rtl) -> bool:
    """Whether the board's core has Ibex's instruction cache (rtl.config icache: true), which the
    harness's reset ROM then switches on: its cpuctrlsts CSR does not exist in QEMU's virt machine,
    so the firmware, the twin's very ELF, does not write it."""
    return rtl.core == "ibex" and str((rtl.config or {}).get("icache", False)).lower() == "true"


def _rtl(platform: Platform):
    if platform.rtl is None:
        raise RtlError(f"platform {platform.id} is not an RTL board (no rtl: section); RTL boards: "
                       "`twin platforms` lists the rtl-* ones")
    return platform.rtl


_STATS = re.compile(r"twin-rtl: cycles=(\d+) seconds=([\d.]+) cycles_per_second=(\d+) exit=(-?\d+)")


class RtlProcess(ProcessBackend):
    """One running RTL simulation of ``platform`` with ``elf`` (and the model ``image`` at the model
    address): a sibling of the QEMU backend (twin/device/backend.py has the lifecycle)."""

    name = "the RTL simulation"

    def __init__(self, platform: Platform, elf: Path, image: Path | None = None, *, timeout: float = 600.0):
        super().__init__(platform, timeout)
        self.elf = elf
        self.image = image

    def command(self, listen_fd: int) -> list[str]:
        # the harness inherits the listening socket and accepts before its first clock
        p, rtl = self.platform, _rtl(self.platform)
        cmd = [str(harness_for(p).exe), "--elf", str(self.elf), "--listen-fd", str(listen_fd),
               "--flash-wait", str(rtl.flash_wait_states), "--ram-wait", str(rtl.ram_wait_states),
               "--ram-base", f"{p.ram.origin:#x}", "--boot", f"{ROM_BASE:#x}", "--dram-size", str(DRAM_SIZE)]
        if self.image is not None:
            cmd += ["--load", f"{p.model.origin:#x}={self.image}"]
        if icache_enabled(rtl):
            cmd += ["--cpuctrl", str(IBEX_CPUCTRL_ICACHE_ENABLE)]   # in the reset ROM, before the firmware
        return cmd

    def routine(self, line: str) -> bool:
        return bool(_STATS.search(line))                 # its closing figures

    def stats(self) -> dict | None:
        """The harness's closing figures (simulated cycles, seconds, cycles per second), once it exited."""
        m = _STATS.search(self.stderr_text())
        if not m:
            return None
        return {"cycles": int(m[1]), "seconds": float(m[2]), "cycles_per_second": int(m[3]), "exit": int(m[4])}

