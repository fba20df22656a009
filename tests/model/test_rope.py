"""RoPE θ and scaling survive every import path (issue 8): checkpoints saved by the installed
transformers (which writes ``rope_parameters``, not ``rope_theta``), transformers 4.x-style configs
(top-level ``rope_theta`` + ``rope_scaling``), ONNX exports, llama2.c tables and the twin's .npz, all at
a non-default θ; the truth is transformers' / onnxruntime's own output, never the importer's formula.
Schemes the image cannot carry exactly are refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twin.model.importers import ModelFileError, load_model
from twin.model.modelgen import rope_frequencies
from twin.model.reference import FloatReference

torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install -e '.[parity]')")
transformers = pytest.importorskip("transformers", reason="transformers not installed (parity extra)")

TOKENS = [1, 17, 42, 5, 99, 3, 64, 7, 23, 88, 0, 12, 31, 77, 2, 50]
TOL = 1e-4
LLAMA3 = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
LINEAR = {"rope_type": "linear", "rope_theta": 5e5, "factor": 4.0}
PLAIN = {"rope_type": "default", "rope_theta": 5e5}


def _logits(model, tokens=TOKENS) -> np.ndarray:
    ref = FloatReference(model)
    return np.stack([ref.forward(t, p) for p, t in enumerate(tokens)])


def _rel_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _hf_model(rope_parameters, kv_heads=2, seed=0):
    """A tiny transformers Llama whose attention is sharp enough (large q/k) that RoPE shows in the logits."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=32,
                                   rms_norm_eps=1e-5, rope_parameters=dict(rope_parameters),
                                   tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "q_proj" in name or "k_proj" in name:
                p.mul_(12.0)
    return hf


def _hf_logits(hf) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor([TOKENS])).logits[0].double().numpy()


def _with_freq(model, freq):
    import dataclasses
    return dataclasses.replace(model, rope_freq=np.asarray(freq, dtype=np.float32))


@pytest.mark.parametrize("params", [PLAIN, LINEAR, LLAMA3], ids=["default", "linear", "llama3"])
def test_transformers_checkpoint_keeps_theta_and_scaling(tmp_path, params):
    hf = _hf_model(params)
    hf.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in saved and saved["rope_parameters"]["rope_type"] == params["rope_type"]
    model = load_model(tmp_path)
    assert model.config.rope_theta == 5e5
    theirs = _hf_logits(hf)
    err = _rel_error(_logits(model), theirs)
    # the test can fail: the same weights with θ 10000 (what the importer read before), or θ 5e5 without
    # the scaling, are far off transformers' logits
    wrong = [_rel_error(_logits(_with_freq(model, rope_frequencies(16, 1e4))), theirs)]
    if params is not PLAIN:
        wrong.append(_rel_error(_logits(_with_freq(model, rope_frequencies(16, 5e5))), theirs))
    print(f"{params['rope_type']}: relative error {err:.2e}; with θ 10000 / unscaled {wrong}")
    assert err <= TOL < min(wrong) / 10


@pytest.mark.parametrize("params", [LINEAR, LLAMA3, {**LLAMA3, "factor": 3.0, "original_max_position_embeddings": 24}],
                         ids=["linear", "llama3", "llama3-b"])
def test_frequencies_are_transformers_rope_init_functions(tmp_path, params):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = _hf_model(params)
    hf.save_pretrained(tmp_path)
    inv, attention_factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf.config, "cpu")
    assert attention_factor == 1.0
    np.testing.assert_allclose(load_model(tmp_path).rope_freq, inv.numpy(), rtol=2e-6)
    np.testing.assert_allclose(hf.model.rotary_emb.inv_freq.numpy(), inv.numpy(), rtol=1e-7)


