"""The platform catalog: every board file loads, its figures carry sources, broken files name the field,
and catalog-only boards (no emulator, no firmware build) stay out of the build and the demo."""

import shutil

import pytest
import yaml
from click.testing import CliRunner

from twin.cli.main import _emulated, main
from twin.device.build import BuildError, build_firmware
from twin.platforms import PLATFORM_DIR, PlatformError, all_platforms, get_platform, load_platform_file

CATALOG = {  # id: (twin mode, proxy, confidence)
    "nucleo-f746zg": ("proxy", "mps2-an500", "medium"),
    "nucleo-h743zi": ("proxy", "mps2-an500", "medium"),
    "nucleo-l4r5zi": ("proxy", "mps2-an386", "medium"),
    "b-u585i-iot02a": ("proxy", "mps2-an505", "medium"),
    "nrf52840-dk": ("proxy", "mps2-an386", "medium"),
    "rpi-pico": ("isa-proxy", "rpi-pico", "medium"),            # its own ARMv6-M build on the M4 machine
    "rpi-pico2": ("proxy", "mps2-an505", "medium"),
    "esp32-c3-devkit": ("isa-proxy", "esp32-c3-devkit", "medium"),   # its own RV32IMC build on virt
    "esp32-s3-devkit": ("none", "mps2-an386", "low"),
    "hifive1-revb": ("proxy", "riscv32-virt", "medium"),
    "gd32vf103": ("proxy", "riscv32-virt", "medium"),
    "stm32f4-disco": ("exact", "stm32f4-disco", "high"),
    "alif-ensemble-e3": ("proxy", "mps3-an547", "medium"),      # Cortex-M55 + Helium: the M55 machine
}


def test_catalog_boards_load_with_their_twin_mapping():
    platforms = all_platforms()
    for pid, (mode, proxy, confidence) in CATALOG.items():
        p = platforms[pid]
        assert (p.twin_mode.mode, p.counts_platform, p.twin_mode.confidence) == (mode, proxy, confidence), pid
        assert platforms[p.counts_platform].emulator is not None
        assert p.clocks is not None and p.clocks.default_hz <= p.clocks.max_hz
        assert p.memories is not None and p.memories.sram_bytes > 0 and p.code_bytes_available > 0
        assert p.flash_timing is not None and p.power is not None


def test_every_figure_section_names_its_source():
    for p in all_platforms().values():
        for section in (p.clocks, p.memories, p.flash_timing, p.power):
            if section is not None:
                assert section.source.strip(), p.id
        for a in p.accelerators:
            assert a.note.strip(), (p.id, a.name)


def test_an_accelerator_may_give_its_geometry():
    (ic,) = get_platform("rtl-ibex-icache").accelerators
    assert (ic.kind, ic.size_bytes, ic.line_bytes, ic.ways, ic.prefetch, ic.covers, ic.bus_bytes) == \
        ("icache", 4096, 8, 2, True, "flash", 4)
    nrf = get_platform("nrf52840-dk").accelerators[0]                                      # its I-cache
    assert (nrf.line_bytes, nrf.ways, nrf.prefetch, nrf.covers) == (None, None, None, None)  # not stated


def test_wait_states_follow_the_table():
    ft = get_platform("stm32f4-disco").flash_timing
    assert [ft.wait_states(f) for f in (24e6, 30e6, 31e6, 120e6, 168e6)] == [0, 0, 1, 3, 5]
    assert ft.wait_states(200e6) is None                 # above fmax: out of range
    assert get_platform("nucleo-f746zg").flash_timing.wait_states(216e6) == 7
    assert get_platform("rpi-pico").flash_timing.wait_states(133e6) is None   # XIP: no table


def test_catalog_only_boards_stay_out_of_build_and_demo():
    emulated = _emulated()
    assert set(emulated) == {"mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547", "riscv32-virt", "stm32f4-disco"}
    with pytest.raises(BuildError, match="no firmware build yet .* twin predict --platform nucleo-h743zi"):
        build_firmware(get_platform("nucleo-h743zi"))


def test_platforms_command_lists_the_catalog():
    r = CliRunner().invoke(main, ["platforms"])
    assert r.exit_code == 0, r.output
    for pid in CATALOG:
        assert pid in r.output
    assert "none via mps2-an386 (low)" in r.output


