"""The second cycle prior (calibration/mca.py): llvm-mca's scheduling models per executed block.

Hand-written blocks of known shape, the assembly the ELF's disassembly becomes, how rejected
instructions are accounted for, the per-core targets of cores.yaml, and the estimate end to end on
the built-in model (mps2-an386, riscv32-virt): positive, within a plausible factor of the class prior,
cached per ELF (a second call spawns no llvm-mca), few instructions at class cost."""

import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from calibration import mca
from calibration import predict as P
from calibration.cycles import load_tables
from twin.cli.main import main
from twin.profile.counts import Dump

HAVE_MCA = any(shutil.which(t) for t in mca.MCA_TOOLS)
needs_mca = pytest.mark.skipif(not HAVE_MCA, reason="llvm-mca not installed (Debian package llvm; scripts/setup)")
TOKENS = 2


def _target(core: str) -> mca.McaTarget:
    return mca.mca_target(core)


@needs_mca
def test_dependent_multiply_accumulates_cost_more_than_independent_adds_on_m7():
    adds = [f"add\tr{i}, r{i}, #1" for i in range(8)]
    macs = ["mla\tr0, r1, r2, r0"] * 8              # each needs the previous accumulator
    cycles, rejected = mca.mca_regions({"adds": adds, "macs": macs}, _target("cortex-m7"))
    assert not rejected
    assert cycles["macs"] > 1.5 * cycles["adds"]
    assert cycles["adds"] < 8                         # the M7 model dual-issues independent ALU ops


@needs_mca
@pytest.mark.parametrize(("core", "div", "add"), [
    ("cortex-m7", "sdiv\tr0, r1, r2", "add.w\tr0, r1, r2"),
    ("sifive-e31", "div\ta0, a1, a2", "add\ta0, a1, a2"),
])
def test_a_divide_costs_more_than_an_add(core, div, add):
    cycles, _ = mca.mca_regions({"div": [div], "add": [add]}, _target(core))
    assert cycles["div"] > 2 * cycles["add"]


@needs_mca
def test_calls_are_scheduled_as_jumps():
    # llvm-mca charges any call a flat 100-cycle latency; the block ending in one must not cost that
    assert mca.asm_line("bl", "0x2238 <matvec_q4>      @ imm = #4984", "arm") == "b.w\t.Ltwin_target"
    assert mca.asm_line("blx", "r3", "arm") == "bx\tr3"
    assert mca.asm_line("bls", "0x2360 <f+0x128> @ imm = #138", "arm") == "bls\t.Ltwin_target"   # b + ls
    assert mca.asm_line("jal", "0x800000a4 <twin_mark>", "riscv") == "j\t.Ltwin_target"
    assert mca.asm_line("jalr", "a5", "riscv") == "jr\ta5"
    assert mca.asm_line("ldr", "r3, [pc, #16]           @ 0xa0 <$d>", "arm") == "ldr\tr3, [pc, #16]"
    block = ["push\t{r4, lr}", "mov\tr0, r1", mca.asm_line("bl", "0x2238 <matvec_q4>", "arm")]
    cycles, _ = mca.mca_regions({"call": block}, _target("cortex-m4f"))
    assert cycles["call"] < 10


@needs_mca
def test_rejected_instructions_are_reported_not_dropped():
    # The M4 has no FPARMv8 (vsel): the assembler rejects the line, llvm-mca models the rest.
    cycles, rejected = mca.mca_regions(
        {"a": ["add.w\tr0, r1, r2", "vselgt.f32\ts14, s15, s14", "add.w\tr3, r4, r5"],
         "b": ["vselgt.f32\ts14, s15, s14"]}, _target("cortex-m4f"))
    assert rejected == {"a": [1], "b": [0]}
    assert set(cycles) == {"a"} and cycles["a"] > 0
    # LLVM 14's M7 model has no scheduling data for vcmpe with #0: one more llvm-mca run without it.
    before = mca.STATS["mca_runs"]
    cycles, rejected = mca.mca_regions({"c": ["add.w\tr0, r1, r2", "vcmpe.f32\ts15, #0"]}, _target("cortex-m7"))
    assert rejected == {"c": [1]} and cycles["c"] > 0
    assert mca.STATS["mca_runs"] - before == 2


def test_an_it_block_without_its_it_loses_its_predicates():
    assert mca._unpredicate("addlt\tr4, #1") == "add\tr4, #1"
    assert mca._unpredicate("addne.w\tr8, r8, #4294967295") == "add.w\tr8, r8, #4294967295"
    assert mca._unpredicate("vnegmi.f32\ts15, s15") == "vneg.f32\ts15, s15"
    assert mca._shape("vcmpe.f32\ts14, #0") == mca._shape("vcmpe.f32  s15, #0") != mca._shape("vcmpe.f32 s1, s2")


@needs_mca
def test_a_bad_cpu_is_a_clear_error():
    bad = mca.McaTarget(core="x", triple="thumbv7em-none-eabi", mcpu="cortex-m99", model="?")
    with pytest.raises(mca.McaError, match="llvm-mca cannot model .*cortex-m99"):
        mca.mca_regions({"a": ["add.w\tr0, r1, r2"]}, bad)


def test_cores_without_an_llvm_model_say_so():
    targets = mca.load_targets()
    assert set(targets) == set(load_tables().cores)               # every core has an mca: entry
    for core in ("cortex-m0plus", "rv32imc", "nuclei-bumblebee", "xtensa-lx7"):
        assert not targets[core].available and targets[core].source
        with pytest.raises(mca.McaError, match=f"no LLVM scheduling model for core {core}"):
            mca.mca_target(core)
    assert targets["cortex-m33"].model == targets["cortex-m4f"].model == "CortexM4Model"
    assert targets["rv32imac"].class_prior == "sifive-e31"


