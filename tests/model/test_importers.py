"""Importers: llama2.c checkpoints and tokenizer.bin, the twin's .npz, Hugging Face directories and ONNX
graphs into FloatModel; truncated/corrupt/unsupported files become ModelFileError."""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twin.model.importers import ModelFileError, detect_format, load_model
from twin.model.importers.hf import permute_rope, unpermute_rope
from twin.model.importers.llama2c import write_llama2c
from twin.model.importers.npz import load_npz, save_npz
from twin.model.modelgen import ModelConfig, generate_model
from twin.model.reference import FloatReference
from twin.model.tokenizer import TokenizerError, byte_level_tokenizer, load_llama2c_tokenizer

SMALL = ModelConfig(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, seq_len=16,
                    name="small")
UNSHARED = ModelConfig(**{**SMALL.__dict__, "shared_classifier": False, "name": "small-u"})


def _logits(model, tokens):
    ref = FloatReference(model)
    return np.stack([ref.forward(t, p) for p, t in enumerate(tokens)])


def _same_weights(a, b):
    assert dataclasses.replace(a.config, name=b.config.name) == b.config
    np.testing.assert_array_equal(a.tok_emb, b.tok_emb)
    np.testing.assert_array_equal(a.final_norm, b.final_norm)
    np.testing.assert_allclose(a.rope_freq, b.rope_freq, rtol=1e-6)
    assert (a.classifier is None) == (b.classifier is None)
    if a.classifier is not None:
        np.testing.assert_array_equal(a.classifier, b.classifier)
    for la, lb in zip(a.layers, b.layers, strict=True):
        for f in la.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(la, f), getattr(lb, f))


# ------------------------------------------------------------------ llama2.c


@pytest.mark.parametrize("config", [SMALL, UNSHARED])
def test_llama2c_round_trip(tmp_path, config):
    m = generate_model(config, seed=3)
    path = tmp_path / "model.bin"
    path.write_bytes(write_llama2c(m))
    assert detect_format(path) == "llama2c"
    back = load_model(path)
    _same_weights(m, back)
    np.testing.assert_allclose(_logits(back, [1, 5, 7, 2]), _logits(m, [1, 5, 7, 2]), rtol=0, atol=0)


def test_llama2c_header_layout_matches_llama2c(tmp_path):
    """7 int32 then tok_emb: a negative vocab marks the unshared classifier at the end."""
    m = generate_model(UNSHARED, seed=1)
    data = write_llama2c(m)
    assert struct.unpack_from("<7i", data) == (32, 48, 2, 4, 2, -40, 16)
    assert np.frombuffer(data, "<f4", count=32, offset=28).tolist() == m.tok_emb[0].tolist()
    assert np.frombuffer(data, "<f4", offset=len(data) - 4 * 40 * 32).reshape(40, 32).tolist() == m.classifier.tolist()


_L2C = write_llama2c(generate_model(SMALL, seed=2))


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(_L2C) - 1))
def test_llama2c_truncated_anywhere_is_a_clear_error(tmp_path_factory, cut):
    path = tmp_path_factory.mktemp("t") / "m.bin"
    path.write_bytes(_L2C[:cut])
    with pytest.raises(ModelFileError, match="truncated|implausible|inconsistent"):
        load_model(path)


@pytest.mark.parametrize("header, message", [
    ((32, 48, 2, 4, 2, 40, 10**9), "implausible"),
    ((32, 48, 2, 5, 2, 40, 16), "inconsistent shape"),
    ((0, 48, 2, 4, 2, 40, 16), "implausible"),
    ((-5, 48, 2, 4, 2, 40, 16), "implausible"),
])
def test_llama2c_corrupt_header(tmp_path, header, message):
    path = tmp_path / "m.bin"
    path.write_bytes(struct.pack("<7i", *header) + _L2C[28:])
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_llama2c_trailing_bytes_and_new_versions_are_refused(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(_L2C + b"\0\0\0\0")
    with pytest.raises(ModelFileError, match="longer than its header"):
        load_model(path)
    path.write_bytes(struct.pack("<Ii", 0x616B3432, 2) + bytes(300))
    with pytest.raises(ModelFileError, match="version 2 is not supported"):
        load_model(path)


def _llama2c_tokenizer_bytes() -> bytes:
    pieces = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    pieces += [b" t", b"he", b" the", b" a", b"nd", b" and", b"\xc3\xa9"]
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]
    return struct.pack("<i", max(map(len, pieces))) + b"".join(
        struct.pack("<fi", s, len(p)) + p for p, s in zip(pieces, scores, strict=True))


