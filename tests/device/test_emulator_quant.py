"""Quantization schemes end to end on real QEMU: the firmware's 2/3/4/8-bit kernels, symmetric and
asymmetric, and a mixed-precision image give exactly the host reference's tokens on a Cortex-M4F, a
Cortex-M7, a Cortex-M55 (the Helium kernel set) and an RV32IMAC (soft-float). 4- and 8-bit symmetric
runs on every platform are in test_emulator.py; one image here mixes all four asymmetric widths so the matrix stays small."""

import pytest

from twin.runner import RunSpec, run

pytestmark = pytest.mark.qemu

PLATFORMS = ["mps2-an386", "mps2-an500", "mps3-an547", "riscv32-virt"]
# (bits, group size, symmetric, overrides): every width in both schemes, every group size
CASES = {
    "q2g32": (2, 32, True, ()),
    "q3g64": (3, 64, True, ()),
    "q2g128a": (2, 128, False, ()),
    # asymmetric 4-bit default with 8-, 3- and 2-bit tensors: all four asymmetric kernels in one run
    "mixed-a": (4, 32, False, (("tok_emb", 8), ("w2", 3), ("w1", 2), ("wo.0", 8))),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("platform", PLATFORMS)
def test_quant_scheme_tokens_equal_reference(platform, case):
    bits, group, symmetric, overrides = CASES[case]
    sampled = case in ("q3g64", "mixed-a")     # sampling is sensitive to the last bit
    r = run(RunSpec(platform=platform, bits=bits, group_size=group, symmetric=symmetric, overrides=overrides,
                    tokens=6, temperature=0.9 if sampled else 0.0, seed=11))
    assert r["matches_reference"], (r["tokens"], r["reference_tokens"])
    assert r["model"].startswith(f"builtin-q{bits}g{group}{'' if symmetric else 'a'}")
    names = {f["name"] for f in r["functions"]}
    widths = {bits, *(b for _, b in overrides)}
    assert {f"matvec_q{b}" for b in widths} <= names
