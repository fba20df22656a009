"""firmware/softfloat/softfloat.c, the binary32 helpers of the soft-float RISC-V and ARMv6-M builds: compiled
for the host (the helpers renamed tw_sf_*), as it is for RV32IM and as for Thumb-1 (the Arm run-time ABI
names, products from 32-bit parts: TW_SF_AEABI, TW_SF_MUL16), and compared bit for bit with the host
CPU's IEEE-754 float arithmetic (tests/fixtures/softfloat_check.c does the comparing); chosen by the build
flags (no F in -march and ilp32; an ARMv6-M -mcpu/-march without -mfloat-abi=hard) and linked in place
of libgcc's on exactly those builds; and the firmware, with them, still gives the host reference's
tokens, in fewer instructions than with libgcc's."""

from __future__ import annotations

import ctypes
import dataclasses
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.device import build
from twin.device.build import (
    arm_soft_float,
    build_firmware,
    firmware_sources,
    riscv_soft_float,
    soft_float_build,
)
from twin.device.protocol import PhaseKind
from twin.model import modelgen
from twin.model.image import read_image
from twin.model.reference import QuantReference
from twin.platforms import ROOT, all_platforms, get_platform
from twin.profile.counts import sum_profiles
from twin.runner import RunSpec, model_image, profiled_session

CHECKER = ROOT / "tests" / "fixtures" / "softfloat_check.c"
OPS = {"add": 0, "sub": 1, "mul": 2, "i2f": 3, "u2f": 4, "cmp": 5, "div": 6}
SOFT_FLOAT_BUILDS = {"riscv32-virt", "rtl-ibex", "rtl-ibex-ws2", "rtl-ibex-icache", "rtl-cv32e40p",
                     "rtl-cv32e40p-ws3", "esp32-c3-devkit", "rpi-pico"}
# the helpers as the RV32IM build has them, and as the Thumb-1 (ARMv6-M) build does: under the run-time
# ABI's names, the products from 16x16- and 24x8-bit parts (no UMULL)
VARIANTS = {"rv32": (), "thumb1": ("-DTW_SF_MUL16", "-DTW_SF_AEABI")}
ARM_HELPERS = ("__aeabi_fmul", "__aeabi_fadd", "__aeabi_fsub", "__aeabi_fdiv", "__aeabi_i2f", "__aeabi_ui2f",
               "__aeabi_fcmpgt", "__aeabi_fcmplt", "__aeabi_fcmpge", "__aeabi_fcmple", "__aeabi_fcmpeq")


def _bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


# special classes: zeros, subnormals (min, max, middle), normals at both ends and around 1, infinities,
# NaNs (quiet, signalling, negative), halfway and carry patterns, powers of two at the rounding edges
SPECIALS = sorted({s | v for s in (0, 0x80000000) for v in (
    0x00000000, 0x00000001, 0x00000002, 0x00000003, 0x00400000, 0x007fffff, 0x00800000, 0x00800001,
    0x00ffffff, 0x01000000, 0x0c000000, 0x1f800000, 0x33800000, 0x33800001, 0x34000000, 0x3e800000,
    0x3effffff, 0x3f000000, 0x3f000001, 0x3f7fffff, 0x3f800000, 0x3f800001, 0x3fbfffff, 0x3fc00000,
    0x3fc00001, 0x3fffffff, 0x40000000, 0x4b000000, 0x4b000001, 0x4b800000, 0x4bffffff, 0x5f800000,
    0x7e800000, 0x7f000000, 0x7f000001, 0x7f7ffffe, 0x7f7fffff, 0x7f800000, 0x7f800001, 0x7fc00000,
    0x7fffffff, _bits(0.1), _bits(1 / 3), _bits(3.4e38), _bits(1.1754942e-38), _bits(5.877472e-39))})


