"""Kernel sets (firmware/kernels/README.md): a platform's `kernels:` field picks one, the build takes ref's
files with the set's files of the same name in their place, and an optimized set gives exactly the
reference's tokens, only with fewer instructions. The QEMU tests build the same platform twice, with
`kernels: ref` and with `arm_dsp`, and run the same model on both."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures.decode import decode_builtin  # tests/ is on sys.path under pytest

from twin import platforms as plat
from twin.device import build
from twin.device.build import BuildError, firmware_sources, kernel_sources, runtime_sources
from twin.model import modelgen
from twin.model.image import write_image
from twin.platforms import PLATFORM_DIR, PlatformError, all_platforms, get_platform, load_platform_file
from twin.profile.isa import disassemble
from twin.runner import RunSpec, run

ARM_DSP = ["mps2-an386", "mps2-an500", "mps2-an505", "stm32f4-disco"]
MATVECS = ["matvec_q2.c", "matvec_q3.c", "matvec_q4.c", "matvec_q8.c"]


# ------------------------------------------------------------------ platform data and the build


def test_platform_data_chooses_the_set():
    kernels = {pid: p.kernels for pid, p in all_platforms().items() if p.has_firmware}
    assert {pid for pid, k in kernels.items() if k == "arm_dsp"} == set(ARM_DSP)
    assert kernels["riscv32-virt"] == "scalar"
    assert {kernels[p] for p in kernels if p.startswith("rtl-")} == {"ref"}    # the calibration truth's build
    assert kernels["mps3-an547"] == "mve" and get_platform("mps3-an547").vector == "mve"
    assert all(get_platform(pid).dsp and get_platform(pid).arch == "arm" for pid in ARM_DSP)


def test_a_set_replaces_ref_files_by_name():
    ref = kernel_sources("ref")
    assert [p.name for p in ref] == MATVECS and {p.parent.name for p in ref} == {"ref"}
    dsp = {p.name: p.parent.name for p in kernel_sources("arm_dsp")}
    assert sorted(dsp) == MATVECS                            # the same files, some from the set
    assert dsp["matvec_q8.c"] == dsp["matvec_q4.c"] == "arm_dsp"
    mve = {p.name: p.parent.name for p in kernel_sources("mve")}
    assert sorted(mve) == MATVECS and set(mve.values()) == {"mve"}   # Helium has every matvec, 3-bit too
    sources = firmware_sources(get_platform("mps2-an386"))
    assert sum(p.name == "matvec_q8.c" for p in sources) == 1
    assert build.KERNELS / "arm_dsp" / "matvec_q8.c" in sources
    assert build.KERNELS / "scalar" / "matvec_q8.c" in firmware_sources(get_platform("riscv32-virt"))
    scalar = {p.name: p.parent.name for p in kernel_sources("scalar")}
    assert sorted(scalar) == MATVECS and set(scalar.values()) == {"scalar"}   # 2- and 3-bit too


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("kernels", ["ref", "arm_dsp", "mve", "scalar"])
def test_runtime_mk_applies_the_same_rule(tmp_path, kernels):
    (tmp_path / "Makefile").write_text(f"include {build.FIRMWARE / 'runtime' / 'runtime.mk'}\n"
                                       "print:\n\t@echo $(RUNTIME_SRCS)\n")
    out = subprocess.run(["make", "-s", "-C", str(tmp_path), f"TW_KERNELS={kernels}"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert sorted(Path(f).resolve() for f in out) == runtime_sources(kernels)


def test_the_build_id_covers_the_set():
    p = get_platform("mps2-an386")
    keys = {k: build._content_key(q, firmware_sources(q), "gcc x")
            for k, q in (("ref", dataclasses.replace(p, kernels="ref")), ("arm_dsp", p))}
    assert keys["ref"] != keys["arm_dsp"]


def test_a_set_may_only_replace_reference_files(tmp_path, monkeypatch):
    kernels = tmp_path / "kernels"
    shutil.copytree(build.KERNELS, kernels)
    (kernels / "arm_dsp" / "matvec_q5.c").write_text("/* no such reference kernel */\n")
    monkeypatch.setattr(build, "KERNELS", kernels)
    with pytest.raises(BuildError, match="matvec_q5.c replaces no file of firmware/kernels/ref"):
        kernel_sources("arm_dsp")
    with pytest.raises(BuildError, match="platform mps2-an386: kernel set 'nope': no directory"):
        firmware_sources(dataclasses.replace(get_platform("mps2-an386"), kernels="nope"))


def _write(tmp_path, source: str, **changes) -> object:
    data = yaml.safe_load((PLATFORM_DIR / f"{source}.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / f"{source}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("source,changes,message", [
    ("mps2-an386", {"kernels": "cmsis"}, "field 'kernels' must be one of ref, arm_dsp, mve, scalar, got 'cmsis'"),
    ("mps2-an505", {"kernels": "mve"}, "field 'kernels' is 'mve' but the core has no Helium"),
    ("mps3-an547", {"kernels": "mve", "vector": None}, "field 'kernels' is 'mve' but the core has no Helium"),
    ("mps2-an386", {"kernels": 3}, "field 'kernels' must be str"),
    ("riscv32-virt", {"kernels": "arm_dsp"}, "field 'kernels' is 'arm_dsp' but the core has no Arm DSP"),
    ("mps2-an386", {"kernels": "arm_dsp", "dsp": False}, "field 'kernels' is 'arm_dsp' but the core has no"),
    ("nucleo-h743zi", {"kernels": "arm_dsp"}, "field 'kernels' given without 'board'"),
])
def test_a_bad_kernels_field_names_the_file_and_field(tmp_path, source, changes, message):
    path = _write(tmp_path, source, **changes)
    with pytest.raises(PlatformError, match=message) as info:
        load_platform_file(path)
    assert str(path) in str(info.value)


def test_a_set_without_its_directory_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(plat, "KERNELS_DIR", tmp_path / "kernels")
    path = _write(tmp_path, "mps2-an386")
    with pytest.raises(PlatformError, match="field 'kernels' is 'arm_dsp' but there is no directory") as info:
        load_platform_file(path)
    assert str(path) in str(info.value)
    assert load_platform_file(_write(tmp_path, "mps2-an386", kernels=None)).kernels == "ref"   # the default


# ------------------------------------------------------------------ natively: scalar 2/3/4-bit at the bounds

# Random tensors and the extremes of the scalar 2/3/4-bit kernels' 16-bit block sums (every code at its
# maximum, or every code 0, against activations of -128 or 127, signs mixed: the 4-bit kernel centres
# its codes, 8 - c, so codes 0 against -128 are its most negative sum, -32768), every group size, both
# schemes, 1-7 rows, 1-40 groups (several 512-element passes): the output bits of ref and scalar compared.
_SCALAR_BOUNDS_C = r"""
#include <stdio.h>
#include <string.h>
#include "kernels.h"
void ref_matvec_q2(float *out, const int8_t *xq, const float *xs, const tw_tensor *w);
void ref_matvec_q3(float *out, const int8_t *xq, const float *xs, const tw_tensor *w);
void ref_matvec_q4(float *out, const int8_t *xq, const float *xs, const tw_tensor *w);
static uint32_t rs = 2463534242u;
static uint32_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 17; rs ^= rs << 5; return rs; }
static uint32_t data[40 * 128 / 8 * 7], xq32[40 * 128 / 4];
static float sc[7 * 40], xs[40], o1[8], o2[8];
static uint8_t zs[7 * 40];
int main(void) {
    int8_t *xq = (int8_t *)xq32;
    uint8_t *d = (uint8_t *)data;
    int cases = 0, bad = 0;
    for (int it = 0; it < 7200; it++) {
        uint32_t bits = 2 + it % 3, scheme = it / 3 % 2, gs = 32u << (it / 6 % 3), mode = it / 18 % 4;
        uint32_t rows = 1 + rnd() % 7, ng = 1 + rnd() % (it % 5 ? 6 : 40), cols = ng * gs;
        uint32_t stride = bits == 2 ? cols / 4 : bits == 3 ? cols / 8 * 3 : cols / 2;
        uint8_t fill = it / 72 % 2 ? 0x00 : 0xff;      /* every code at its maximum, or every code 0 */
        for (uint32_t i = 0; i < rows * stride; i++)   /* mode 0: random codes, else 1..3 extremes */
            d[i] = mode == 0 ? (uint8_t)rnd() : mode == 3 && rnd() % 4 == 0 ? (uint8_t)rnd() : fill;
        for (uint32_t i = 0; i < cols; i++)
            xq[i] = mode == 0 ? (int8_t)rnd() : mode == 1 ? -128 : mode == 2 ? 127 : (rnd() & 1 ? 127 : -128);
        for (uint32_t i = 0; i < rows * ng; i++) {
            sc[i] = (float)(int32_t)(rnd() % 2001u - 1000u) / 4096.0f;
            zs[i] = (uint8_t)(rnd() % (1u << bits));
        }
        for (uint32_t g = 0; g < ng; g++) xs[g] = (float)(rnd() % 1000u + 1u) / 127.0f;
        tw_tensor t = {data, sc, scheme ? zs : 0, rows, cols, cols, (uint16_t)gs, (uint8_t)bits, (uint8_t)scheme};
        memset(o1, 0x55, sizeof o1);
        memset(o2, 0xaa, sizeof o2);
        if (bits == 2) {
            ref_matvec_q2(o1, xq, xs, &t);
            matvec_q2(o2, xq, xs, &t);
        } else if (bits == 3) {
            ref_matvec_q3(o1, xq, xs, &t);
            matvec_q3(o2, xq, xs, &t);
        } else {
            ref_matvec_q4(o1, xq, xs, &t);
            matvec_q4(o2, xq, xs, &t);
        }
        cases++;
        if (memcmp(o1, o2, rows * sizeof(float)) && bad++ < 5)
            printf("differs: q%u scheme %u group %u mode %u rows %u groups %u\n", bits, scheme, gs, mode, rows, ng);
    }
    printf("%d cases, %d differ\n", cases, bad);
    return bad != 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a host gcc")
def test_scalar_q2_q3_q4_match_the_reference_natively_at_the_bounds(tmp_path):
    runtime = build.FIRMWARE / "runtime"
    flags = ["-O2", "-std=c11", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra", "-Werror",
             "-fsanitize=undefined", "-fno-sanitize-recover=undefined", f"-I{runtime}"]
    (tmp_path / "check.c").write_text(_SCALAR_BOUNDS_C)
    objs = []
    for bits in (2, 3, 4):
        for kset, rename in (("ref", [f"-Dmatvec_q{bits}=ref_matvec_q{bits}"]), ("scalar", [])):
            obj = tmp_path / f"{kset}{bits}.o"
            subprocess.run(["gcc", *flags, *rename, "-c", str(build.KERNELS / kset / f"matvec_q{bits}.c"),
                            "-o", str(obj)], check=True)
            objs.append(str(obj))
    exe = tmp_path / "check"
    subprocess.run(["gcc", *flags, str(tmp_path / "check.c"), *objs, "-o", str(exe)], check=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.endswith("7200 cases, 0 differ\n"), r.stdout + r.stderr


# ------------------------------------------------------------------ on QEMU: ref against arm_dsp


def _decode(platform_id: str, kernels: str, bits: int, symmetric: bool) -> dict:
    """Greedy decoding of the built-in model on ``platform_id`` built with ``kernels``."""
    return decode_builtin(platform_id, kernels, bits, symmetric)


@pytest.mark.qemu
@pytest.mark.parametrize("bits,symmetric", [(8, True), (8, False), (4, True), (4, False), (3, True), (2, False)],
                         ids=["q8", "q8a", "q4", "q4a", "q3", "q2a"])
@pytest.mark.parametrize("platform_id", ["mps2-an386", "mps2-an505"])
def test_arm_dsp_gives_the_reference_tokens_with_fewer_instructions(platform_id, bits, symmetric):
    ref = _decode(platform_id, "ref", bits, symmetric)
    dsp = _decode(platform_id, "arm_dsp", bits, symmetric)
    assert ref["build_id"] != dsp["build_id"]
    assert dsp["tokens"] == ref["tokens"] == ref["reference"]
    # measured: the matvecs run 2.3-3.8x fewer instructions (benchmarks/kernel_speedup.py)
    assert ref["matvec"] >= 2.0 * dsp["matvec"], (ref["matvec"], dsp["matvec"])
    assert dsp["total"] < ref["total"]                                   # per decoded token too
    assert ref["total"] - dsp["total"] == ref["matvec"] - dsp["matvec"]   # nothing else changed
    assert dsp["by_class"]["simd"] > 0.2 * dsp["matvec"] and ref["by_class"]["simd"] == 0  # SMLAD and kin


# measured (benchmarks/kernel_speedup.py, matvec instructions per decoded token, ref / scalar): q8
# 1.5-1.6x; q2 2.4-2.5x, q3 2.8-2.9x and q4 2.9-3.2x on RV32, q2 2.9-3.0x, q3 3.1-3.2x and q4 3.4-3.8x on
# the M0+ (two products per multiply, firmware/kernels/scalar/matvec_q2.c, matvec_q4.c)
SCALAR_CASES = [
    *(pytest.param("riscv32-virt", bits, sym, least, id=f"riscv32-virt-q{bits}{'' if sym else 'a'}")
      for bits, least in ((8, 1.4), (4, 2.7), (3, 2.4), (2, 2.2)) for sym in (True, False)),
    *(pytest.param("rpi-pico", bits, sym, least, id=f"rpi-pico-q{bits}{'' if sym else 'a'}")   # ARMv6-M (isa-proxy)
      for bits, least in ((4, 3.1), (3, 2.6), (2, 2.4)) for sym in (True, False)),
]


@pytest.mark.qemu
@pytest.mark.parametrize("platform_id,bits,symmetric,least", SCALAR_CASES)
def test_scalar_gives_the_reference_tokens_with_fewer_instructions(platform_id, bits, symmetric, least):
    ref = _decode(platform_id, "ref", bits, symmetric)
    fast = _decode(platform_id, "scalar", bits, symmetric)
    assert ref["build_id"] != fast["build_id"]
    assert fast["tokens"] == ref["tokens"] == ref["reference"]
    assert ref["matvec"] >= least * fast["matvec"], (ref["matvec"], fast["matvec"])
    assert ref["total"] - fast["total"] == ref["matvec"] - fast["matvec"]   # nothing else changed


@pytest.mark.qemu
def test_only_arm_dsp_matvecs_use_the_dsp_extension():
    ref = _decode("mps2-an386", "ref", 4, True)["elf"]
    dsp = _decode("mps2-an386", "arm_dsp", 4, True)["elf"]
    for name in ("matvec_q8", "matvec_q4", "matvec_q3", "matvec_q2"):
        used = {i.mnemonic.split(".")[0] for i in disassemble(dsp, "arm", (f"--disassemble={name}",)).values()}
        assert "smlad" in used, name
        # the activations are paired once per call, in matvec_qN_pairs
        used = {i.mnemonic.split(".")[0] for i in disassemble(dsp, "arm", (f"--disassemble={name}_pairs",)).values()}
        assert "sxtb16" in used, name
    for name in ("matvec_q8", "matvec_q4", "matvec_q3", "matvec_q2"):
        insns = disassemble(ref, "arm", (f"--disassemble={name}",)).values()
        assert insns and not any(i.cls == "simd" for i in insns), name


# The widths of an edge image, by its default width: w2 (90 rows of 545 columns: many groups, more than
# 512 elements), w1 (545 rows of 90) and wo (90 x 90); the default everywhere else (w3: 545 rows, wq: 90,
# wk and wv: 18, the classifier: 511).
EDGE_WIDTHS = {8: (4, 3, 4), 4: (8, 2, 8), 3: (3, 2, 4), 2: (2, 3, 8)}


def _edge_image(tmp_path: Path, group: int, symmetric: bool, bits: int) -> str:
    """A random model whose shapes hit every edge of the optimized kernels: row counts 90, 18, 545 and
    511 leave 1, 2 and 3 rows over after the arm_dsp blocks of three (4-bit) and four (8-bit) rows (odd
    rows after the scalar set's pairs),
    545 columns are 18 groups of 32 (more than one chunk of activation sums, more than one 512-element
    pass of the scalar 2/3-bit kernels' prepared activations) and 5 of 128 (several 32-element blocks
    per group); several widths in one image (EDGE_WIDTHS)."""
    cfg = modelgen.ModelConfig(dim=90, hidden_dim=545, n_layers=2, n_heads=5, n_kv_heads=1, vocab_size=511,
                               seq_len=32, name="dsp-edges")
    w2, w1, wo = EDGE_WIDTHS[bits]
    image = write_image(modelgen.generate_model(cfg, seed=7), bits=bits, group_size=group, symmetric=symmetric,
                        overrides={"w2": w2, "w1": w1, "wo": wo})
    path = tmp_path / f"edges-q{bits}g{group}{'' if symmetric else 'a'}.twlm"
    path.write_bytes(image)
    return str(path)


@pytest.mark.qemu
@pytest.mark.parametrize("bits,group", [(8, 32), (8, 128), (4, 32), (4, 128), (3, 32), (3, 64), (3, 128),
                                        (2, 32), (2, 64), (2, 128)])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("platform_id", ["mps2-an386", "riscv32-virt"])    # arm_dsp, scalar
def test_optimized_sets_match_the_reference_at_every_shape_edge(tmp_path, platform_id, bits, group, symmetric):
    r = run(RunSpec(platform=platform_id, model=_edge_image(tmp_path, group, symmetric, bits), tokens=6,
                    temperature=0.9, seed=3))
    assert r["firmware"]["kernels"] == get_platform(platform_id).kernels != "ref"
    assert r["matches_reference"], (r["tokens"], r["reference_tokens"])
    names = {f["name"] for f in r["functions"]}
    assert {f"matvec_q{b}" for b in (bits, *EDGE_WIDTHS[bits])} <= names
