"""The runtime's kernels at the shapes that take each of their code paths, bit-exact against the host
reference: logits natively (host gcc), tokens on the Cortex-M4F and RV32 emulators. Head sizes: the
attention's score passes of eight and four terms (first / middle / last) and the leftover terms, its
weighted sum's blocks of eight and four outputs and the single ones, heads of eight that share their
keys and values by two (attention_heads) or not; dims that are no multiple of
four: the rest after the four-at-a-time loops of rmsnorm, vec_add, swiglu and quantize_act."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from twin.device.build import runtime_sources
from twin.model import image as im
from twin.model import modelgen
from twin.model.reference import QuantReference, tw_sqrtf
from twin.platforms import ROOT
from twin.runner import RunSpec, run

# 8: one block of eight; 16, 24: first / middle / last blocks of eight; 10: eight and two left over;
# 12, 20: eight(s) then a last four; 14: eight, four, two; 2, 6: no block of eight
HEAD_SIZES = [2, 6, 8, 10, 12, 14, 16, 20, 24]
# (head_size, n_heads, n_kv_heads, hidden_dim): dim 4 x head_size and hidden 40, or odd shapes
# heads of eight that share a KV head by two, three (a pair and one), one and four (attention_heads)
SHAPES = [(h, 4, 2, 40) for h in HEAD_SIZES] + [(2, 3, 1, 41), (6, 3, 3, 43), (10, 5, 1, 30),
                                                (8, 6, 2, 40), (8, 4, 4, 40), (8, 4, 1, 40)]


def _model(shape: tuple[int, int, int, int], vocab: int = 300) -> bytes:
    head_size, n_heads, n_kv_heads, hidden = shape
    cfg = modelgen.ModelConfig(dim=head_size * n_heads, hidden_dim=hidden, n_layers=2, n_heads=n_heads,
                               n_kv_heads=n_kv_heads, vocab_size=vocab, seq_len=32)
    return im.write_image(modelgen.generate_model(cfg, seed=100 + head_size * n_heads + hidden), 8, 32)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("host gcc not installed")
    exe = tmp_path_factory.mktemp("native") / "driver"
    cmd = ["gcc", "-O2", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra", "-Wdouble-promotion",
           "-std=c11", f"-I{ROOT / 'firmware' / 'runtime'}", str(ROOT / "tests" / "native" / "driver.c"),
           *map(str, runtime_sources("ref")), "-o", str(exe)]
    subprocess.run(cmd, check=True)
    return exe


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}x{}kv{}f{}".format(*s))
def test_logits_bit_exact_natively(driver, tmp_path, shape):
    path = tmp_path / "model.bin"
    path.write_bytes(_model(shape, vocab=64))
    tokens = [1, 5, 9, 33, 2, 60, 17, 40, 8, 3, 22, 50]   # 12 positions: softmax over 1 .. 12 scores
    ref = QuantReference(path.read_bytes())
    out = subprocess.run([str(driver), "logits", str(path), *map(str, tokens)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert len(out) == len(tokens)
    for pos, (tok, line) in enumerate(zip(tokens, out, strict=True)):
        c_bits = np.array([int(h, 16) for h in line.split()], dtype=np.uint32)
        assert np.array_equal(c_bits, ref.forward(tok, pos).view(np.uint32)), f"logits differ at position {pos}"


@pytest.mark.qemu
@pytest.mark.parametrize("platform", ["stm32f4-disco", "riscv32-virt"])
def test_tokens_equal_reference_on_the_emulators(tmp_path, platform):
    for shape in SHAPES:
        path = tmp_path / "model.twlm"
        path.write_bytes(_model(shape))
        r = run(RunSpec(platform=platform, model=str(path), prompt="Once", tokens=12))
        assert r["matches_reference"], (shape, r["tokens"], r["reference_tokens"])


def test_integer_sqrt_is_ieee_natively(driver):
    """tw_sqrtf's integer root (the build without a single-precision FPU; the host driver takes it) on
    random bit patterns of every exponent, subnormals and the edges, against IEEE sqrt."""
    rng = np.random.default_rng(5)
    bits = np.concatenate([rng.integers(0, 0x7F800000, 60000, dtype=np.uint32),          # every finite x > 0
                           rng.integers(1, 0x00800000, 20000, dtype=np.uint32),          # subnormals
                           np.array([0, 1, 0x007FFFFF, 0x00800000, 0x3F800000, 0x7F7FFFFF, 0x7F800000],
                                    dtype=np.uint32)])
    out = subprocess.run([str(driver), "math"], input="".join(f"{int(b):08x}\n" for b in bits),
                         capture_output=True, text=True, check=True).stdout.splitlines()
    got = np.array([int(line.split()[1], 16) for line in out], dtype=np.uint32)
    assert np.array_equal(got, tw_sqrtf(bits.view(np.float32)).view(np.uint32))