def _compile(tmp: Path, source: Path, defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no host gcc: the soft-float helpers are checked compiled for the host")
    lib = tmp / "libsoftfloat_check.so"
    subprocess.run([gcc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
                    "-fno-fast-math", "-fPIC", "-shared", "-Wl,-Bsymbolic", "-DTW_SF_PREFIX=tw_sf_", *defines,
                    "-o", str(lib), str(source), str(CHECKER)], check=True)
    dll = ctypes.CDLL(str(lib))
    if not dll.tw_check_ieee_host():
        pytest.skip("the host's float unit flushes subnormals (FTZ/DAZ): no IEEE truth to compare with")
    msg = ctypes.c_char_p
    dll.tw_check_one.argtypes = [ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32, msg, ctypes.c_size_t]
    dll.tw_check_pairs.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.c_int, msg, ctypes.c_size_t]
    dll.tw_check_pairs.restype = ctypes.c_long
    dll.tw_check_random.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_uint64, msg, ctypes.c_size_t]
    dll.tw_check_random.restype = ctypes.c_long
    dll.tw_check_every_divisor.argtypes = [ctypes.c_uint32, msg, ctypes.c_size_t]
    dll.tw_check_every_divisor.restype = ctypes.c_long
    for name in ("tw_sf_addsf3", "tw_sf_mulsf3"):
        getattr(dll, name).argtypes = [ctypes.c_float, ctypes.c_float]
        getattr(dll, name).restype = ctypes.c_float
    return dll


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request) -> tuple[str, ...]:
    """The compile defines of one build's variant of the helpers (VARIANTS): every check runs on both."""
    return VARIANTS[request.param]


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory, variant) -> ctypes.CDLL:
    return _compile(tmp_path_factory.mktemp("softfloat"), build.SOFTFLOAT, variant)


def _first_mismatch(call) -> str:
    buf = ctypes.create_string_buffer(256)
    count = call(buf, len(buf))
    return buf.value.decode() if count < 0 else ""


# ------------------------------------------------------------------ against the host's IEEE arithmetic


def test_the_checker_calls_the_helpers_and_sees_a_wrong_rounding(checker, variant, tmp_path):
    assert checker.tw_sf_mulsf3(1.5, 3.0) == 4.5 and checker.tw_sf_addsf3(0.5, 0.25) == 0.75
    assert checker.tw_check_one(OPS["mul"], _bits(1.5), _bits(3.0), None, 0) == 0
    source = build.SOFTFLOAT.read_text()
    rounding = "m += 0x3fu + ((m >> 7) & 1u);            /* round to nearest, ties to even */"
    assert source.count(rounding) == 1
    wrong = tmp_path / "softfloat_ties_away.c"      # ties away from zero: wrong once in ~2^7 random sums
    wrong.write_text(source.replace(rounding, "m += 0x40u;"))
    mutant = _compile(tmp_path, wrong, variant)
    for op in ("add", "mul", "i2f"):
        found = _first_mismatch(lambda b, k, op=op: mutant.tw_check_random(OPS[op], 100_000, 1, b, k))
        assert found.startswith(op + " "), op


def test_every_pair_of_special_values_is_exact(checker):
    values = (ctypes.c_uint32 * len(SPECIALS))(*SPECIALS)
    assert _first_mismatch(lambda b, n: checker.tw_check_pairs(values, len(SPECIALS), b, n)) == ""


@pytest.mark.parametrize("op,n", [("add", 3_000_000), ("sub", 2_000_000), ("mul", 3_000_000),
                                  ("div", 3_000_000), ("i2f", 1_000_000), ("u2f", 500_000),
                                  ("cmp", 1_000_000)])
def test_millions_of_random_operands_are_exact(checker, op, n):
    """Random bit patterns biased to the edges: subnormals, the largest and smallest normals, exponents
    close together (alignment, cancellation), products near overflow and underflow, significands with
    long runs of trailing zeros (exact ties) or ones (rounding carries)."""
    seed = 0x5EED0000 + OPS[op]
    assert _first_mismatch(lambda b, k: checker.tw_check_random(OPS[op], n, seed, b, k)) == ""


@pytest.mark.parametrize("a", [0x3f800000, 0x3fffffff, 0x3fc00001, 0x3f800001])
def test_every_divisor_significand_is_exact(checker, a):
    """The divide estimates the quotient with a reciprocal and corrects it by the remainder: exact
    for every divisor significand, not only for the random ones."""
    assert _first_mismatch(lambda b, k: checker.tw_check_every_divisor(a, b, k)) == ""


@settings(max_examples=400, deadline=None)
@given(op=st.sampled_from(["add", "sub", "mul", "div", "cmp"]),
       a=st.one_of(st.integers(0, 2**32 - 1), st.floats(width=32).map(_bits)),
       b=st.one_of(st.integers(0, 2**32 - 1), st.floats(width=32).map(_bits)))
def test_property_binary_ops_are_exact(checker, op, a, b):
    buf = ctypes.create_string_buffer(256)
    assert checker.tw_check_one(OPS[op], a, b, buf, len(buf)) == 0, buf.value.decode()


