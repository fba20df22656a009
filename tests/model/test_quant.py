"""Quantization schemes of the image format: 2/3/4/8-bit codes, group sizes 32/64/128, symmetric and
asymmetric; the packing layouts the firmware reads; per-tensor recipes (mixed precision)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.model import image as im
from twin.model.modelgen import ModelConfig, generate_model

BITS = [2, 3, 4, 8]
GROUPS = [32, 64, 128]
SMALL = ModelConfig(dim=32, hidden_dim=72, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, seq_len=16,
                    name="small", shared_classifier=False)


def _matrix(rows: int, cols: int, seed: int, scale: float, offset: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal((rows, cols)) + offset) * scale).astype(np.float32)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(1, 5),
    cols=st.integers(1, 300),
    bits=st.sampled_from(BITS),
    group=st.sampled_from(GROUPS),
    symmetric=st.booleans(),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 300.0]),
    offset=st.sampled_from([0.0, 0.5, 3.0, -3.0]),   # asymmetric weight distributions too
)
def test_quantize_pack_unpack_round_trip(rows, cols, bits, group, symmetric, seed, scale, offset):
    w = _matrix(rows, cols, seed, scale, offset)
    scheme = im.QuantScheme(bits, group, symmetric)
    p = im.padded(cols, group)
    ng = p // group
    if symmetric:
        q, scales = im.quantize(w, bits, group)
        assert np.abs(q).max(initial=0) <= im.qmax(bits)
        data = im.pack(q, bits)
        assert np.array_equal(im.unpack(data, bits, rows, p), q)
        levels = q.astype(np.int16)
        codes = im.unpack_codes(data, bits, rows, p)
        if bits < 8:   # code = q + 2^(bits-1): code 0 is never used
            assert codes.min() >= 1 and np.array_equal(codes.astype(np.int16) - (1 << (bits - 1)), levels)
    else:
        codes, scales, zeros = im.quantize_asymmetric(w, bits, group)
        assert zeros.shape == (rows, ng) and zeros.dtype == np.uint8
        assert codes.max(initial=0) <= (1 << bits) - 1 and zeros.max(initial=0) <= (1 << bits) - 1
        data = im.pack_codes(codes, bits)
        assert np.array_equal(im.unpack_codes(data, bits, rows, p), codes)
        levels = codes.astype(np.int16) - np.repeat(zeros, group, axis=1)
    assert levels.shape == (rows, p) and scales.shape == (rows, ng) and scales.dtype == np.float32
    assert not levels[:, cols:].any()                                  # padding is level 0
    assert len(data) == rows * p * bits // 8 == scheme.sizes(rows, cols)[0]
    assert scheme.sizes(rows, cols)[1] == rows * ng * (4 if symmetric else 5)
    # every weight within half a step of its value
    step = np.repeat(scales, group, axis=1)[:, :cols]
    err = np.abs(im.dequantize(levels, scales, cols) - w)
    assert np.all(err <= step * np.float32(0.5 + 1e-4) + np.float32(1e-30))
    # the scheme's encode() is exactly this data
    sdata = scales.tobytes() + (b"" if symmetric else zeros.tobytes())
    assert scheme.encode(w) == (data, sdata)


@pytest.mark.parametrize("bits", BITS)
def test_asymmetric_uses_the_whole_code_range(bits):
    w = np.linspace(-1.0, 3.0, 64, dtype=np.float32)[None, :]   # skewed: [-1, 3]
    codes, scales, zeros = im.quantize_asymmetric(w, bits, 32)
    top = (1 << bits) - 1
    assert codes[0, 0] == 0 and codes[0, -1] == top
    # symmetric wastes the negative half on a skewed group: asymmetric is at least as accurate
    q, s = im.quantize(w, bits, 32)
    err_sym = np.abs(im.dequantize(q, s, 64) - w).max()
    err_asym = np.abs(im.dequantize(codes.astype(np.int16) - np.repeat(zeros, 32, axis=1), scales, 64) - w).max()
    assert err_asym <= err_sym


def test_packing_layouts():
    # 2 bits: element 4j+k at bits 2k of byte j
    assert im.pack_codes(np.array([[1, 2, 3, 0] * 8]), 2)[0] == 1 | 2 << 2 | 3 << 4
    # 3 bits: 8 elements per 3 bytes, element k at bits 3k of the little-endian 24-bit word
    codes = np.array([[0, 1, 2, 3, 4, 5, 6, 7] * 4])
    word = sum(k << (3 * k) for k in range(8))
    assert im.pack_codes(codes, 3)[:3] == word.to_bytes(3, "little")
    assert len(im.pack_codes(codes, 3)) == 12
    # 4 bits: low nibble first; 8 bits: int8 for symmetric levels, bytes for codes
    assert im.pack_codes(np.array([[5, 12] * 16]), 4)[0] == 5 | 12 << 4
    assert im.pack(np.array([[-1, 127] + [0] * 30]), 8)[:2] == bytes([255, 127])
    assert im.pack(np.array([[-1, 1] + [0] * 30]), 2)[0] == 1 | 3 << 2 | 2 << 4 | 2 << 6


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_image_round_trip_per_scheme(bits, symmetric):
    model = generate_model(SMALL, seed=5)
    group = {2: 32, 3: 64, 4: 128, 8: 32}[bits]
    data = im.write_image(model, bits, group, symmetric=symmetric)
    qm = im.read_image(data)
    for kind, layer, w in ((im.Kind.W2, 1, model.layers[1].w2), (im.Kind.TOK_EMB, 0, model.tok_emb),
                           (im.Kind.CLASSIFIER, 0, model.classifier)):
        t = qm.tensor(kind, layer)
        assert (t.bits, t.group_size, t.scheme) == (bits, group, 0 if symmetric else 1)
        assert (t.zeros is None) == symmetric
        step = np.repeat(t.scales, group, axis=1)[:, : t.cols]
        assert np.all(np.abs(t.dense() - w) <= step * np.float32(0.5 + 1e-4))
    # writer and reader agree on the sizes, and nothing but alignment padding is unaccounted for
    payload = sum(t.stored_bytes for t in qm.tensors.values())
    table = im.HEADER_SIZE + len(qm.tensors) * im.ENTRY.size
    assert 0 <= qm.size - table - payload < 4 * 2 * len(qm.tensors)


def test_mixed_precision_recipe():
    model = generate_model(SMALL, seed=2)
    recipe = im.QuantRecipe.make(3, 64, symmetric=False, overrides={
        "tok_emb": 8, "classifier": im.QuantScheme(8, 32, True), "w2": 4, "w2.0": 2})
    assert recipe.label == "q3g64a+classifier=q8g32+tok_emb=q8g64a+w2=q4g64a+w2.0=q2g64a"
    qm = im.read_image(im.write_image(model, recipe=recipe))

    def enc(kind: im.Kind, layer: int = 0) -> tuple[int, int, int]:
        t = qm.tensor(kind, layer)
        return t.bits, t.group_size, t.scheme

    assert enc(im.Kind.TOK_EMB) == (8, 64, 1)
    assert enc(im.Kind.CLASSIFIER) == (8, 32, 0)
    assert enc(im.Kind.W2, 0) == (2, 64, 1) and enc(im.Kind.W2, 1) == (4, 64, 1)
    assert enc(im.Kind.WQ, 1) == (3, 64, 1)
    assert enc(im.Kind.ATTN_NORM, 1) == (32, 0, 0)
    # the keyword form is the same recipe
    same = im.write_image(model, 3, 64, symmetric=False, overrides=dict(recipe.overrides))
    assert same == im.write_image(model, recipe=recipe)


def test_recipe_parse_and_errors():
    r = im.QuantRecipe.parse("4, tok_emb=8, w1.2=2", group_size=64, symmetric=False)
    assert r.default == im.QuantScheme(4, 64, False)
    assert r.for_tensor(im.Kind.W1, 2) == im.QuantScheme(2, 64, False)
    assert r.for_tensor(im.Kind.W1, 1) == r.default
    assert im.QuantRecipe.parse("8").is_uniform
    for bad in ("", "tok_emb=8", "4,tok_emb", "x"):
        with pytest.raises(ValueError):
            im.QuantRecipe.parse(bad)
    with pytest.raises(ValueError, match="unknown tensor"):
        im.QuantRecipe.make(4, overrides={"attn_norm": 8})
    with pytest.raises(ValueError, match="unsupported quantization"):
        im.QuantRecipe.make(4, overrides={"wq": 5})
    with pytest.raises(ValueError, match="unsupported quantization"):
        im.QuantScheme(4, 16)
    # a shared classifier is the embedding: either name sets it, conflicting names are an error
    shared = generate_model(ModelConfig(dim=32, hidden_dim=72, n_layers=1, n_heads=4, n_kv_heads=2,
                                        vocab_size=300, seq_len=16), seed=1)
    qm = im.read_image(im.write_image(shared, 4, overrides={"classifier": 8}))
    assert qm.tensor(im.Kind.TOK_EMB).bits == 8 and qm.tensor(im.Kind.CLASSIFIER).bits == 8
    with pytest.raises(ValueError, match="shared classifier"):
        im.write_image(shared, 4, overrides={"classifier": 8, "tok_emb": 4})


def test_reader_rejects_bad_schemes():
    data = bytearray(im.write_image(generate_model(SMALL, seed=1), 3, 32, symmetric=False))
    entry = im.HEADER_SIZE + im.ENTRY.size  # ATTN_NORM of layer 0 (a float vector)
    assert data[im.HEADER_SIZE] == im.Kind.TOK_EMB and data[entry] == im.Kind.ATTN_NORM
    bad = bytearray(data)
    bad[entry + 2] = 1                        # a vector cannot be asymmetric
    with pytest.raises(im.ImageError, match="scheme 1") as e:
        im.read_image(im.fix_crc(bytes(bad)))
    assert e.value.code == im.E_QUANT
    bad = bytearray(data)
    bad[im.HEADER_SIZE + 2] = 0               # asymmetric tensor relabelled symmetric: zero points left over
    with pytest.raises(im.ImageError, match="sizes") as e:
        im.read_image(im.fix_crc(bytes(bad)))
    assert e.value.code == im.E_CORRUPT
