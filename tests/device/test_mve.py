"""The Helium (MVE) kernel set on the emulated Cortex-M55 (mps3-an547, firmware/kernels/mve): the same
platform built with `kernels: ref` and with `mve` gives exactly the host reference's tokens at 2/3/4/8
bits, symmetric and asymmetric, with fewer instructions; odd group counts, groups of 32/64/128 and more
groups than a chunk of activation sums (random shapes) too; and the twin's counts classify the MVE
instructions (objdump with -m armv8.1-m.main), the byte gathers of the 3-bit kernel included."""

from __future__ import annotations

import pytest
from fixtures.decode import decode_builtin  # tests/ is on sys.path under pytest

from twin.device.build import kernel_sources
from twin.model import modelgen
from twin.model.image import write_image
from twin.platforms import get_platform
from twin.profile import isa
from twin.runner import RunSpec, run

PLATFORM = "mps3-an547"
MATVECS = ("matvec_q8", "matvec_q4", "matvec_q3", "matvec_q2")
REPLACED = {p.name for p in kernel_sources("mve") if p.parent.name == "mve"}   # matvec_qN.c the set has


def test_the_set_replaces_the_matvecs_it_has():
    assert {"matvec_q8.c", "matvec_q4.c", "matvec_q3.c", "matvec_q2.c"} <= REPLACED
    assert get_platform(PLATFORM).kernels == "mve" and get_platform(PLATFORM).vector == "mve"


@pytest.mark.parametrize("mnemonic,cls", [
    ("vmlava.s8", "simd"), ("vmladava.s8", "simd"), ("vaddva.s8", "simd"), ("vshr.u8", "simd"),
    ("vand", "simd"), ("vorr", "simd"), ("veor", "simd"), ("vpst", "simd"), ("vpstt", "simd"), ("vptt.s8", "simd"),
    ("vmlavat.s8", "simd"), ("vldrbt.u8", "load"), ("vstrwt.32", "store"), ("vandt", "simd"),
    ("vctp.8", "simd"), ("vdup.8", "simd"), ("vldrb.u8", "load"), ("vldrw.u32", "load"), ("vld20.8", "load"),
    ("vld43.8", "load"), ("vstrw.32", "store"), ("vstrb.8", "store"), ("vst21.8", "store"), ("dls", "branch"),
    ("le", "branch"), ("wls", "branch"), ("letp", "branch"), ("dlstp.8", "branch"), ("lsll", "alu"),
    ("asrl", "alu"), ("csinc", "alu"), ("vmul.f32", "fp"), ("vldr", "load"),
    ("vshl.u16", "simd"), ("vshl.u8", "simd"), ("vadd.i8", "simd"), ("vldrh.u16", "load"),   # matvec_q3
])
def test_helium_mnemonics_have_classes(mnemonic, cls):
    assert isa.classify(mnemonic, "arm") == cls and isa.is_known(mnemonic, "arm")


def test_q_register_moves_are_simd_and_vfp_moves_fp():
    text = ("10000000:\tef22 0152 \tvmov\tq0, q1\n"
            "10000004:\tef80 0050 \tvmov.i32\tq0, #0\t@ 0x00000000\n"
            "10000008:\tee07 3a90 \tvmov\ts15, r3\n"
            "1000000c:\teee1 3a10 \tvmsr\tfpscr, r3\n"
            "10000010:\teef1 3a11 \tvmsr\tp0, r3\n")
    insns = isa.parse_objdump(text, "arm")
    assert [insns[a].cls for a in sorted(insns)] == ["simd", "simd", "fp", "fp", "simd"]


def test_gathers_are_loads():
    """matvec_q3's byte gathers (VLDRB.U8 with an offset vector) and its per-lane shifts, as objdump prints them."""
    text = ("1000019e:\tfc91 0e0e \tvldrb.u8\tq0, [r1, q7]\n"
            "100001a6:\tff18 0440 \tvshl.u16\tq0, q0, q4\n"
            "100001c0:\tff08 0440 \tvshl.u8\tq0, q0, q4\n")
    insns = isa.parse_objdump(text, "arm")
    assert [(insns[a].cls, insns[a].known) for a in sorted(insns)] == [("load", True), ("simd", True), ("simd", True)]


def _decode(kernels: str, bits: int, symmetric: bool) -> dict:
    """Greedy decoding of the built-in model on mps3-an547 built with ``kernels``."""
    return decode_builtin(PLATFORM, kernels, bits, symmetric)


@pytest.mark.qemu
@pytest.mark.parametrize("bits,symmetric", [(8, True), (8, False), (4, True), (4, False), (3, True), (3, False),
                                            (2, True), (2, False)],
                         ids=["q8", "q8a", "q4", "q4a", "q3", "q3a", "q2", "q2a"])