@settings(max_examples=200, deadline=None)
@given(i=st.integers(0, 2**32 - 1))
def test_property_conversions_are_exact(checker, i):
    buf = ctypes.create_string_buffer(256)
    for op in ("i2f", "u2f"):
        assert checker.tw_check_one(OPS[op], i, 0, buf, len(buf)) == 0, buf.value.decode()


# ------------------------------------------------------------------ which builds get them


def test_the_build_flags_choose_the_soft_float_builds():
    chosen = {pid for pid, p in all_platforms().items() if p.has_firmware and soft_float_build(p)}
    assert chosen == SOFT_FLOAT_BUILDS
    assert {pid for pid in chosen if arm_soft_float(get_platform(pid))} == {"rpi-pico"}
    virt, pico = get_platform("riscv32-virt"), get_platform("rpi-pico")
    for p in (virt, pico):
        assert build.SOFTFLOAT in firmware_sources(p), p.id
        assert build.SOFTFLOAT not in firmware_sources(p, softfloat=False), p.id
    for pid in ("rtl-cv32e40p-fpu", "mps2-an386", "mps2-an500", "mps2-an505", "mps3-an547", "stm32f4-disco"):
        assert build.SOFTFLOAT not in firmware_sources(get_platform(pid)), pid      # hardware float
    for march, mabi, soft in [("rv32imac_zicsr", "ilp32", True), ("rv32emc", "ilp32e", True),
                              ("rv32gc", "ilp32", False), ("rv32imafc", "ilp32", False),
                              ("rv32imc_zfinx", "ilp32", False), ("rv32imfc", "ilp32f", False),
                              ("rv32iac", "ilp32", False)]:      # without M: no mulhu, libgcc's
        flags = ("-march=" + march, "-misa-spec=2.2", "-mabi=" + mabi)
        assert riscv_soft_float(dataclasses.replace(virt, cflags=flags)) is soft, march
        assert arm_soft_float(dataclasses.replace(virt, cflags=flags)) is False, march
    for flags, soft in [(("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"), True),
                        (("-mcpu=cortex-m0", "-mthumb"), True),                      # soft: GCC's default
                        (("-mcpu=cortex-m1.small-multiply", "-mthumb"), True),
                        (("-march=armv6s-m", "-mthumb", "-mfloat-abi=softfp"), True),  # no FPU: the same
                        (("-march=armv6-m", "-mcpu=cortex-m4", "-mthumb"), True),    # -march's architecture
                        (("-mcpu=cortex-m0plus", "-mthumb", "-mhard-float"), False),
                        (("-mcpu=cortex-m3", "-mthumb"), False),          # ARMv7-M: libgcc's Thumb-2 helpers
                        (("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"), False),
                        (("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"), False),
                        (("-mcpu=cortex-m23", "-mthumb"), False),         # ARMv8-M Baseline: not measured
                        (("-mcpu=cortex-m0plus", "-march=armv7-m", "-mthumb"), False)]:
        assert arm_soft_float(dataclasses.replace(pico, cflags=flags)) is soft, flags
        assert riscv_soft_float(dataclasses.replace(pico, cflags=flags)) is False, flags


def test_the_build_id_covers_the_choice():
    for pid in ("riscv32-virt", "rpi-pico"):
        p = get_platform(pid)
        assert (build._content_key(p, firmware_sources(p), "gcc x")
                != build._content_key(p, firmware_sources(p, softfloat=False), "gcc x")), pid


def _tool(elf: Path, name: str) -> str:
    """The binutils program ``name`` for the ELF's machine (e_machine 40: Arm, else RISC-V)."""
    with open(elf, "rb") as f:
        machine = struct.unpack("<18xH", f.read(20))[0]
    return ("arm-none-eabi-" if machine == 40 else "riscv64-unknown-elf-") + name


def _symbols(elf: Path) -> dict[str, int]:
    """Function symbols of the ELF: name -> address (Thumb bit cleared)."""
    nm = subprocess.run([_tool(elf, "nm"), str(elf)], capture_output=True, text=True, check=True).stdout
    return {f[2]: int(f[0], 16) & ~1 for f in (line.split() for line in nm.splitlines())
            if len(f) == 3 and f[1] in "tTwW"}