@pytest.mark.parametrize("scaling", [None, {"type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}],
                         ids=["theta-only", "linear", "llama3"])
def test_transformers_4_style_config(tmp_path, scaling):
    """Top-level rope_theta (+ rope_scaling, with 'type' or 'rope_type') as transformers 4.x wrote them:
    the installed transformers reads that config too, and its logits are the truth."""
    _hf_model(PLAIN).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters")
    cfg["rope_theta"] = 250000.0
    if scaling is not None:
        cfg["rope_scaling"] = scaling
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.rope_parameters["rope_theta"] == 250000.0
    model = load_model(tmp_path)
    assert model.config.rope_theta == 250000.0
    np.testing.assert_allclose(model.rope_freq, hf.model.rotary_emb.inv_freq.numpy(), rtol=2e-6)
    assert _rel_error(_logits(model), _hf_logits(hf)) <= TOL


def _config_dir(tmp_path, **rope):
    _hf_model(PLAIN).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters")
    cfg.update(rope)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_nested_per_layer_type_parameters(tmp_path):
    same = {"full_attention": dict(LINEAR), "sliding_attention": dict(LINEAR)}
    flat = load_model(_config_dir(tmp_path / "flat", rope_parameters=dict(LINEAR)))
    nested = load_model(_config_dir(tmp_path / "nested", rope_parameters=same))
    assert nested.config.rope_theta == 5e5
    np.testing.assert_array_equal(nested.rope_freq, flat.rope_freq)
    differ = {"full_attention": dict(LINEAR), "sliding_attention": dict(PLAIN)}
    with pytest.raises(ModelFileError, match="'full_attention' and 'sliding_attention' different RoPE"):
        load_model(_config_dir(tmp_path / "differ", rope_parameters=differ))


@pytest.mark.parametrize("rope, message", [
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 5e5, "factor": 2.0}},
     r"unsupported RoPE scaling rope_parameters.rope_type 'dynamic'; supported: default .*linear and llama3"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
                          "original_max_position_embeddings": 16}}, r"rope_type 'yarn'; supported"),
    ({"rope_scaling": {"type": "longrope", "long_factor": [1.0] * 8, "short_factor": [1.0] * 8}},
     r"rope_scaling.rope_type 'longrope'; supported"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "5e5"}}, r"unreadable rope_parameters.rope_theta '5e5'"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": None}}, r"unreadable rope_parameters.rope_theta None"),
    ({"rope_theta": -1}, r"unreadable rope_theta -1"),
    ({"rope_parameters": "default"}, r"unreadable rope_parameters 'default'"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 5e5}}, r"rope_type 'linear' has no factor"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 5e5, "factor": 0}}, r"unreadable rope_parameters.factor 0"),
    ({"rope_parameters": {**PLAIN, "partial_rotary_factor": 0.5}}, r"unsupported partial_rotary_factor 0.5"),
])
def test_unsupported_or_unreadable_rope_is_named(tmp_path, rope, message):
    d = _config_dir(tmp_path, **rope)
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(d)
    assert "\n" not in str(info.value)


def test_npz_keeps_scaled_frequencies(tmp_path):
    from twin.model.importers.npz import save_npz

    hf = _hf_model(LLAMA3)
    hf.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    save_npz(model, tmp_path / "m.npz", dtype=np.float32)
    back = load_model(tmp_path / "m.npz")
    assert back.config.rope_theta == 5e5
    np.testing.assert_array_equal(back.rope_freq, model.rope_freq)
    assert _rel_error(_logits(back), _hf_logits(hf)) <= TOL


# --------------------------------------------------------------------- ONNX


