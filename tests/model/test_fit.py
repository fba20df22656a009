"""`twin fit` agrees with the firmware: the arena it computes is the one model_open carves, a model it
says does not fit is refused (E_NO_RAM / too large for the partition), one it says fits runs.
`twin image` makes images of any shape."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from twin.cli.main import main
from twin.device.build import build_firmware
from twin.device.protocol import ErrorCode, PhaseKind
from twin.model import modelgen
from twin.model.fit import arena_bytes, fit_platform
from twin.model.image import read_image, write_image
from twin.platforms import get_platform
from twin.runner import RunError, _check_fits, emulator_session


def _with_context(model, n):
    return dataclasses.replace(model, config=dataclasses.replace(model.config, seq_len=n))


def test_arena_formula_matches_the_documented_default():
    """docs/image-format.md: KV cache 81 920 bytes of the default model; the rest from layout()."""
    c = modelgen.ModelConfig()
    f32 = arena_bytes(c, [(64, 32), (172, 32)], layer_struct_bytes=0)
    int8 = arena_bytes(c, [(64, 32), (172, 32)], layer_struct_bytes=0, kv_cache="int8")
    assert f32 - int8 == 2 * (5 * 64 * 32 * 4) - 2 * (5 * 64 * 32 + 5 * 64 * 4 * 4)
    assert f32 == 81920 + 1024 + 1376 + 2048 + 32 + 192 + 24 + 2 * 2048 + 8 * 512


def test_fit_json_contract():
    r = CliRunner().invoke(main, ["fit", "--platform", "stm32f4-disco", "--platform", "mps2-an386", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [x["platform"] for x in rows] == ["stm32f4-disco", "mps2-an386"]
    for x in rows:
        assert {"platform", "fits", "flash_bytes", "ram_bytes", "max_context", "kv_int8"} <= set(x)
        assert x["kv_cache"] == x["image_kv_cache"] == "f32"
        assert x["fits"] is True and x["max_context"] >= 64
        assert x["kv_int8"]["max_context"] > x["max_context"]
    text = CliRunner().invoke(main, ["fit", "--platform", "stm32f4-disco", "--context", "512"])
    assert text.exit_code == 0 and "NO" in text.output


@pytest.mark.qemu
@pytest.mark.parametrize("kv", ["f32", "int8"])
@pytest.mark.parametrize("platform_id", ["stm32f4-disco", "riscv32-virt"])
def test_fit_agrees_with_the_firmware(platform_id, kv, tmp_path):
    p = get_platform(platform_id)
    fw = build_firmware(p)
    base = modelgen.builtin_model()
    probe = fit_platform(p, write_image(base, bits=4, kv_cache=kv))
    n = probe["max_context"]
    assert 64 <= n < 16384
    if kv == "int8":   # the f32 image's int8 what-if is exactly the fit of the int8 image
        what_if = fit_platform(p, write_image(base, bits=4))
        assert what_if["kv_int8"]["max_context"] == n > what_if["max_context"]
        assert fit_platform(p, write_image(base, bits=4), kv_cache="int8")["arena_bytes"] == probe["arena_bytes"]
    for ctx, fits in ((n, True), (n + 1, False)):
        image = write_image(_with_context(base, ctx), bits=4, kv_cache=kv)
        verdict = fit_platform(p, image)
        assert verdict["fits"] is fits and verdict["max_context"] == n
        path = tmp_path / f"ctx{ctx}.twlm"
        path.write_bytes(image)
        with emulator_session(p, fw.elf, path) as s:
            if fits:
                assert s.info.status == 0
                mem = s.device.mem()
                assert mem.arena_used == verdict["arena_bytes"]
                assert mem.arena_size == verdict["arena_available_bytes"]
                assert mem.ram_static == verdict["static_ram_bytes"]
                tokens = modelgen.encode_for(base, "It was")
                phases, _ = s.device.run(tokens, 2)
                assert len([ph for ph in phases if ph.kind == PhaseKind.DECODE]) == 2
            else:
                assert s.info.status == ErrorCode.E_NO_RAM


def test_too_large_image_is_refused_as_fit_says():
    p = get_platform("stm32f4-disco")
    big = modelgen.generate_model(modelgen.ModelConfig(dim=256, hidden_dim=768, n_layers=4, n_heads=8,
                                                       n_kv_heads=4, vocab_size=512))
    image = write_image(big, bits=8)
    verdict = fit_platform(p, image)
    assert verdict["flash_fits"] is False and verdict["fits"] is False and verdict["flash_headroom_bytes"] < 0
    with pytest.raises(RunError, match="larger than"):
        _check_fits(p, image)
    small = write_image(modelgen.builtin_model(), bits=8)
    assert fit_platform(p, small)["flash_fits"] is True
    _check_fits(p, small)


def test_image_command_random_shape(tmp_path):
    out = tmp_path / "r.twlm"
    r = CliRunner().invoke(main, ["image", "--dim", "96", "--layers", "3", "--heads", "6", "--kv-heads", "2",
                                  "--hidden", "200", "--vocab", "300", "--context", "40", "--bits", "8",
                                  "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    c = read_image(out.read_bytes()).config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.hidden_dim, c.vocab_size, c.seq_len) == (
        96, 3, 6, 2, 200, 300, 40)
    assert json.loads(r.output)["tokenizer"] is None
    bad = CliRunner().invoke(main, ["image", "--dim", "96", "--heads", "5", "-o", str(out)])
    assert bad.exit_code != 0 and "inconsistent shape" in bad.output


def test_image_command_imports_and_keeps_the_tokenizer(tmp_path):
    from twin.model.importers.llama2c import write_llama2c
    from twin.runner import model_tokenizer

    src = tmp_path / "m.bin"
    src.write_bytes(write_llama2c(modelgen.generate_model(modelgen.ModelConfig(dim=32, hidden_dim=64, n_layers=1,
                                                                               n_heads=4, n_kv_heads=2,
                                                                               vocab_size=300, seq_len=32))))
    out = tmp_path / "m.twlm"
    r = CliRunner().invoke(main, ["image", "--from", str(src), "--bits", "4", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert read_image(out.read_bytes()).config.vocab_size == 300
    assert model_tokenizer(str(out)) is None
    assert "no tokenizer found" in r.stderr and "--tokenizer FILE" in r.stderr
    tok_file = tmp_path / "tok.json"                   # name one: the built-in model's tokenizer
    tok_file.write_text(modelgen.builtin_model().tokenizer.to_json())
    r = CliRunner().invoke(main, ["image", "--from", str(src), "--tokenizer", str(tok_file), "-o", str(out)])
    assert r.exit_code != 0 and "512 token ids, more than the model's vocabulary of 300" in r.output
    src.write_bytes(write_llama2c(modelgen.generate_model(modelgen.ModelConfig(dim=32, hidden_dim=64, n_layers=1,
                                                                               n_heads=4, n_kv_heads=2,
                                                                               vocab_size=512, seq_len=32))))
    r = CliRunner().invoke(main, ["image", "--from", str(src), "--tokenizer", str(tok_file), "-o", str(out)])
    assert r.exit_code == 0 and "no tokenizer" not in r.stderr, r.output
    assert model_tokenizer(str(out)).encode("Emma", bos=False) == modelgen.builtin_model().tokenizer.encode(
        "Emma", bos=False)
    r = CliRunner().invoke(main, ["image", "--tokenizer", str(tok_file), "-o", str(out)])
    assert r.exit_code != 0 and "--from" in r.output
    out2 = tmp_path / "b.twlm"
    assert CliRunner().invoke(main, ["image", "-o", str(out2)]).exit_code == 0
    tok = model_tokenizer(str(out2))
    assert tok is not None and tok.decode(tok.encode("Emma said", bos=False)) == "Emma said"
    bad = tmp_path / "bad.bin"
    bad.write_bytes(src.read_bytes()[:1000])
    r = CliRunner().invoke(main, ["image", "--from", str(bad), "-o", str(out)])
    assert r.exit_code != 0 and "truncated" in r.output


@pytest.mark.qemu
def test_int8_kv_cache_runs_a_context_that_f32_cannot(tmp_path):
    """The point of the int8 KV cache: on stm32f4-disco a context too long for the f32 cache opens and
    generates the reference's tokens with the int8 cache."""
    from twin.model.reference import QuantReference

    p = get_platform("stm32f4-disco")
    fw = build_firmware(p)
    base = modelgen.builtin_model()
    ctx = fit_platform(p, write_image(base, bits=4))["max_context"] + 1
    f32 = fit_platform(p, write_image(_with_context(base, ctx), bits=4))
    image = write_image(_with_context(base, ctx), bits=4, kv_cache="int8")
    verdict = fit_platform(p, image)
    assert f32["fits"] is False and verdict["fits"] is True and verdict["kv_cache"] == "int8"
    path = tmp_path / "kv8.twlm"
    path.write_bytes(image)
    tokens = modelgen.encode_for(base, "It was")
    expected = QuantReference(image).generate(tokens, 8)
    with emulator_session(p, fw.elf, path) as s:
        assert s.info.status == 0
        assert s.device.mem().arena_used == verdict["arena_bytes"]
        phases, _ = s.device.run(tokens, 8)
    assert [ph.token for ph in phases if ph.kind == PhaseKind.DECODE] == expected


def test_image_and_fit_commands_take_the_kv_cache_type(tmp_path):
    out = tmp_path / "kv8.twlm"
    r = CliRunner().invoke(main, ["image", "--kv-cache", "int8", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["kv_cache"] == "int8" and read_image(out.read_bytes()).kv_cache == "int8"
    r = CliRunner().invoke(main, ["fit", "--model", str(out), "--platform", "stm32f4-disco", "--json"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.output)
    assert row["kv_cache"] == "int8" and row["kv_f32"]["max_context"] < row["max_context"]
    r2 = CliRunner().invoke(main, ["fit", "--kv-cache", "int8", "--platform", "stm32f4-disco", "--json"])
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.output)[0]["arena_bytes"] == row["arena_bytes"]