def _defined_in(elf: Path, symbol: str) -> str:
    """The source file of ``symbol``'s first instruction by the ELF's line table ('' if no symbol)."""
    addr = _symbols(elf).get(symbol)
    if addr is None:
        return ""
    out = subprocess.run([_tool(elf, "addr2line"), "-e", str(elf), hex(addr)],
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


@pytest.mark.qemu
def test_soft_float_builds_link_ours_and_the_fpu_build_does_not():
    for pid in ("riscv32-virt", "rtl-ibex"):
        elf = build_firmware(get_platform(pid)).elf
        for helper in ("__mulsf3", "__addsf3", "__subsf3", "__divsf3", "__floatsisf", "__ltsf2"):
            assert re.search(r"firmware/softfloat/softfloat\.c:\d+", _defined_in(elf, helper)), (pid, helper)
        libgcc = build_firmware(get_platform(pid), softfloat=False).elf
        assert "softfloat.c" not in _defined_in(libgcc, "__mulsf3")
    fpu = build_firmware(get_platform("rtl-cv32e40p-fpu")).elf
    assert _defined_in(fpu, "__mulsf3") == "" and _defined_in(fpu, "__addsf3") == ""   # fmul.s / fadd.s
    assert "softfloat.c" not in subprocess.run(["riscv64-unknown-elf-objdump", "--dwarf=info", str(fpu)],
                                               capture_output=True, text=True, check=True).stdout


def _callers(elf: Path, callee: str) -> set[str]:
    """The functions of the ELF with a ``bl`` to ``callee``."""
    dis = subprocess.run([_tool(elf, "objdump"), "-d", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    found, function = set(), ""
    for line in dis.splitlines():
        if m := re.match(r"[0-9a-f]+ <(.+)>:$", line):
            function = m.group(1)
        elif re.search(rf"\sbl\s+[0-9a-f]+ <{re.escape(callee)}>$", line):
            found.add(function)
    return found


@pytest.mark.qemu
def test_the_armv6m_build_links_ours_and_none_of_libgcc_float_objects():
    """rpi-pico (Cortex-M0+, ARMv6-M): every run-time ABI float helper the firmware calls is ours; none
    of libgcc's float objects is linked (their __clzsi2, the flag-returning __aeabi_cfcmp* and the
    libgcc-contract comparisons the fcmp* wrappers call); our products make no __aeabi_lmul call."""
    pico = get_platform("rpi-pico")
    elf = build_firmware(pico).elf
    symbols = _symbols(elf)
    for helper in ARM_HELPERS:
        assert re.search(r"firmware/softfloat/softfloat\.c:\d+", _defined_in(elf, helper)), helper
    for gone in ("__clzsi2", "__aeabi_cfcmpeq", "__aeabi_cfcmple", "__gesf2", "__lesf2", "__eqsf2",
                 "__mulsf3"):
        assert gone not in symbols, gone
    ours = {f for f in symbols if "softfloat.c" in _defined_in(elf, f)}
    assert {"__aeabi_fmul", "__aeabi_fdiv"} <= ours and not ours & _callers(elf, "__aeabi_lmul")
    libgcc = build_firmware(pico, softfloat=False).elf
    assert "__clzsi2" in _symbols(libgcc) and "softfloat.c" not in _defined_in(libgcc, "__aeabi_fmul")
    assert "__aeabi_f2iz" in symbols and "softfloat.c" not in _defined_in(elf, "__aeabi_f2iz")   # libgcc's


def _decode(platform, softfloat: bool, tokens: int = 3) -> tuple[list[int], list[int], float]:
    """(tokens, the host reference's tokens, instructions per decoded token) of one greedy run."""
    spec = RunSpec(platform=platform.id, tokens=tokens)
    fw = build_firmware(platform, softfloat=softfloat)
    image_path, image, _ = model_image(spec)
    prompt = modelgen.encode(spec.prompt)
    expected = QuantReference(read_image(image)).generate(prompt, tokens)
    with profiled_session(platform, fw.elf, image_path) as s:
        assert s.info.status == 0
        phases, _ = s.device.run(prompt, tokens)
    kinds = [ph.kind for ph in (*s.boot_phases, *phases)]
    decode = [s.segments[2 * i + 1] for i, k in enumerate(kinds) if k == PhaseKind.DECODE]
    got = [ph.token for ph in phases if ph.kind == PhaseKind.DECODE]
    return got, expected, sum_profiles(decode).total / len(decode)


@pytest.mark.qemu
@pytest.mark.parametrize("pid", ["riscv32-virt", "rpi-pico"])     # RV32IMAC; ARMv6-M on the M-profile machine
def test_ours_give_the_reference_tokens_in_fewer_instructions_than_libgcc(pid):
    platform = get_platform(pid)
    ours, expected, n_ours = _decode(platform, softfloat=True)
    theirs, _, n_libgcc = _decode(platform, softfloat=False)
    assert ours == theirs == expected
    assert n_ours < 0.8 * n_libgcc, (n_ours, n_libgcc)
