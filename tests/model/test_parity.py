"""Parity with code nobody here wrote: the float reference on imported weights gives the logits of
Hugging Face transformers' LlamaForCausalLM and of onnxruntime on a torch.onnx export (relative error
<= 1e-4). Needs the 'parity' extra (torch, transformers, onnxruntime, safetensors); skips without it."""

from __future__ import annotations

import numpy as np
import pytest

from twin.model.importers import load_model
from twin.model.reference import FloatReference

torch = pytest.importorskip("torch", reason="PyTorch not installed (pip install -e '.[parity]')")

TOKENS = [1, 17, 42, 5, 99, 3, 64, 7, 23, 88, 0, 12]


def _reference_logits(model, tokens=TOKENS) -> np.ndarray:
    ref = FloatReference(model)
    return np.stack([ref.forward(t, p) for p, t in enumerate(tokens)])


def _rel_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


@pytest.mark.parametrize("tied, kv_heads, safe", [(False, 2, True), (True, 4, True), (False, 1, False)])
def test_float_reference_equals_transformers_llama(tmp_path, tied, kv_heads, safe):
    transformers = pytest.importorskip("transformers", reason="transformers not installed (parity extra)")
    if safe:
        pytest.importorskip("safetensors", reason="safetensors not installed (parity extra)")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=32,
                                   rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied,
                                   attention_bias=False, mlp_bias=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # norms away from 1 so a mis-assigned norm would show
        for p in hf.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    model = load_model(tmp_path)
    assert model.config.shared_classifier == tied and model.config.n_kv_heads == kv_heads
    with torch.no_grad():
        theirs = hf(torch.tensor([TOKENS])).logits[0].double().numpy()
    err = _rel_error(_reference_logits(model), theirs)
    print(f"transformers parity (tied={tied}, kv_heads={kv_heads}): relative error {err:.2e}")
    assert err <= 1e-4


def _llama_module(vocab, dim, n_layers, n_heads, n_kv, hidden, seq_len, rope="interleaved", tied=False,
                  theta=10000.0):
    """A Llama-style decoder written here (not the twin's code), for torch.onnx.export."""
    from torch import nn
    from torch.nn import functional as F

    hs = dim // n_heads

    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(1.0 + 0.2 * torch.randn(dim))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight

    inv = 1.0 / theta ** (torch.arange(0, hs, 2).double() / hs)
    ang = torch.arange(seq_len).double()[:, None] * inv[None, :]
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()

    def rotate(x, t):
        c, s = cos[:t][None, :, None, :], sin[:t][None, :, None, :]
        if rope == "interleaved":
            x0, x1 = x[..., 0::2], x[..., 1::2]
            return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).flatten(-2)
        x0, x1 = x[..., : hs // 2], x[..., hs // 2:]
        c2, s2 = torch.cat([c, c], -1), torch.cat([s, s], -1)
        return x * c2 + torch.cat([-x1, x0], -1) * s2

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = Norm(), Norm()
            self.q = nn.Linear(dim, dim, bias=False)
            self.k = nn.Linear(dim, n_kv * hs, bias=False)
            self.v = nn.Linear(dim, n_kv * hs, bias=False)
            self.o = nn.Linear(dim, dim, bias=False)
            self.up = nn.Linear(dim, hidden, bias=False)
            self.gate = nn.Linear(dim, hidden, bias=False)
            self.down = nn.Linear(hidden, dim, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            h = self.n1(x)
            v = self.v(h).view(b, t, n_kv, hs)
            k = rotate(self.k(h).view(b, t, n_kv, hs), t)
            q = rotate(self.q(h).view(b, t, n_heads, hs), t)
            k = k.repeat_interleave(n_heads // n_kv, dim=2).transpose(1, 2)
            v = v.repeat_interleave(n_heads // n_kv, dim=2).transpose(1, 2)
            scores = q.transpose(1, 2) @ k.transpose(2, 3) / hs ** 0.5
            mask = torch.triu(torch.full((t, t), float("-inf")), 1)
            a = torch.softmax(scores + mask, -1) @ v
            x = x + self.o(a.transpose(1, 2).reshape(b, t, dim))
            h = self.n2(x)
            return x + self.down(self.up(h) * F.silu(self.gate(h)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, dim)
            self.blocks = nn.ModuleList(Block() for _ in range(n_layers))
            self.norm = Norm()
            self.head = None if tied else nn.Linear(dim, vocab, bias=False)
            self.register_buffer("rope_cos", cos)

        def forward(self, ids):
            x = self.emb(ids)
            for blk in self.blocks:
                x = blk(x)
            x = self.norm(x)
            return x @ self.emb.weight.T if self.head is None else self.head(x)

    return Net().eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("rope, tied, n_kv, dynamo, theta", [
    ("interleaved", True, 2, False, 1e4), ("half", False, 4, False, 1e4), ("half", True, 1, False, 1e4),
    ("interleaved", False, 2, True, 1e4), ("half", True, 2, True, 1e4),
    ("interleaved", False, 2, False, 5e5), ("half", True, 2, False, 5e5), ("half", False, 4, True, 5e5)])
def test_float_reference_equals_onnxruntime(tmp_path, rope, tied, n_kv, dynamo, theta):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (parity extra)")
    if dynamo:
        pytest.importorskip("onnxscript", reason="onnxscript not installed (the torch.export-based exporter needs it)")
    torch.manual_seed(1)
    net = _llama_module(vocab=100, dim=64, n_layers=2, n_heads=4, n_kv=n_kv, hidden=96, seq_len=32, rope=rope,
                        tied=tied, theta=theta)
    ids = torch.tensor([TOKENS])
    path = tmp_path / "decoder.onnx"
    torch.onnx.export(net, (ids,), str(path), input_names=["ids"], output_names=["logits"], dynamo=dynamo,
                      verbose=False)
    model = load_model(path)
    c = model.config
    assert (c.n_heads, c.n_kv_heads, c.n_layers, c.hidden_dim) == (4, n_kv, 2, 96)
    assert c.seq_len in (len(TOKENS), 32)   # the cos table's rows (the tracer may fold its slice)
    assert c.shared_classifier == tied and c.rope_theta == theta and c.norm_eps == 1e-5
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, {"ids": ids.numpy()})[0][0].astype(np.float64)
    err = _rel_error(_reference_logits(model), theirs)
    print(f"onnxruntime parity ({rope}, tied={tied}, dynamo={dynamo}, θ {theta:g}): relative error {err:.2e}")
    assert err <= 1e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_truncated_export_is_a_clear_error(tmp_path):
    from twin.model.importers import ModelFileError

    torch.manual_seed(2)
    net = _llama_module(vocab=50, dim=32, n_layers=1, n_heads=4, n_kv=2, hidden=48, seq_len=16)
    path = tmp_path / "decoder.onnx"
    torch.onnx.export(net, (torch.tensor([[1, 2, 3]]),), str(path), dynamo=False)
    data = path.read_bytes()
    load_model(path)
    cut_path = tmp_path / "cut.onnx"
    for cut in range(1, len(data), max(1, len(data) // 60)):
        cut_path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            load_model(cut_path)
