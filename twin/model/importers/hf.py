"""Hugging Face Llama checkpoints: a directory with config.json and model.safetensors (or a sharded
model.safetensors.index.json), read with the ``safetensors`` package's numpy API; pytorch_model.bin
only through ``torch.load(..., weights_only=True)`` when PyTorch is installed (never an unrestricted
pickle).

HF stores q_proj/k_proj with each head's rows permuted for its "rotate half" RoPE (pair i of a head is
(i, i + head_size/2)); the twin, like llama2.c and Meta's checkpoints, rotates interleaved pairs
(2i, 2i + 1). Un-permuting the rows of q and k per head makes the two formulations give identical
logits (q·k products are unchanged by applying the same row permutation to q and k).

The tokenizer is tokenizer.json beside config.json (with tokenizer_config.json's BOS/EOS settings), run
by Hugging Face's ``tokenizers`` library (twin.model.tokenizer_hf); without one the model is byte-level.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from twin.model.importers.common import ModelFileError, build_model, find_tokenizer
from twin.model.modelgen import FloatModel, ModelConfig

SUPPORTED_ARCH = ("LlamaForCausalLM",)
_NAMES = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
          "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj",
          "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's rotate-half row order -> interleaved pairs (inverse of HF's convert_llama_weights permute)."""
    rows, cols = w.shape
    hs = rows // n_heads
    return w.reshape(n_heads, 2, hs // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def permute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Interleaved pairs -> HF's rotate-half row order (what HF's conversion script does)."""
    rows, cols = w.shape
    hs = rows // n_heads
    return w.reshape(n_heads, hs // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def _dim(cfg: dict, key: str, where: str, default=None) -> int:
    """A positive integer field (null or absent: ``default``); anything else names the field and value."""
    v = cfg.get(key)
    if v is None:
        if default is None:
            raise ModelFileError(f"{where}: missing field {key!r}")
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or not 0 < v <= 1 << 24:
        raise ModelFileError(f"{where}: invalid {key} {v!r} (need a positive integer)")
    return int(v)


def read_hf_config(directory: Path) -> ModelConfig:
    return _read_hf_config(directory)[0]


def _read_hf_config(directory: Path) -> tuple[ModelConfig, np.ndarray]:
    """The config and the per-pair RoPE frequencies (twin.model.importers.rope.hf_rope)."""
    from twin.model.importers.rope import _number, hf_rope

    where = str(directory / "config.json")
    try:
        cfg = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{where}: not readable JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{where}: not a JSON object")
    arch = cfg.get("architectures")
    if arch is not None and (not isinstance(arch, list) or not all(isinstance(a, str) for a in arch)):
        raise ModelFileError(f"{where}: invalid architectures {arch!r} (need a list of class names, "
                             f'e.g. ["LlamaForCausalLM"])')
    arch = arch or [cfg.get("model_type")]
    if cfg.get("model_type") != "llama" or not any(a in SUPPORTED_ARCH for a in arch):
        raise ModelFileError(f"{where}: unsupported architecture {arch} (model_type {cfg.get('model_type')!r}); "
                             f"supported: {', '.join(SUPPORTED_ARCH)}")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ModelFileError(f"{where}: unsupported activation {act!r} (only silu / SwiGLU)")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ModelFileError(f"{where}: unsupported {key}=true (the twin's layers have no biases)")
    dim, heads = _dim(cfg, "hidden_size", where), _dim(cfg, "num_attention_heads", where)
    head_dim = _dim(cfg, "head_dim", where, dim // heads)
    if head_dim * heads != dim:
        raise ModelFileError(f"{where}: unsupported head_dim {head_dim} != hidden_size {dim} / "
                             f"num_attention_heads {heads}")
    eps = cfg.get("rms_norm_eps", 1e-6)
    c = ModelConfig(
        dim=dim, hidden_dim=_dim(cfg, "intermediate_size", where), n_layers=_dim(cfg, "num_hidden_layers", where),
        n_heads=heads, n_kv_heads=_dim(cfg, "num_key_value_heads", where, heads),
        vocab_size=_dim(cfg, "vocab_size", where), seq_len=_dim(cfg, "max_position_embeddings", where, 2048),
        norm_eps=_number(eps, "rms_norm_eps", where), name=directory.name[:16] or "hf-llama",
        shared_classifier=bool(cfg.get("tie_word_embeddings", False)), rope_theta=10000.0)
    if head_dim % 2:
        raise ModelFileError(f"{where}: unsupported odd head_dim {head_dim} (RoPE rotates pairs)")
    theta, freqs = hf_rope(cfg, head_dim, where)
    return ModelConfig(**{**c.__dict__, "rope_theta": theta}), freqs


def _safetensors_header(path: Path) -> dict:
    """Check the file's own header (size, dtypes, offsets) so truncation is named, not crashed on."""
    data_len = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(data_len - 8, 100 << 20):
            raise ModelFileError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ModelFileError(f"{path}: corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header")
    body = data_len - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, (start, end) = info["dtype"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelFileError(f"{path}: corrupt safetensors entry {name!r}") from None
        if dtype not in ("F32", "F16", "F64", "BF16"):
            raise ModelFileError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        if not 0 <= start <= end <= body:
            raise ModelFileError(f"{path}: truncated: tensor {name} ends at byte {end} of a {body}-byte body")
    return header


def _bf16(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise ModelFileError(f"{path}: reading safetensors needs the safetensors package "
                             "(pip install safetensors, or the 'parity' extra)") from None
    header = _safetensors_header(path)
    out = {}
    bf16 = [k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "BF16"]
    if bf16:   # numpy has no bfloat16: widen the raw bits ourselves
        blob = path.read_bytes()
        base = 8 + struct.unpack_from("<Q", blob)[0]
        for name in bf16:
            start, end = header[name]["data_offsets"]
            try:
                raw = np.frombuffer(blob[base + start: base + end], dtype="<u2")
                out[name] = _bf16(raw).reshape(header[name]["shape"])
            except (ValueError, TypeError) as exc:
                raise ModelFileError(f"{path}: corrupt BF16 tensor {name} ({exc})") from None
    try:
        with safe_open(str(path), framework="np") as f:
            for name in f.keys():
                if name not in out:
                    out[name] = f.get_tensor(name)
    except ModelFileError:
        raise
    except Exception as exc:   # the package's SafetensorError and friends
        raise ModelFileError(f"{path}: unreadable safetensors file ({exc})") from None
    return out


def _load_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ModelFileError(f"{path}: a PyTorch .bin checkpoint needs PyTorch (the 'parity' extra); "
                             "convert it to model.safetensors to import it without PyTorch") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:   # weights_only refuses anything but tensors and plain containers
        raise ModelFileError(f"{path}: not a loadable weights-only PyTorch checkpoint ({exc})") from None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def load_state(directory: Path) -> dict[str, np.ndarray]:
    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():
        return _load_safetensors(directory / "model.safetensors")
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"{index}: corrupt index ({exc})") from None
        state: dict[str, np.ndarray] = {}
        for name in files:
            state.update(_load_safetensors(directory / name))
        return state
    if (directory / "pytorch_model.bin").is_file():
        return _load_torch_bin(directory / "pytorch_model.bin")
    raise ModelFileError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def load_hf(directory: str | Path, tokenizer: str | Path | None = None) -> FloatModel:
    """A Hugging Face Llama directory; the tokenizer is ``tokenizer`` or tokenizer.json beside config.json."""
    directory = Path(directory)
    c, rope_freq = _read_hf_config(directory)
    tok = find_tokenizer(tokenizer, directory / "tokenizer.json", c.vocab_size)
    state = load_state(directory)
    where = str(directory)
    if c.shared_classifier and "lm_head.weight" in state and "model.embed_tokens.weight" in state:
        if not np.array_equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
            c = ModelConfig(**{**c.__dict__, "shared_classifier": False})

    def get(name: str, layer: int | None) -> np.ndarray:
        key = {"tok_emb": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
               "classifier": "lm_head.weight"}[name] if layer is None else f"model.layers.{layer}.{_NAMES[name]}.weight"
        if key not in state:
            raise ModelFileError(f"{where}: missing tensor {key}")
        w = state[key]
        if name in ("wq", "wk") and w.ndim == 2 and w.shape[0] % (c.n_heads if name == "wq" else c.n_kv_heads) == 0:
            w = unpermute_rope(np.asarray(w), c.n_heads if name == "wq" else c.n_kv_heads)
        return w

    known = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {
        f"model.layers.{i}.{n}.weight" for i in range(c.n_layers) for n in _NAMES.values()}
    extra = sorted(k for k in state if k not in known and not k.endswith("rotary_emb.inv_freq"))
    if extra:
        raise ModelFileError(f"{where}: unsupported tensors for a Llama decoder: {', '.join(extra[:5])}")
    return build_model(c, get, where, tok, rope_freq=rope_freq)