def test_llama2c_tokenizer_encode_decode_like_run_c(tmp_path):
    tok = load_llama2c_tokenizer(_llama2c_tokenizer_bytes(), 266)
    ids = tok.encode("the and café")
    # dummy prefix " the" -> one piece; " and" -> one piece; é is a piece; other bytes fall back to <0xXX>
    assert ids[0] == 1 and ids[1] == 261 and ids[2] == 264
    assert tok.decode(ids) == "the and café"
    assert tok.decode(tok.encode("\x01 x")) == "\x01 x"
    # attached to a checkpoint found beside it
    cfg = ModelConfig(**{**SMALL.__dict__, "vocab_size": 266})
    (tmp_path / "model.bin").write_bytes(write_llama2c(generate_model(cfg)))
    (tmp_path / "tokenizer.bin").write_bytes(_llama2c_tokenizer_bytes())
    assert load_model(tmp_path / "model.bin").tokenizer.decode(ids) == "the and café"


@pytest.mark.parametrize("cut", [0, 3, 4, 10, 50, 2000, len(_llama2c_tokenizer_bytes()) - 1])
def test_llama2c_tokenizer_truncated(tmp_path, cut):
    with pytest.raises(TokenizerError):
        load_llama2c_tokenizer(_llama2c_tokenizer_bytes()[:cut], 266)
    cfg = ModelConfig(**{**SMALL.__dict__, "vocab_size": 266})
    (tmp_path / "model.bin").write_bytes(write_llama2c(generate_model(cfg)))
    (tmp_path / "tokenizer.bin").write_bytes(_llama2c_tokenizer_bytes()[:cut])
    with pytest.raises(ModelFileError, match="tokenizer"):
        load_model(tmp_path / "model.bin")


# ---------------------------------------------------------------------- npz


def test_npz_round_trip_with_tokenizer(tmp_path):
    m = generate_model(UNSHARED, seed=4)
    m.tokenizer = byte_level_tokenizer(40)
    save_npz(m, tmp_path / "m.npz", dtype=np.float32)
    back = load_model(tmp_path / "m.npz")
    _same_weights(m, back)
    assert back.tokenizer.encode("hi") == [0, ord("h") + 3, ord("i") + 3]