class _Logits(torch.nn.Module):
    """transformers' Llama as an exportable function of the token ids (an all-ones attention mask keeps
    the tracer off the packed-sequence detection, whose aten::diff TorchScript cannot export)."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, ids):
        return self.hf(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                            "ignore:Converting a tensor to a Python boolean")
@pytest.mark.parametrize("params, dynamo", [(PLAIN, False), (LINEAR, False), (LLAMA3, False), (LLAMA3, True)],
                         ids=["default", "linear", "llama3", "llama3-dynamo"])
def test_onnx_export_of_transformers_llama_keeps_rope(tmp_path, params, dynamo):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (parity extra)")
    if dynamo:
        pytest.importorskip("onnxscript", reason="onnxscript not installed (the torch.export-based exporter needs it)")
    hf = _hf_model(params, kv_heads=4)
    ids = torch.tensor([TOKENS])
    path = tmp_path / "llama.onnx"
    torch.onnx.export(_Logits(hf).eval(), (ids,), str(path), input_names=["ids"], output_names=["logits"],
                      dynamo=dynamo, verbose=False)
    model = load_model(path)
    assert model.config.rope_theta == 5e5
    np.testing.assert_allclose(model.rope_freq, hf.model.rotary_emb.inv_freq.numpy(), rtol=1e-5)
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"ids": ids.numpy()})[0][0].astype(np.float64)
    err = _rel_error(_logits(model), theirs)
    wrong = _rel_error(_logits(_with_freq(model, rope_frequencies(16, 1e4))), theirs)
    print(f"onnx {params['rope_type']} (dynamo={dynamo}): relative error {err:.2e}, with θ 10000 {wrong:.2e}")
    assert err <= TOL < wrong / 10


def _torchscript_export(tmp_path, params=PLAIN):
    hf = _hf_model(params, kv_heads=4)
    path = tmp_path / "llama.onnx"
    torch.onnx.export(_Logits(hf).eval(), (torch.tensor([TOKENS]),), str(path), dynamo=False)
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                            "ignore:Converting a tensor to a Python boolean")
def test_onnx_unreadable_or_missing_rope_is_refused(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    from twin.model.importers.onnx_import import load_onnx

    path = _torchscript_export(tmp_path)
    m = onnx.load(str(path))
    trig = [n for n in m.graph.node if n.op_type in ("Cos", "Sin")]
    table = {n.input[0] for n in trig}
    assert len(table) == 1
    (name,) = table
    const = next(n for n in m.graph.node if n.output[0] == name)
    angle = numpy_helper.to_array(const.attribute[0].t)
    assert angle.shape == (1, len(TOKENS), 16) and not angle[0, 0].any()

    # positions 3, 4, ... (a table that is not t * inv_freq from 0) is refused, never read as some θ
    shifted = onnx.load(str(path))
    c = next(n for n in shifted.graph.node if n.output[0] == name)
    c.attribute[0].t.CopyFrom(numpy_helper.from_array((angle / np.arange(len(TOKENS))[None, :, None].clip(1)
                                                       * (3 + np.arange(len(TOKENS)))[None, :, None]
                                                       ).astype(np.float32), c.attribute[0].t.name))
    onnx.save(shifted, str(tmp_path / "shifted.onnx"))
    with pytest.raises(ModelFileError, match=r"constant table \(1, 16, 16\) feeding (Cos|Sin).*cannot read the RoPE"):
        load_model(tmp_path / "shifted.onnx")

    # angles computed from something that is neither a table nor an inv_freq: refused unless θ is given
    hidden = onnx.load(str(path))
    zero = helper.make_node("Constant", [], ["zero_angle"], value=numpy_helper.from_array(np.zeros(1, np.float32)))
    add = helper.make_node("Add", [name, "zero_angle"], ["angle_plus_zero"])
    for n in hidden.graph.node:
        if n.op_type in ("Cos", "Sin"):
            n.input[0] = "angle_plus_zero"
    at = next(i for i, n in enumerate(hidden.graph.node) if n.output[0] == name) + 1
    hidden.graph.node.insert(at, add)
    hidden.graph.node.insert(at, zero)
    onnx.save(hidden, str(tmp_path / "hidden.onnx"))
    with pytest.raises(ModelFileError, match="cannot read the RoPE frequencies off the graph.*pass rope_theta"):
        load_model(tmp_path / "hidden.onnx")
    given = load_onnx(tmp_path / "hidden.onnx", rope_theta=5e5)
    assert given.config.rope_theta == 5e5
    np.testing.assert_array_equal(given.rope_freq, load_model(path).rope_freq)


# ------------------------------------------------------------------ llama2.c


def _llama2c_tables(dim: int, end: int, theta: float):
    """llama2.c's model.py precompute_freqs_cis, verbatim: what export.py writes after the final norm."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end, device=freqs.device)
    freqs = torch.outer(t, freqs).float()
    return torch.cos(freqs).numpy(), torch.sin(freqs).numpy()


def _with_tables(blob: bytes, model, cos, sin) -> bytes:
    c = model.config
    n = c.seq_len * c.head_size // 2 * 4
    tail = c.vocab_size * c.dim * 4 if model.classifier is not None else 0
    start = len(blob) - tail - 2 * n
    return blob[:start] + cos.astype("<f4").tobytes() + sin.astype("<f4").tobytes() + blob[start + 2 * n:]


@pytest.mark.parametrize("theta", [1e4, 5e5])
def test_llama2c_tables_carry_theta(tmp_path, theta):
    from twin.model.importers.llama2c import write_llama2c

    hf = _hf_model({"rope_type": "default", "rope_theta": theta})
    hf.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    cos, sin = _llama2c_tables(model.config.head_size, model.config.seq_len, theta)
    (tmp_path / "m.bin").write_bytes(_with_tables(write_llama2c(model), model, cos, sin))
    back = load_model(tmp_path / "m.bin")
    assert back.config.rope_theta == theta
    np.testing.assert_array_equal(back.rope_freq, rope_frequencies(model.config.head_size, theta))
    assert _rel_error(_logits(back), _hf_logits(hf)) <= TOL


def test_llama2c_scaled_tables_and_corrupt_tables(tmp_path):
    from twin.model.importers.llama2c import write_llama2c

    hf = _hf_model(LLAMA3)
    hf.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    (tmp_path / "m.bin").write_bytes(write_llama2c(model))
    back = load_model(tmp_path / "m.bin")
    np.testing.assert_allclose(back.rope_freq, hf.model.rotary_emb.inv_freq.numpy(), rtol=1e-5)
    assert _rel_error(_logits(back), _hf_logits(hf)) <= TOL
    c = model.config
    zeros = np.zeros((c.seq_len, c.head_size // 2))
    (tmp_path / "z.bin").write_bytes(_with_tables(write_llama2c(model), model, zeros, zeros))
    with pytest.raises(ModelFileError, match=r"RoPE tables \(rope_real/rope_imag, 32 positions\) are not cos/sin"):
        load_model(tmp_path / "z.bin")