def test_mve_gives_the_reference_tokens_with_fewer_instructions(bits, symmetric):
    ref = _decode("ref", bits, symmetric)
    mve = _decode("mve", bits, symmetric)
    assert ref["build_id"] != mve["build_id"]
    assert mve["tokens"] == ref["tokens"] == ref["reference"]
    assert ref["total"] - mve["total"] == ref["matvec"] - mve["matvec"]   # nothing else changed
    if f"matvec_q{bits}.c" not in REPLACED:       # the reference's file in both builds
        assert mve["matvec"] == ref["matvec"]
        return
    # measured: the matvecs run 4-10x fewer instructions (benchmarks/kernel_speedup.py)
    assert ref["matvec"] >= 2.5 * mve["matvec"], (ref["matvec"], mve["matvec"])
    # no Helium in ref's matvecs (GCC vectorizes a little elsewhere: attention_head's vdup.32), plenty in mve's
    assert not [i for f in MATVECS for i in isa.disassemble(ref["elf"], "arm", (f"--disassemble={f}",)).values()
                if i.cls == "simd"]
    assert ref["by_class"]["simd"] < mve["by_class"]["simd"]
    # the counts classify the Helium code: little 'other' (it, barriers), nothing left undecoded
    assert mve["by_class"]["other"] < 0.05 * mve["total"], mve["by_class"]


@pytest.mark.qemu
def test_the_mve_matvecs_are_helium_code_and_fully_decoded():
    elf = _decode("mve", 4, True)["elf"]
    for name in sorted(r.removesuffix(".c") for r in REPLACED):
        insns = list(isa.disassemble(elf, "arm", (f"--disassemble={name}",)).values())
        used = {i.mnemonic.split(".")[0] for i in insns}
        assert "vmlava" in used, name                      # VMLADAVA, as objdump spells it
        assert not {"ldc", "stc", "cdp", "mrc", "mcr"} & used, name   # no MVE misread as coprocessor code
        assert all(i.known for i in insns), [i.mnemonic for i in insns if not i.known]


def _random_image(tmp_path, group: int, symmetric: bool) -> str:
    """A random model whose widths exercise the kernels' edges: 96 columns (3 groups of 32, an odd
    count) and 544 (17 groups of 32, more than a chunk of activation sums); every width in one image."""
    cfg = modelgen.ModelConfig(dim=96, hidden_dim=544, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=512,
                               seq_len=32, name="mve-edges")
    image = write_image(modelgen.generate_model(cfg, seed=5), bits=4, group_size=group, symmetric=symmetric,
                        overrides={"tok_emb": 8, "w2": 2, "w1": 3, "wo": 8, "w3": 2})
    path = tmp_path / f"edges-g{group}{'' if symmetric else 'a'}.twlm"
    path.write_bytes(image)
    return str(path)


@pytest.mark.qemu
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_a_twin_run_on_the_m55_matches_the_reference(tmp_path, group, symmetric):
    r = run(RunSpec(platform=PLATFORM, model=_random_image(tmp_path, group, symmetric), tokens=5,
                    temperature=0.9, seed=3))
    assert r["matches_reference"], (r["tokens"], r["reference_tokens"])
    names = {f["name"] for f in r["functions"]}
    assert {"matvec_q8", "matvec_q4", "matvec_q3", "matvec_q2"} <= names
    assert r["instructions"]["by_class"]["simd"] > 0


def _q3_image(tmp_path, group: int, symmetric: bool) -> str:
    """A random model whose 3-bit matrices exercise matvec_q3's edges: hidden 543 makes w1 and w3 543
    rows (an odd count: a last row alone) of 96 columns (3 groups of 32, an odd count) and w2 543
    columns (padded to 544: 17 groups of 32, more than a chunk of activation sums; 9 of 64, 5 of 128)."""
    cfg = modelgen.ModelConfig(dim=96, hidden_dim=543, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=512,
                               seq_len=32, name="mve-q3-edges")
    image = write_image(modelgen.generate_model(cfg, seed=11), bits=3, group_size=group, symmetric=symmetric,
                        overrides={"tok_emb": 8})
    path = tmp_path / f"q3-edges-g{group}{'' if symmetric else 'a'}.twlm"
    path.write_bytes(image)
    return str(path)


@pytest.mark.qemu
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_the_3bit_kernel_matches_the_reference_at_its_edges(tmp_path, group, symmetric):
    r = run(RunSpec(platform=PLATFORM, model=_q3_image(tmp_path, group, symmetric), tokens=5,
                    temperature=0.9, seed=4))
    assert r["matches_reference"], (r["tokens"], r["reference_tokens"])
    assert {f["name"] for f in r["functions"]} >= {"matvec_q3", "matvec_q8"}
