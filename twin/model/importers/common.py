"""What every importer shares: the error type and checks that turn arrays into a FloatModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twin.model.modelgen import FloatModel, LayerWeights, ModelConfig


class ModelFileError(ValueError):
    """A model file that cannot be imported: truncated, corrupt, or of an unsupported kind.
    The message names the file and what is wrong (the architecture, op or dtype when unsupported)."""


LAYER_FIELDS = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")


def check_config(c: ModelConfig, where: str) -> None:
    dims = (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len)
    if any(not isinstance(d, int) or d <= 0 or d > 1 << 20 for d in dims):
        raise ModelFileError(f"{where}: implausible dimensions {dims} (corrupt file?)")
    if c.dim % c.n_heads or c.n_heads % c.n_kv_heads or c.head_size % 2:
        raise ModelFileError(f"{where}: inconsistent shape: dim {c.dim}, {c.n_heads} heads, "
                             f"{c.n_kv_heads} KV heads (need dim % heads == 0, heads % kv_heads == 0, even head size)")
    if not 0 < c.norm_eps < 1 or not np.isfinite(c.rope_theta) or c.rope_theta <= 1:
        raise ModelFileError(f"{where}: implausible norm_eps {c.norm_eps} or rope_theta {c.rope_theta}")


def expected_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {"attn_norm": (c.dim,), "wq": (c.dim, c.dim), "wk": (c.kv_dim, c.dim), "wv": (c.kv_dim, c.dim),
            "wo": (c.dim, c.dim), "ffn_norm": (c.dim,), "w1": (c.hidden_dim, c.dim),
            "w2": (c.dim, c.hidden_dim), "w3": (c.hidden_dim, c.dim)}


def as_f32(a: object, shape: tuple[int, ...], what: str, where: str) -> np.ndarray:
    """float32 copy of a float array of the given shape; anything else is a ModelFileError."""
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        raise ModelFileError(f"{where}: {what} has unsupported dtype {arr.dtype} (float16/32/64 are supported)")
    if tuple(arr.shape) != tuple(shape):
        raise ModelFileError(f"{where}: {what} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ModelFileError(f"{where}: {what} holds NaN or infinite values (corrupt file?)")
    return out


def build_model(c: ModelConfig, get, where: str, tokenizer=None, rope_freq: np.ndarray | None = None) -> FloatModel:
    """A checked FloatModel from ``get(name, layer)`` -> array (layer None for global tensors):
    names tok_emb, final_norm, classifier (None if shared) and the LAYER_FIELDS. ``rope_freq``: the
    per-pair RoPE frequencies (head_size/2) when they are not plain θ's (scaled RoPE, twin.model.importers.rope)."""
    from twin.model.modelgen import rope_frequencies

    check_config(c, where)
    if rope_freq is None:
        rope_freq = rope_frequencies(c.head_size, c.rope_theta)
    rope_freq = as_f32(rope_freq, (c.head_size // 2,), "RoPE frequencies", where)
    if np.any(rope_freq <= 0):
        raise ModelFileError(f"{where}: RoPE frequencies must be positive")
    shapes = expected_shapes(c)
    layers = []
    for i in range(c.n_layers):
        layers.append(LayerWeights(**{f: as_f32(get(f, i), shapes[f], f"layer {i} {f}", where)
                                      for f in LAYER_FIELDS}))
    tok_emb = as_f32(get("tok_emb", None), (c.vocab_size, c.dim), "token embedding", where)
    classifier = None
    if not c.shared_classifier:
        classifier = as_f32(get("classifier", None), (c.vocab_size, c.dim), "classifier", where)
    return FloatModel(config=c, tok_emb=tok_emb, layers=layers,
                      final_norm=as_f32(get("final_norm", None), (c.dim,), "final norm", where),
                      rope_freq=rope_freq, classifier=classifier,
                      tokenizer=tokenizer)


def find_tokenizer(explicit: str | Path | None, beside: Path | None, vocab_size: int):
    """The model's tokenizer: the ``explicit`` file if given, else ``beside`` if that file exists, else
    None (byte-level). Any tokenizer file kind (twin.model.tokenizer.load_tokenizer); one with more ids than
    the model's vocabulary, or a malformed one, is a ModelFileError naming the file."""
    from twin.model.tokenizer import TokenizerError, load_tokenizer

    path = Path(explicit) if explicit is not None else beside
    if path is None or (explicit is None and not path.is_file()):
        return None
    try:
        return load_tokenizer(path, vocab_size)
    except TokenizerError as exc:
        raise ModelFileError(str(exc)) from None