def _mutated(tmp_path, pid, mutate):
    data = yaml.safe_load((PLATFORM_DIR / f"{pid}.yaml").read_text())
    mutate(data)
    path = tmp_path / f"{pid}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _set(path: str, value):
    def mutate(data):
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if value is _DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return mutate


_DELETE = object()


@pytest.mark.parametrize("pid,path,value,message", [
    ("nucleo-f746zg", "twin.mode", "fast", r"twin: field 'mode' must be one of exact, isa-proxy, proxy, none"),
    ("nucleo-f746zg", "twin.proxy", _DELETE, r"twin: field 'proxy' is required for mode 'proxy'"),
    ("nucleo-f746zg", "twin.confidence", "certain", r"twin: field 'confidence' must be one of"),
    ("nucleo-f746zg", "power.run_ua_per_mhz", _DELETE, r"power: missing field 'run_ua_per_mhz'"),
    ("nucleo-f746zg", "power.voltage_v", -3, r"power: field 'voltage_v' must be positive"),
    ("nucleo-f746zg", "power.source", "  ", r"power: field 'source' must say where"),
    ("nucleo-f746zg", "clocks.default_hz", 300000000, r"clocks: field 'default_hz' \(300000000\) exceeds"),
    ("nucleo-f746zg", "memories.sram_bytes", "big", r"memories: field 'sram_bytes' must be int"),
    ("nucleo-f746zg", "flash_wait_states.table.1.max_hz", 10, r"flash_wait_states.table\[1\]: rows must ascend"),
    ("nucleo-f746zg", "flash_wait_states.kind", "magic", r"flash_wait_states: field 'kind' must be one of"),
    ("nucleo-f746zg", "accelerators.0.kind", "turbo", r"accelerators\[0\]: field 'kind' must be one of"),
    ("rtl-ibex-icache", "accelerators.0.ways", 0, r"accelerators\[0\]: field 'ways' must be positive"),
    ("rtl-ibex-icache", "accelerators.0.line_bytes", "8", r"accelerators\[0\]: field 'line_bytes' must be int"),
    ("rtl-ibex-icache", "accelerators.0.prefetch", "yes", r"accelerators\[0\]: field 'prefetch' must be bool"),
    ("rtl-ibex-icache", "accelerators.0.line_bytes", 12, r"accelerators\[0\]: line_bytes 12 is not a power of two"),
    ("rtl-ibex-icache", "accelerators.0.bus_bytes", 3, r"accelerators\[0\]: bus_bytes 3 must divide line_bytes \(8\)"),
    ("rtl-ibex-icache", "accelerators.0.size_bytes", 4000, r"size_bytes 4000 is not a power-of-two number of sets"),
    ("rtl-ibex-icache", "accelerators.0.ways", 3, r"size_bytes 4096 is not a power-of-two number of sets of 3 ways"),
    ("rtl-ibex-icache", "accelerators.0.covers", "rom",
     r"accelerators\[0\]: field 'covers' must name a window of memory: \(flash, model, ram\), got 'rom'"),
    ("nucleo-f746zg", "vector", "avx", r"field 'vector' must be one of"),
    ("nucleo-f746zg", "cflags", ["-O2"], r"field 'cflags' given without 'board'"),
    ("esp32-s3-devkit", "board", "esp32s3", r"field 'arch' must be one of arm, riscv"),
    ("rpi-pico", "flash_wait_states.table", [{"max_hz": 1, "wait_states": 0}], r"must be empty for kind 'xip'"),
    ("stm32f4-disco", "twin.mode", "proxy", r"twin: field 'proxy' is required"),
])
def test_broken_catalog_file_names_file_and_field(tmp_path, pid, path, value, message):
    file = _mutated(tmp_path, pid, _set(path, value))
    with pytest.raises(PlatformError, match=message) as info:
        load_platform_file(file)
    assert str(file) in str(info.value)


def test_proxy_must_be_an_emulated_platform(tmp_path):
    for f in PLATFORM_DIR.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    _mutated(tmp_path, "rpi-pico2", _set("twin.proxy", "nucleo-h743zi"))
    with pytest.raises(PlatformError, match=r"rpi-pico2.yaml: twin.proxy 'nucleo-h743zi' is not an emulated"):
        all_platforms.__wrapped__(tmp_path)