def test_npz_truncated_is_a_clear_error(tmp_path):
    m = generate_model(SMALL, seed=4)
    save_npz(m, tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    for cut in range(0, len(data), max(1, len(data) // 40)):
        (tmp_path / "t.npz").write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            load_npz(tmp_path / "t.npz")


def test_twin_image_is_not_imported(tmp_path):
    (tmp_path / "m.twlm").write_bytes(b"TWLM" + bytes(100))
    with pytest.raises(ModelFileError, match="quantized twin image"):
        load_model(tmp_path / "m.twlm")


# ------------------------------------------------------------- Hugging Face


def test_rope_permutation_is_inverted():
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    np.testing.assert_array_equal(unpermute_rope(permute_rope(w, 2), 2), w)


def _hf_dir(tmp_path, model, arch="LlamaForCausalLM", dtype=np.float32, **cfg_extra):
    """An HF-layout directory written without transformers (safetensors only)."""
    st_np = pytest.importorskip("safetensors.numpy", reason="safetensors not installed (parity extra)")
    c = model.config
    state = {"model.embed_tokens.weight": model.tok_emb, "model.norm.weight": model.final_norm}
    if model.classifier is not None:
        state["lm_head.weight"] = model.classifier
    names = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
             "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj", "attn_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
    for i, layer in enumerate(model.layers):
        for f, n in names.items():
            w = getattr(layer, f)
            if f in ("wq", "wk"):
                w = permute_rope(w, c.n_heads if f == "wq" else c.n_kv_heads)
            state[f"model.layers.{i}.{n}.weight"] = w
    st_np.save_file({k: np.ascontiguousarray(v, dtype=dtype) for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    cfg = {"architectures": [arch], "model_type": "llama", "hidden_size": c.dim, "intermediate_size": c.hidden_dim,
           "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
           "vocab_size": c.vocab_size, "max_position_embeddings": c.seq_len, "rms_norm_eps": c.norm_eps,
           "tie_word_embeddings": c.shared_classifier, "hidden_act": "silu", **cfg_extra}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_hf_safetensors_round_trip(tmp_path):
    m = generate_model(UNSHARED, seed=5)
    back = load_model(_hf_dir(tmp_path, m))
    np.testing.assert_allclose(_logits(back, [3, 1, 4, 1, 5]), _logits(m, [3, 1, 4, 1, 5]), rtol=1e-12, atol=1e-12)
    for la, lb in zip(m.layers, back.layers, strict=True):
        np.testing.assert_array_equal(la.wq, lb.wq)


@pytest.mark.parametrize("extra, message", [
    ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "unsupported architecture.*Mistral"),
    ({"hidden_act": "gelu"}, "unsupported activation 'gelu'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "unsupported RoPE scaling rope_scaling.rope_type 'dynamic'"),
    ({"architectures": "LlamaForCausalLM"}, r"invalid architectures 'LlamaForCausalLM' \(need a list"),
    ({"num_attention_heads": 0}, "invalid num_attention_heads 0 "),
    ({"num_attention_heads": -4}, "invalid num_attention_heads -4 "),
    ({"hidden_size": 0}, "invalid hidden_size 0 "),
    ({"num_key_value_heads": 0}, "invalid num_key_value_heads 0 "),
    ({"num_hidden_layers": -1}, "invalid num_hidden_layers -1 "),
    ({"intermediate_size": 12.5}, "invalid intermediate_size 12.5 "),
    ({"vocab_size": "512"}, "invalid vocab_size '512' "),
    ({"head_dim": 0}, "invalid head_dim 0 "),
    ({"rms_norm_eps": 0}, "unreadable rms_norm_eps 0 "),
])
def test_hf_unsupported_configs_are_named(tmp_path, extra, message):
    d = _hf_dir(tmp_path, generate_model(SMALL), **extra)
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(d)
    assert "\n" not in str(info.value)


def test_hf_unsupported_dtype_is_named(tmp_path):
    d = _hf_dir(tmp_path, generate_model(SMALL), dtype=np.int8)
    with pytest.raises(ModelFileError, match="unsupported dtype I8"):
        load_model(d)


def test_hf_bf16_is_widened(tmp_path):
    m = generate_model(SMALL, seed=6)
    d = _hf_dir(tmp_path, m, dtype=np.float16)
    back = load_model(d)
    np.testing.assert_allclose(back.tok_emb, m.tok_emb, atol=1e-3)


def test_hf_safetensors_truncated_anywhere(tmp_path):
    d = _hf_dir(tmp_path, generate_model(SMALL, seed=7))
    data = (d / "model.safetensors").read_bytes()
    for cut in sorted({*range(0, 64, 7), *range(64, len(data), max(1, len(data) // 50)), len(data) - 1}):
        (d / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            load_model(d)


def test_hf_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                       "hidden_size": 32, "intermediate_size": 48,
                                                       "num_hidden_layers": 1, "num_attention_heads": 4,
                                                       "vocab_size": 40}))
    with pytest.raises(ModelFileError, match="no model.safetensors"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="not readable JSON"):
        load_model(tmp_path)


# --------------------------------------------------------------------- ONNX


def test_onnx_garbage_and_truncation_are_clear_errors(tmp_path):
    path = tmp_path / "m.onnx"
    for data in (b"", b"\x08\x07garbage\xff\xff\xff", bytes(range(256)) * 4):
        path.write_bytes(data)
        with pytest.raises(ModelFileError):
            load_model(path)


def test_onnx_unsupported_op_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    emb = numpy_helper.from_array(np.zeros((10, 8), np.float32), "emb")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["h"]), helper.make_node("Gelu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8])], [emb])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    with pytest.raises(ModelFileError, match="unsupported op Gelu"):
        load_model(tmp_path / "m.onnx")


def test_hf_real_bf16_file_is_widened(tmp_path):
    """numpy has no bfloat16: the importer widens the raw bits itself."""
    pytest.importorskip("safetensors", reason="safetensors not installed (parity extra)")
    m = generate_model(SMALL, seed=8)
    d = _hf_dir(tmp_path, m)
    from safetensors.numpy import load_file

    state = load_file(str(d / "model.safetensors"))
    header, body, off = {}, [], 0
    for name, a in state.items():
        raw = (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        body.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"".join(body))
    back = load_model(d)
    np.testing.assert_allclose(back.tok_emb, m.tok_emb, rtol=2 ** -7, atol=1e-6)


@settings(max_examples=80, deadline=None)
@given(text=st.text(max_size=60))
def test_bpe_tokenizer_round_trips_any_text(text):
    from twin.model.tokenizer import Tokenizer

    pieces = [b"", b"", b""] + [bytes([b]) for b in range(256)] + [b" t", b"he", b" the", b"\n\n", b"in", b"ing"]
    tok = Tokenizer(pieces=pieces, scores=[0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0],
                    byte_ids=list(range(3, 259)), special=frozenset({0, 1, 2}))
    ids = tok.encode(text)
    assert ids[0] == 0 and all(0 <= i < len(pieces) for i in ids)
    assert tok.decode(ids) == text
    assert tok.encode(" the thing", bos=False) == [261, 259, 3 + ord("h"), 264]


def test_llama2c_dim_8_is_not_mistaken_for_onnx(tmp_path):
    cfg = ModelConfig(dim=8, hidden_dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=20, seq_len=8)
    path = tmp_path / "tiny.bin"
    path.write_bytes(write_llama2c(generate_model(cfg)))
    assert detect_format(path) == "llama2c"
    assert load_model(path).config.dim == 8
