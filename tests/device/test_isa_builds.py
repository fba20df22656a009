"""Boards counted on their own instruction set (twin mode isa-proxy): the firmware built for the
board's ISA runs on an emulated machine whose ISA is a superset — an ARMv6-M build (RP2040's M0+) on
QEMU's M4 machine, an RV32IMC build (ESP32-C3) on QEMU's virt — bit-exact with the host reference."""

from __future__ import annotations

import subprocess

import pytest

from twin.device.build import build_firmware
from twin.platforms import PlatformError, all_platforms, get_platform, parse_platform
from twin.runner import RunSpec, run

pytestmark = pytest.mark.qemu

ARMV6M_WIDE = {"bl", "dmb", "dsb", "isb", "mrs", "msr"}      # the only 32-bit Thumb instructions of ARMv6-M


def _instructions(elf, objdump: str) -> list[tuple[str, str]]:
    """(encoding hex, mnemonic) of every instruction objdump decodes in the ELF's code."""
    out = subprocess.run([objdump, "-d", str(elf)], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0].strip().endswith(":"):
            rows.append((parts[1].replace(" ", ""), parts[2].split()[0]))
    return rows


def test_the_m0plus_build_holds_no_thumb2_only_instruction_and_runs_bit_exact() -> None:
    p = get_platform("rpi-pico")
    assert p.isa_build and p.emulator.machine == "mps2-an386" and p.kernels == "scalar"
    wide = {m for enc, m in _instructions(build_firmware(p).elf, "arm-none-eabi-objdump")
            if len(enc) == 8 and not m.startswith(".")}
    assert wide and wide <= ARMV6M_WIDE, wide - ARMV6M_WIDE
    r = run(RunSpec(platform="rpi-pico", tokens=3))
    assert r["matches_reference"]
    fns = {f["name"] for f in r["functions"]}
    assert {"__aeabi_fmul", "__udivsi3"} <= fns   # no FPU: firmware/softfloat; no hardware divide: libgcc


def test_the_rv32imc_build_holds_no_atomic_and_runs_bit_exact() -> None:
    p = get_platform("esp32-c3-devkit")
    assert p.isa_build and p.emulator.machine == "virt"
    code = _instructions(build_firmware(p).elf, "riscv64-unknown-elf-objdump")
    assert not {m for _, m in code if m.startswith(("amo", "lr.", "sc.", "f"))}
    assert any(len(enc) == 4 for enc, _ in code)                         # compressed: the C3's RV32IMC
    assert run(RunSpec(platform="esp32-c3-devkit", tokens=3))["matches_reference"]


def test_the_chip_memories_stay_the_boards() -> None:
    pico = get_platform("rpi-pico")
    assert pico.ram_bytes_available == pico.memories.ram_bytes_available == 264 * 1024
    assert pico.code_bytes_available == pico.memories.code_bytes_available


def test_isa_proxy_files_are_checked(tmp_path) -> None:
    src = all_platforms()["rpi-pico"].source
    import yaml

    data = yaml.safe_load(src.read_text())
    del data["twin"]["cflags"]
    with pytest.raises(PlatformError, match="'cflags' is required for mode 'isa-proxy'"):
        parse_platform(data, src)
    data = yaml.safe_load(src.read_text())
    data["twin"]["mode"] = "proxy"
    with pytest.raises(PlatformError, match="'cflags' applies to mode 'isa-proxy' only"):
        parse_platform(data, src)