@needs_mca
def test_every_listed_cpu_is_accepted_by_llvm_mca():
    for t in mca.load_targets().values():
        if t.available:
            line = "add\ta0, a1, a2" if t.arch == "riscv" else "add.w\tr0, r1, r2"
            cycles, rejected = mca.mca_regions({"a": [line]}, t)
            assert cycles["a"] > 0 and not rejected, t.core


def test_missing_llvm_mca_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(mca.McaError, match=r"llvm-mca not found: install Debian's llvm package \(scripts/setup does it\)"):
        mca.find_tool()
    r = CliRunner().invoke(main, ["predict", "--platform", "nucleo-l4r5zi", "--mca", "--json"])
    assert r.exit_code != 0 and "llvm-mca not found" in r.output


def test_blocks_are_merged_and_summed_per_phase():
    # TBs 0 and 2 are the same block translated twice; segments: boot | prefill | io | decode | io | decode
    dump = Dump(target="arm", mark=None, tb_vaddr=np.array([0x100, 0x200, 0x100], dtype=np.uint64),
                tb_offsets=np.array([0, 2, 3, 5]), insn_addrs=np.array([0x100, 0x102, 0x200, 0x100, 0x102],
                                                                       dtype=np.uint64),
                segments=tuple((np.array(i), np.array(n)) for i, n in
                               [([1], [1]), ([0, 1], [3, 4]), ([1], [9]), ([0, 2], [5, 6]), ([1], [9]),
                                ([2], [7])]))
    blocks, phases = mca.blocks_from_dump(dump, {"prefill": [1], "decode": [3, 5]})
    assert blocks == ((0x100, 0x102), (0x200,))
    assert phases == {"prefill": {0: 3, 1: 4}, "decode": {0: 18}}


@pytest.fixture
def fresh_mca_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(mca, "mca_cache_dir", lambda: tmp_path)
    return tmp_path


@needs_mca
@pytest.mark.qemu
@pytest.mark.parametrize("platform", ["mps2-an386", "riscv32-virt"])
def test_estimate_end_to_end(platform, fresh_mca_cache, monkeypatch):
    r = P.predict(platform, tokens=TOKENS, mca=True)
    x = r["mca"]
    assert x["available"] and x["token_cycles"] > 0 and x["prefill_cycles"] > x["token_cycles"]
    assert 0.3 < x["token_cycles"] / r["cycles"]["per_token"] < 5, (x["token_cycles"], r["cycles"])
    assert x["ratio_to_main"] == pytest.approx(x["token_cycles"] / r["cycles"]["per_token"])
    assert x["wait_cycles"] == {"prefill": 0.0, "per_token": 0.0}         # code in RAM under QEMU
    assert x["unparsed_fraction"] < 0.02
    assert x["mcpu"] == {"mps2-an386": "cortex-m4", "riscv32-virt": "sifive-e31"}[platform]
    # every executed instruction of the run is in the blocks, once
    counts = P.twin_counts(platform, tokens=TOKENS)
    pb = mca.phase_blocks(platform, tokens=TOKENS)
    assert pb.executed("prefill") == sum(counts.prefill.values())
    assert pb.executed("decode") == pytest.approx(sum(counts.decode.values()) * TOKENS)
    assert list(fresh_mca_cache.glob("*.json"))

    # cached per ELF content: the second estimate spawns no llvm-mca
    real_run = subprocess.run

    def no_mca(cmd, *a, **kw):
        assert "llvm-mca" not in str(cmd[0]), cmd
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(mca.subprocess, "run", no_mca)
    before = mca.STATS["mca_runs"]
    again = P.predict(platform, tokens=TOKENS, mca=True)["mca"]
    assert mca.STATS["mca_runs"] == before
    assert again["token_cycles"] == x["token_cycles"]


@needs_mca
@pytest.mark.qemu
def test_predict_adds_the_mca_figure_without_touching_the_contract(fresh_mca_cache):
    plain = P.predict("nucleo-l4r5zi", tokens=TOKENS)
    r = P.predict("nucleo-l4r5zi", tokens=TOKENS, mca=True)
    assert "mca" not in plain
    assert {k: v for k, v in r.items() if k != "mca"} == plain
    x = r["mca"]
    assert x["wait_cycles"]["per_token"] > 0                      # the L4R5's flash wait states, added
    assert x["token_seconds"] == pytest.approx(x["token_cycles"] / (r["clock_mhz"] * 1e6))
    pico = P.predict("rpi-pico", tokens=TOKENS, mca=True)["mca"]       # its own ARMv6-M build ran...
    assert not pico["available"] and "no LLVM scheduling model for cortex-m0plus" in pico["reason"]
    s3 = P.predict("esp32-s3-devkit", tokens=TOKENS, mca=True)["mca"]   # ...the Xtensa's did not
    assert not s3["available"] and "cross-core" in s3["reason"]
    assert set(pico) == set(x) and pico["token_cycles"] is None
    table = CliRunner().invoke(main, ["compare", "--platforms", "nucleo-l4r5zi,rpi-pico", "--tokens", str(TOKENS),
                                      "--mca"])
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line for line in table.output.splitlines()[1:3]}
    mca_column = 6                 # platform, twin, calibration, MHz, ms/token, range, mca ms, ...
    assert rows["nucleo-l4r5zi"].split()[mca_column] == f"{x['token_seconds'] * 1e3:.3g}"
    assert rows["rpi-pico"].split()[mca_column] == "n/a"          # no LLVM model of the M0+ to use
