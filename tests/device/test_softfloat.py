"""firmware/softfloat/softfloat.c, the binary32 helpers of the soft-float RISC-V builds: compiled for the
host (the helpers renamed tw_sf_*) and compared bit for bit with the host CPU's IEEE-754 float arithmetic
(tests/fixtures/softfloat_check.c does the comparing); chosen by the build flags (no F in -march, ilp32)
and linked in place of libgcc's on exactly those builds; and the firmware, with them, still gives the
host reference's tokens, in fewer instructions than with libgcc's."""

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
from twin.device.build import build_firmware, firmware_sources, riscv_soft_float
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
                     "rtl-cv32e40p-ws3", "esp32-c3-devkit"}


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


def _compile(tmp: Path, source: Path) -> ctypes.CDLL:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no host gcc: the soft-float helpers are checked compiled for the host")
    lib = tmp / "libsoftfloat_check.so"
    subprocess.run([gcc, "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
                    "-fno-fast-math", "-fPIC", "-shared", "-Wl,-Bsymbolic", "-DTW_SF_PREFIX=tw_sf_", "-o", str(lib),
                    str(source), str(CHECKER)], check=True)
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


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return _compile(tmp_path_factory.mktemp("softfloat"), build.SOFTFLOAT)


def _first_mismatch(call) -> str:
    buf = ctypes.create_string_buffer(256)
    count = call(buf, len(buf))
    return buf.value.decode() if count < 0 else ""


# ------------------------------------------------------------------ against the host's IEEE arithmetic


def test_the_checker_calls_the_helpers_and_sees_a_wrong_rounding(checker, tmp_path):
    assert checker.tw_sf_mulsf3(1.5, 3.0) == 4.5 and checker.tw_sf_addsf3(0.5, 0.25) == 0.75
    assert checker.tw_check_one(OPS["mul"], _bits(1.5), _bits(3.0), None, 0) == 0
    source = build.SOFTFLOAT.read_text()
    rounding = "m += 0x3fu + ((m >> 7) & 1u);            /* round to nearest, ties to even */"
    assert source.count(rounding) == 1
    wrong = tmp_path / "softfloat_ties_away.c"      # ties away from zero: wrong once in ~2^7 random sums
    wrong.write_text(source.replace(rounding, "m += 0x40u;"))
    mutant = _compile(tmp_path, wrong)
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
    chosen = {pid for pid, p in all_platforms().items() if p.has_firmware and riscv_soft_float(p)}
    assert chosen == SOFT_FLOAT_BUILDS
    virt = get_platform("riscv32-virt")
    assert build.SOFTFLOAT in firmware_sources(virt)
    assert build.SOFTFLOAT not in firmware_sources(virt, softfloat=False)
    for pid in ("rtl-cv32e40p-fpu", "mps2-an386", "rpi-pico"):       # hardware float; Arm
        assert build.SOFTFLOAT not in firmware_sources(get_platform(pid)), pid
    for march, mabi, soft in [("rv32imac_zicsr", "ilp32", True), ("rv32emc", "ilp32e", True),
                              ("rv32gc", "ilp32", False), ("rv32imafc", "ilp32", False),
                              ("rv32imc_zfinx", "ilp32", False), ("rv32imfc", "ilp32f", False),
                              ("rv32iac", "ilp32", False)]:      # without M: no mulhu, libgcc's
        flags = ("-march=" + march, "-misa-spec=2.2", "-mabi=" + mabi)
        assert riscv_soft_float(dataclasses.replace(virt, cflags=flags)) is soft, march


def test_the_build_id_covers_the_choice():
    virt = get_platform("riscv32-virt")
    assert (build._content_key(virt, firmware_sources(virt), "gcc x")
            != build._content_key(virt, firmware_sources(virt, softfloat=False), "gcc x"))


def _defined_in(elf: Path, symbol: str) -> str:
    """The source file of ``symbol``'s first instruction by the ELF's line table ('' if no symbol)."""
    nm = subprocess.run(["riscv64-unknown-elf-nm", str(elf)], capture_output=True, text=True, check=True)
    addr = next((line.split()[0] for line in nm.stdout.splitlines() if line.endswith(" " + symbol)), None)
    if addr is None:
        return ""
    out = subprocess.run(["riscv64-unknown-elf-addr2line", "-e", str(elf), "0x" + addr],
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
def test_ours_give_the_reference_tokens_in_fewer_instructions_than_libgcc():
    virt = get_platform("riscv32-virt")
    ours, expected, n_ours = _decode(virt, softfloat=True)
    theirs, _, n_libgcc = _decode(virt, softfloat=False)
    assert ours == theirs == expected
    assert n_ours < 0.8 * n_libgcc, (n_ours, n_libgcc)
