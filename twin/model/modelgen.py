"""Float models: the config and weights every importer produces, the deterministic random-weight
generator (architecture sweeps), the built-in trained model, and the byte-level tokenizer fallback.

The default shape is stories260K's (dim 64, 5 layers, 8 heads, 4 KV heads, hidden 172,
vocab 512) with a 64-token context so the KV cache fits a 128 KB microcontroller. The built-in
model (builtin_model) has that shape, trained on Jane Austen's novels (models/README.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from twin.platforms import ROOT

if TYPE_CHECKING:
    from twin.model.tokenizer import Tokenizer

BOS, EOS, PAD = 0, 1, 2
BYTE_OFFSET = 3  # byte b is token b + 3


@dataclass(frozen=True)
class ModelConfig:
    dim: int = 64
    hidden_dim: int = 172
    n_layers: int = 5
    n_heads: int = 8
    n_kv_heads: int = 4
    vocab_size: int = 512
    seq_len: int = 64
    norm_eps: float = 1e-5
    name: str = "twin-260k"
    shared_classifier: bool = True
    rope_theta: float = 10000.0  # rope_freq[i] = rope_theta^(-2i / head_size)

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_size * self.n_kv_heads


@dataclass
class LayerWeights:
    attn_norm: np.ndarray  # (dim,)
    wq: np.ndarray  # (dim, dim)       rows = outputs, cols = inputs
    wk: np.ndarray  # (kv_dim, dim)
    wv: np.ndarray  # (kv_dim, dim)
    wo: np.ndarray  # (dim, dim)
    ffn_norm: np.ndarray  # (dim,)
    w1: np.ndarray  # (hidden, dim)
    w2: np.ndarray  # (dim, hidden)
    w3: np.ndarray  # (hidden, dim)


@dataclass
class FloatModel:
    """A float32 model: weights as (out_features, in_features) matrices."""

    config: ModelConfig
    tok_emb: np.ndarray  # (vocab, dim)
    layers: list[LayerWeights]
    final_norm: np.ndarray  # (dim,)
    rope_freq: np.ndarray  # (head_size / 2,)
    classifier: np.ndarray | None = field(default=None)  # None: shares tok_emb
    tokenizer: Tokenizer | None = field(default=None, compare=False)  # None: byte-level encode/decode

    @property
    def classifier_weights(self) -> np.ndarray:
        return self.tok_emb if self.classifier is None else self.classifier


def rope_frequencies(head_size: int, theta: float = 10000.0) -> np.ndarray:
    """inv_freq[i] = theta^(-2i / head_size), float32."""
    i = np.arange(head_size // 2, dtype=np.float64)
    return (theta ** (-2.0 * i / head_size)).astype(np.float32)


def generate_model(config: ModelConfig | None = None, seed: int = 0) -> FloatModel:
    """Random weights, scaled so activations stay O(1) and sampling stays varied.

    Matrices are N(0, gain^2 / fan_in). The embedding is small and the layer outputs (wo, w2,
    gain 1.2) strong, so the residual stream is not dominated by the token's own embedding
    (otherwise the shared classifier makes a random model repeat its input token forever);
    the final norm's weights (about 3) give logits a standard deviation of about 2.5.
    """
    c = config or ModelConfig()
    if c.dim % c.n_heads or c.n_heads % c.n_kv_heads or c.head_size % 2:
        raise ValueError(f"inconsistent shape: {c}")
    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def norm(scale: float = 1.0) -> np.ndarray:
        return (scale * (1.0 + 0.1 * rng.standard_normal(c.dim))).astype(np.float32)

    tok_emb = (rng.standard_normal((c.vocab_size, c.dim)) * 0.1).astype(np.float32)
    layers = [
        LayerWeights(
            attn_norm=norm(),
            wq=matrix(c.dim, c.dim),
            wk=matrix(c.kv_dim, c.dim),
            wv=matrix(c.kv_dim, c.dim),
            wo=matrix(c.dim, c.dim, 1.2),
            ffn_norm=norm(),
            w1=matrix(c.hidden_dim, c.dim, 1.2),
            w2=matrix(c.dim, c.hidden_dim, 1.2),
            w3=matrix(c.hidden_dim, c.dim, 1.2),
        )
        for _ in range(c.n_layers)
    ]
    classifier = None if c.shared_classifier else matrix(c.vocab_size, c.dim)
    return FloatModel(
        config=c,
        tok_emb=tok_emb,
        layers=layers,
        final_norm=norm(3.0),
        rope_freq=rope_frequencies(c.head_size, c.rope_theta),
        classifier=classifier,
    )


MODELS_DIR = ROOT / "models"
BUILTIN_FILE = MODELS_DIR / "austen-260k.npz"


@functools.cache
def builtin_model() -> FloatModel:
    """The built-in model: the trained 260K-parameter model of models/ (default shape, with its BPE
    tokenizer), loaded once per process. Random-weight models of any shape: generate_model()."""
    from twin.model.importers.npz import load_npz

    return load_npz(BUILTIN_FILE)


# ---------------------------------------------------------------- tokenizer
# The byte-level scheme, used when a model carries no tokenizer (twin.model.tokenizer.Tokenizer otherwise).


def encode_for(model: FloatModel | None, text: str, bos: bool = True) -> list[int]:
    """Token ids of ``text`` with the model's tokenizer, or byte-level without one."""
    tok = model.tokenizer if model is not None else None
    return tok.encode(text, bos=bos) if tok is not None else encode(text, bos=bos)


def decode_for(model: FloatModel | None, ids: list[int]) -> str:
    tok = model.tokenizer if model is not None else None
    return tok.decode(ids) if tok is not None else decode(ids)



def encode(text: str, bos: bool = True) -> list[int]:
    """UTF-8 bytes offset by 3, after BOS."""
    return ([BOS] if bos else []) + [b + BYTE_OFFSET for b in text.encode("utf-8")]


def decode(ids: list[int]) -> str:
    """Inverse of encode(); special tokens vanish, ids above 258 print as "<id>"."""
    out: list[str] = []
    pending = bytearray()
    for i in ids:
        if BYTE_OFFSET <= i < BYTE_OFFSET + 256:
            pending.append(i - BYTE_OFFSET)
            continue
        out.append(pending.decode("utf-8", errors="replace"))
        pending.clear()
        if i >= BYTE_OFFSET + 256:
            out.append(f"<{i}>")
    out.append(pending.decode("utf-8", errors="replace"))
    return "".join(out)
