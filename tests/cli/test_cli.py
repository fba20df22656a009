import json
import re

import pytest
from click.testing import CliRunner

from twin.cli.main import main
from twin.device.build import BuildError, require_tool
from twin.device.qemu import EmulatorError, qemu_binary
from twin.platforms import Emulator, get_platform


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_platforms_lists_every_spine_platform():
    r = invoke("platforms", "--json")
    assert r.exit_code == 0
    rows = {row["id"]: row for row in json.loads(r.output)}
    assert rows["stm32f4-disco"]["emulator"] == "qemu:netduinoplus2"
    assert rows["riscv32-virt"]["core"] == "rv32imac"
    text = invoke("platforms").output
    assert "mps2-an505" in text and "cortex-m33" in text


def test_build_json_names_each_elf_and_its_build_id():
    from twin.device.build import build_firmware

    r = invoke("build", "--platform", "riscv32-virt", "--platform", "mps2-an386", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [b["platform"] for b in out["firmware"]] == ["riscv32-virt", "mps2-an386"]
    fw = build_firmware(get_platform("mps2-an386"))
    assert out["firmware"][1]["build_id"] == fw.build_id and out["firmware"][1]["elf"] == str(fw.elf)
    assert "-mcpu=cortex-m4" in out["firmware"][1]["cflags"] and out["plugin"].endswith(".so")
    r = CliRunner().invoke(main, ["build", "--platform", "nrf52840-dk", "--json"])
    assert r.exit_code != 0 and "no firmware build yet" in r.output


def test_unknown_platform_is_one_line_listing_valid_ones():
    r = invoke("run", "--platform", "esp32-s9")
    assert r.exit_code != 0
    line = r.output.strip()
    assert "\n" not in line
    assert "unknown platform 'esp32-s9'" in line and "mps2-an386" in line


def test_missing_tools_name_their_package():
    with pytest.raises(BuildError, match="install the Debian package gcc-arm-none-eabi"):
        require_tool("arm-none-eabi-gcc-not-here", "gcc-arm-none-eabi")
    from dataclasses import replace
    p = get_platform("riscv32-virt")
    p = replace(p, emulator=Emulator("qemu", "qemu-system-riscv32-missing", "qemu-system-misc", "virt", ("uart",)))
    with pytest.raises(EmulatorError, match="install the Debian package qemu-system-misc"):
        qemu_binary(p)


def test_model_file_errors_are_clear(tmp_path):
    bad = tmp_path / "model.twlm"
    bad.write_bytes(b"not a model image at all")
    r = invoke("run", "--platform", "mps2-an386", "--model", str(bad))
    assert r.exit_code != 0 and "magic" in r.output.lower()
    r = invoke("run", "--platform", "mps2-an386", "--model", str(tmp_path / "missing.twlm"))
    assert r.exit_code != 0 and "not found" in r.output


@pytest.mark.qemu
def test_run_json_contract():
    r = invoke("run", "--platform", "riscv32-virt", "--tokens", "5", "--bits", "8", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert isinstance(out["platform"], str) and isinstance(out["model"], str)
    assert isinstance(out["tokens"], list) and all(isinstance(t, int) for t in out["tokens"])
    assert out["matches_reference"] is True
    ins = out["instructions"]
    assert isinstance(ins["total"], int) and isinstance(ins["by_class"], dict)
    assert {"alu", "load", "store", "mul", "div", "branch", "fp", "simd", "other"} <= set(ins["by_class"])
    assert isinstance(ins["by_phase"]["prefill"], int) and len(ins["by_phase"]["decode"]) == 5
    assert all({"name", "instructions"} <= set(f) for f in out["functions"])
    assert {"flash_bytes", "ram_static_bytes", "stack_peak_bytes"} <= set(out["memory"])
    assert isinstance(out["wall_seconds"], float)


@pytest.mark.qemu
def test_run_human_output():
    r = invoke("run", "--platform", "mps2-an386", "--tokens", "3", "--prompt", "The cat")
    assert r.exit_code == 0, r.output
    assert "matches the host reference" in r.output and "top functions" in r.output
    # the Armv7E-M catalog's instruction caches, simulated; the data caches only with the memory traffic
    assert re.search(r"\n    I 1024B/16B/64w\+pf +\d+\.\d\d% · [\d,]+ misses · [\d,]+ prefetched\n", r.output), r.output
    assert "\n    D " not in r.output
    m = invoke("run", "--platform", "mps2-an386", "--tokens", "2", "--mem-traffic")
    assert m.exit_code == 0 and re.search(r"\n    D 16384B/32B/4w +\d+\.\d\d% · [\d,]+ misses\n", m.output), m.output


@pytest.mark.qemu
def test_demo_compares_platforms_side_by_side():
    r = invoke("demo", "--platforms", "mps2-an500,riscv32-virt", "--tokens", "2")
    assert r.exit_code == 0, r.output
    table = r.output.split("instr/token")[-1].split("What if")[0]
    assert "mps2-an500" in table and "riscv32-virt" in table and "FAIL" not in table
    # the what-if: the catalog boards these two stand for, and only those
    what_if = {line.split()[0]: line.split() for line in r.output.split("What if")[1].splitlines()[2:]
               if line and not line.startswith("(")}
    assert {"nucleo-f746zg", "nucleo-h743zi", "hifive1-revb", "mps2-an500"} <= set(what_if)
    assert "nrf52840-dk" not in what_if and "stm32f4-disco" not in what_if      # their proxies did not run
    assert "esp32-c3-devkit" not in what_if          # it counts its own RV32IMC build (isa-proxy): twin predict
    # the same numbers `twin predict` gives for the same run (model, bits, tokens, prompt)
    p = json.loads(invoke("predict", "--platform", "nucleo-f746zg", "--tokens", "2", "--json").output)
    assert what_if["nucleo-f746zg"][4] == f"{p['token_seconds']['value'] * 1e3:.3g}"
    assert "NO (RAM short by" in " ".join(what_if["hifive1-revb"])        # 16 KB DTIM


@pytest.mark.qemu
def test_kernels_option_compares_a_build_with_the_reference_kernels():
    dsp = json.loads(invoke("run", "--platform", "mps2-an505", "--tokens", "2", "--json").output)
    ref = json.loads(invoke("run", "--platform", "mps2-an505", "--tokens", "2", "--kernels", "ref", "--json").output)
    assert (dsp["firmware"]["kernels"], ref["firmware"]["kernels"]) == ("arm_dsp", "ref")
    assert dsp["firmware"]["build_id"] != ref["firmware"]["build_id"]
    assert dsp["tokens"] == ref["tokens"] == dsp["reference_tokens"]            # only faster, never different
    assert sum(dsp["instructions"]["by_phase"]["decode"]) < sum(ref["instructions"]["by_phase"]["decode"])
    r = invoke("run", "--platform", "riscv32-virt", "--kernels", "arm_dsp")
    assert r.exit_code != 0 and "no Arm DSP extension" in r.output and "\n" not in r.output.strip()


def _image(tmp_path, bits: int, overrides=None):
    from twin.model import modelgen
    from twin.model.image import QuantRecipe, write_image

    recipe = QuantRecipe.make(bits, 32, True, overrides or {})
    path = tmp_path / f"m{bits}.twlm"
    path.write_bytes(write_image(modelgen.generate_model(modelgen.ModelConfig(dim=32, hidden_dim=64, n_layers=2,
                                                                              n_heads=4, n_kv_heads=2,
                                                                              vocab_size=300, seq_len=32)),
                                 recipe=recipe))
    return path


@pytest.mark.parametrize("option", [("--bits", "8"), ("--bits", "4"), ("--asymmetric",), ("--group-size", "32"),
                                    ("--override", "tok_emb=8")])
def test_run_refuses_quantization_options_with_an_image(tmp_path, option):
    """--bits 4 is the default, yet given explicitly it is refused too (click's ParameterSource)."""
    img = _image(tmp_path, 8)
    r = CliRunner().invoke(main, ["run", "--platform", "mps2-an386", "--model", str(img), *option])
    assert r.exit_code != 0
    line = r.output.strip()
    assert "\n" not in line and option[0] in line and "quantization is fixed" in line and "twin image" in line


def test_image_bits_is_what_the_image_holds(tmp_path):
    from twin.model.image import read_image
    from twin.runner import image_bits

    assert image_bits(read_image(_image(tmp_path, 8).read_bytes())) == 8
    assert image_bits(read_image(_image(tmp_path, 3).read_bytes())) == 3
    # mixed: the layers' 3 bits hold most weights (2 x 9216), tok_emb (300 x 32) at 8 bits does not
    assert image_bits(read_image(_image(tmp_path, 3, {"tok_emb": 8}).read_bytes())) == 3
    assert image_bits(read_image(_image(tmp_path, 2, {"w1": 8, "w2": 8, "w3": 8, "tok_emb": 8}).read_bytes())) == 8


@pytest.mark.qemu
def test_run_json_reports_the_images_bits(tmp_path):
    img = _image(tmp_path, 8)
    r = invoke("run", "--platform", "mps2-an386", "--model", str(img), "--tokens", "2", "--prompt", "a", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["bits"] == 8 and out["matches_reference"] is True
