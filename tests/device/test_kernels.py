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
    assert scalar == {"matvec_q2.c": "ref", "matvec_q3.c": "ref", "matvec_q4.c": "scalar", "matvec_q8.c": "scalar"}


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


@pytest.mark.qemu
@pytest.mark.parametrize("bits,symmetric", [(8, True), (8, False), (4, True), (4, False)],
                         ids=["q8", "q8a", "q4", "q4a"])
def test_scalar_gives_the_reference_tokens_with_fewer_instructions(bits, symmetric):
    ref = _decode("riscv32-virt", "ref", bits, symmetric)
    fast = _decode("riscv32-virt", "scalar", bits, symmetric)
    assert ref["build_id"] != fast["build_id"]
    assert fast["tokens"] == ref["tokens"] == ref["reference"]
    # measured: the matvecs run 1.5-1.6x fewer instructions (benchmarks/kernel_speedup.py)
    assert ref["matvec"] >= 1.4 * fast["matvec"], (ref["matvec"], fast["matvec"])
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


def _edge_image(tmp_path: Path, group: int, symmetric: bool, bits: int) -> str:
    """A random model whose shapes hit every edge of the optimized kernels: row counts 90, 18, 545 and
    511 leave 1, 2 and 3 rows over after the arm_dsp blocks of three (4-bit) and four (8-bit) rows (odd
    rows after the scalar set's pairs),
    545 columns are 18 groups of 32 (more than one chunk of activation sums) and 5 of 128 (several
    32-element blocks per group); every width in one image."""
    cfg = modelgen.ModelConfig(dim=90, hidden_dim=545, n_layers=2, n_heads=5, n_kv_heads=1, vocab_size=511,
                               seq_len=32, name="dsp-edges")
    others = {8: (4, 3), 4: (8, 2)}[bits]
    image = write_image(modelgen.generate_model(cfg, seed=7), bits=bits, group_size=group, symmetric=symmetric,
                        overrides={"w2": others[0], "w1": others[1], "wo": others[0]})
    path = tmp_path / f"edges-q{bits}g{group}{'' if symmetric else 'a'}.twlm"
    path.write_bytes(image)
    return str(path)


@pytest.mark.qemu
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("platform_id", ["mps2-an386", "riscv32-virt"])    # arm_dsp, scalar
def test_optimized_sets_match_the_reference_at_every_shape_edge(tmp_path, platform_id, bits, group, symmetric):
    r = run(RunSpec(platform=platform_id, model=_edge_image(tmp_path, group, symmetric, bits), tokens=6,
                    temperature=0.9, seed=3))
    assert r["firmware"]["kernels"] == get_platform(platform_id).kernels != "ref"
    assert r["matches_reference"], (r["tokens"], r["reference_tokens"])
    names = {f["name"] for f in r["functions"]}
    assert {"matvec_q8", "matvec_q4"} <= names
