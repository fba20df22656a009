"""llama2.c legacy float32 checkpoints (the ``.bin`` that llama2.c's export.py writes with --version 0,
and that run.c reads) and its tokenizer.bin (or, passed explicitly, any tokenizer file that
twin.model.tokenizer.load_tokenizer reads: a Hugging Face tokenizer.json too).

Layout: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
a negative vocab_size means an unshared classifier), then float32 arrays, each layer-major, matrices
(out_features, in_features): token embedding (vocab, dim); attention RMSNorm weights (layers, dim);
wq (layers, dim, dim); wk, wv (layers, kv_dim, dim); wo (layers, dim, dim); FFN RMSNorm weights
(layers, dim); w1 (layers, hidden, dim); w2 (layers, dim, hidden); w3 (layers, hidden, dim); final
RMSNorm weights (dim); two RoPE tables (seq_len, head_size / 2) that run.c skips; the classifier
(vocab, dim) when unshared. llama2.c's RoPE rotates interleaved pairs, as the twin does; run.c uses
eps 1e-5, and so does this importer. run.c rotates with θ 10000 and skips the tables; the importer reads
the RoPE frequencies off them (export.py writes the model's own: θ 10000 unless the model said otherwise),
so a file whose tables hold another θ (or scaled frequencies) is imported with those, and tables that are
not cos/sin of t × frequency are a ModelFileError, never replaced by 10000.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from twin.model.importers.common import (
    LAYER_FIELDS,
    ModelFileError,
    build_model,
    check_config,
    find_tokenizer,
)
from twin.model.modelgen import FloatModel, ModelConfig, rope_frequencies

HEADER = struct.Struct("<7i")
V1_MAGIC = 0x616B3432   # "ak42": llama2.c's newer export versions


def _layout(c: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    L, d, h, kv = c.n_layers, c.dim, c.hidden_dim, c.kv_dim
    out = [("tok_emb", (c.vocab_size, d)), ("attn_norm", (L, d)), ("wq", (L, d, d)), ("wk", (L, kv, d)),
           ("wv", (L, kv, d)), ("wo", (L, d, d)), ("ffn_norm", (L, d)), ("w1", (L, h, d)), ("w2", (L, d, h)),
           ("w3", (L, h, d)), ("final_norm", (d,)), ("rope_real", (c.seq_len, c.head_size // 2)),
           ("rope_imag", (c.seq_len, c.head_size // 2))]
    if not c.shared_classifier:
        out.append(("classifier", (c.vocab_size, d)))
    return out


def expected_size(c: ModelConfig) -> int:
    return HEADER.size + 4 * sum(int(np.prod(s)) for _, s in _layout(c))


def read_config(data: bytes, where: str) -> ModelConfig:
    if len(data) < HEADER.size:
        raise ModelFileError(f"{where}: truncated llama2.c checkpoint: {len(data)} bytes, the header alone has 28")
    if struct.unpack_from("<I", data)[0] == V1_MAGIC:
        version = struct.unpack_from("<i", data, 4)[0]
        raise ModelFileError(f"{where}: llama2.c export version {version} is not supported; "
                             "export the legacy float32 format (export.py --version 0)")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = HEADER.unpack_from(data)
    c = ModelConfig(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                    vocab_size=abs(vocab), seq_len=seq_len, shared_classifier=vocab > 0, name=Path(where).stem[:16])
    check_config(c, where)
    return c


def load_llama2c(path: str | Path, tokenizer: str | Path | None = None) -> FloatModel:
    """A llama2.c legacy checkpoint; the tokenizer is ``tokenizer`` (a tokenizer.bin, a Hugging Face
    tokenizer.json or the twin's tokenizer JSON) or tokenizer.bin beside the file."""
    where = str(path)
    data = Path(path).read_bytes()
    c = read_config(data, where)
    layout = _layout(c)
    expected = expected_size(c)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise ModelFileError(f"{where}: {what}: {len(data)} bytes, a llama2.c checkpoint with this header "
                             f"(dim {c.dim}, {c.n_layers} layers, vocab {c.vocab_size}, seq_len {c.seq_len}) "
                             f"has {expected}")
    flat = np.frombuffer(data, dtype="<f4", offset=HEADER.size)
    arrays, off = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape))
        arrays[name] = flat[off:off + n].reshape(shape)
        off += n

    def get(name: str, layer: int | None) -> np.ndarray:
        return arrays[name] if layer is None else arrays[name][layer]

    theta, rope_freq = _table_frequencies(arrays["rope_real"], arrays["rope_imag"], c.head_size, where)
    c = ModelConfig(**{**c.__dict__, "rope_theta": theta})
    tok = find_tokenizer(tokenizer, Path(path).with_name("tokenizer.bin"), c.vocab_size)
    return build_model(c, get, where, tok, rope_freq=rope_freq)


def _tables(freq: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    ang = np.arange(seq_len)[:, None] * np.asarray(freq, dtype=np.float64)[None, :]
    return np.cos(ang), np.sin(ang)


def _table_frequencies(real: np.ndarray, imag: np.ndarray, head_size: int, where: str) -> tuple[float, np.ndarray]:
    """(θ, frequencies) of the file's RoPE tables: a plain θ's exact frequencies when the tables are its
    cos/sin to float32 precision (θ 10000 for what llama2.c's export.py writes), else the tables' own."""
    from twin.model.importers.rope import describe, freqs_from_cos_sin

    def plain(theta: float) -> bool:   # to float32 precision: export.py computes t × freq in float32
        freq = rope_frequencies(head_size, theta)
        cos, sin = _tables(freq, real.shape[0])
        tol = 1e-5 + 4e-7 * (real.shape[0] - 1) * float(freq[0])
        return max(np.max(np.abs(cos - real)), np.max(np.abs(sin - imag))) <= tol

    if plain(10000.0):
        return 10000.0, rope_frequencies(head_size, 10000.0)
    f = freqs_from_cos_sin(real, imag)
    if f is None:
        raise ModelFileError(f"{where}: the RoPE tables (rope_real/rope_imag, {real.shape[0]} positions) are not "
                             "cos/sin of position × frequency; a corrupt file, or not llama2.c's layout")
    try:
        theta, freq = describe(f, head_size)
    except ValueError as exc:
        raise ModelFileError(f"{where}: the RoPE tables: {exc}") from None
    return (theta, rope_frequencies(head_size, theta)) if plain(theta) else (theta, freq)


def write_llama2c(model: FloatModel) -> bytes:
    """The legacy checkpoint llama2.c's export.py (version 0) writes, for tests and interchange; the RoPE
    tables hold the model's frequencies (run.c rotates with θ 10000 whatever they say)."""
    c = model.config
    vocab = c.vocab_size if model.classifier is None else -c.vocab_size
    parts = [HEADER.pack(c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, vocab, c.seq_len)]
    parts.append(model.tok_emb.astype("<f4").tobytes())
    for f in LAYER_FIELDS:
        parts.extend(getattr(layer, f).astype("<f4").tobytes() for layer in model.layers)
    parts.append(model.final_norm.astype("<f4").tobytes())
    cos, sin = _tables(model.rope_freq, c.seq_len)   # the model's frequencies (run.c itself assumes θ 10000)
    parts += [cos.astype("<f4").tobytes(), sin.astype("<f4").tobytes()]
    if model.classifier is not None:
        parts.append(model.classifier.astype("<f4").tobytes())
    return b"".join(parts)
