"""RoPE frequencies of imported models: the per-pair rotary frequencies the image carries (rope_freq,
docs/image-format.md), read from a Hugging Face config or derived from the tables an export holds.

The firmware rotates pair i of every head at position t by t * rope_freq[i], so any scheme that only
changes the frequencies is exact in the image: plain ("default") θ, "linear" (frequencies divided by
the factor) and "llama3" (per-frequency smoothing between the low and high wavelength), computed as
transformers' ``modeling_rope_utils.ROPE_INIT_FUNCTIONS`` compute inv_freq. Schemes that depend on the
sequence length (dynamic), scale the attention (yarn, longrope) or rotate part of a head (a partial
rotary factor) are refused by name.
"""

from __future__ import annotations

import math

import numpy as np

from twin.model.importers.common import ModelFileError
from twin.model.modelgen import rope_frequencies

SUPPORTED_KINDS = ("default", "linear", "llama3")
_SUPPORTED = ("supported: default (plain θ), linear and llama3, the frequency-only schemes the image's "
              "per-pair rope_freq carries exactly")
_MISSING = object()


def _number(value, field: str, where: str, *, minimum: float = 0.0, strict: bool = True) -> float:
    """A finite JSON number above ``minimum`` (or at least it, ``strict=False``); else a ModelFileError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > minimum if strict else value >= minimum):
        return float(value)
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    raise ModelFileError(f"{where}: unreadable {field} {value!r} (need a number {bound})")


def hf_rope(cfg: dict, head_size: int, where: str) -> tuple[float, np.ndarray]:
    """(θ, per-pair frequencies float32 (head_size/2,)) from a config.json dict, wherever transformers
    4.x or 5.x put them: top-level ``rope_theta``, ``rope_scaling`` (4.x; its ``type`` or ``rope_type``)
    or ``rope_parameters`` (5.x: ``{"rope_type", "rope_theta", ...}``, possibly nested per layer type).
    As transformers, a non-empty rope_scaling takes the place of rope_parameters, and the θ in the
    parameters wins over the top-level one; θ defaults to 10000 only when no field names one."""
    scaling, params = cfg.get("rope_scaling"), cfg.get("rope_parameters")
    field, p = ("rope_scaling", scaling) if scaling else ("rope_parameters", params)
    if p is None:
        p = {}
    if not isinstance(p, dict):
        raise ModelFileError(f"{where}: unreadable {field} {p!r} (need an object)")
    top = {k: cfg[k] for k in ("rope_theta", "partial_rotary_factor") if k in cfg}
    if any(isinstance(v, dict) for v in p.values()):   # nested per layer type
        results = {}
        for label, sub in p.items():
            if not isinstance(sub, dict):
                raise ModelFileError(f"{where}: {field}[{label!r}] is {sub!r}: a layer type without RoPE "
                                     "(or unreadable parameters) is not supported")
            results[label] = _resolve(sub, top, cfg, head_size, f"{field}[{label!r}]", where)
        labels = list(results)
        first = results[labels[0]]
        for label in labels[1:]:
            if not np.array_equal(results[label][1], first[1]):
                raise ModelFileError(f"{where}: {field} gives layer types {labels[0]!r} and {label!r} different "
                                     "RoPE; the twin applies one RoPE to every layer")
        return first
    return _resolve(p, top, cfg, head_size, field, where)


def _resolve(d: dict, top: dict, cfg: dict, head_size: int, field: str, where: str) -> tuple[float, np.ndarray]:
    kind = d.get("rope_type", d.get("type", "default"))
    if not isinstance(kind, str):
        raise ModelFileError(f"{where}: unreadable {field}.rope_type {kind!r}")
    if "rope_theta" in d:
        theta = _number(d["rope_theta"], f"{field}.rope_theta", where, minimum=1.0)
    elif "rope_theta" in top:
        theta = _number(top["rope_theta"], "rope_theta", where, minimum=1.0)
    else:
        theta = 10000.0   # transformers' default_theta, when no field names one
    prf = d.get("partial_rotary_factor", top.get("partial_rotary_factor", 1.0))
    if prf != 1.0:
        raise ModelFileError(f"{where}: unsupported partial_rotary_factor {prf!r} (the firmware rotates every "
                             "pair of a head)")
    if kind not in SUPPORTED_KINDS:
        raise ModelFileError(f"{where}: unsupported RoPE scaling {field}.rope_type {kind!r}; {_SUPPORTED}")
    base = rope_frequencies(head_size, theta).astype(np.float64)
    if kind == "default":
        return theta, rope_frequencies(head_size, theta)

    def need(key: str, default=_MISSING, minimum: float = 0.0) -> float:
        if key not in d and default is _MISSING:
            raise ModelFileError(f"{where}: {field} of rope_type {kind!r} has no {key}")
        return _number(d.get(key, default), f"{field}.{key}", where, minimum=minimum)

    factor = need("factor")
    if kind == "linear":
        return theta, (base / factor).astype(np.float32)
    # llama3 (transformers' _compute_llama3_parameters)
    low, high = need("low_freq_factor"), need("high_freq_factor")
    old_len = need("original_max_position_embeddings", cfg.get("max_position_embeddings", _MISSING))
    if high <= low:
        raise ModelFileError(f"{where}: {field}: high_freq_factor {high} must exceed low_freq_factor {low}")
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / base
    inv = np.where(wavelen > low_wavelen, base / factor, base)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv / factor + smooth * inv
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return theta, np.where(medium, smoothed, inv).astype(np.float32)


# ------------------------------------------------------------ from tables


def describe(freqs: np.ndarray, head_size: int) -> tuple[float, np.ndarray]:
    """(θ, frequencies) for measured frequencies: a plain θ's exact frequencies when they agree with one
    to float32 precision (θ snapped to 3 significant digits when that close), else the measured ones with
    the θ of their median neighbour ratio (for linear, and llama3 away from its few smoothed pairs: the base θ)."""
    f = np.asarray(freqs, dtype=np.float64)
    n = head_size // 2
    if f.shape != (n,) or not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise ValueError(f"RoPE frequencies must be {n} positive numbers")
    ratio = float(np.median(f[:-1] / f[1:])) if n > 1 else 0.0
    theta = ratio ** (head_size / 2.0) if ratio > 1 else 10000.0
    snapped = float(f"{theta:.3g}")
    for t in (snapped, theta):
        if t > 1 and np.allclose(rope_frequencies(head_size, t), f, rtol=2e-5, atol=0):
            return t, rope_frequencies(head_size, t)
    theta = snapped if abs(snapped - theta) <= 1e-3 * theta else theta
    return (theta if theta > 1 else 10000.0), f.astype(np.float32)


def freqs_from_angles(angle: np.ndarray) -> np.ndarray | None:
    """Per-column frequency of an angle table angle[t, i] = t * f[i] (rows: positions 0, 1, ...), by least
    squares; None if the table is not of that form (to float32 precision)."""
    a = np.asarray(angle, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or not np.all(np.isfinite(a)):
        return None
    t = np.arange(a.shape[0], dtype=np.float64)
    f = (t @ a) / (t @ t)
    fit = t[:, None] * f[None, :]
    if np.max(np.abs(a - fit)) > 1e-5 * max(1.0, float(np.max(np.abs(a)))):
        return None
    return f


def freqs_from_cos_sin(cos: np.ndarray, sin: np.ndarray) -> np.ndarray | None:
    """Frequencies of cos/sin tables (rows: positions 0, 1, ...): the unwrapped angle's slope."""
    c, s = np.asarray(cos, dtype=np.float64), np.asarray(sin, dtype=np.float64)
    if c.shape != s.shape or c.ndim != 2 or c.shape[0] < 2 or not np.all(np.isfinite(c) & np.isfinite(s)):
        return None
    if np.max(np.abs(c * c + s * s - 1.0)) > 1e-4:
        return None
    return freqs_from_angles(np.unwrap(np.arctan2(s, c), axis=0))


def pair_columns(f: np.ndarray, head_size: int) -> np.ndarray | None:
    """The head_size/2 pair frequencies from a table's columns: head_size/2 columns as they are, or
    head_size columns duplicated as HF's cat(freqs, freqs) or interleaved (f0, f0, f1, f1, ...)."""
    n = head_size // 2
    if f.shape == (n,):
        return f
    if f.shape == (head_size,):
        for half in (f[:n], f[n:]), (f[0::2], f[1::2]):
            if np.allclose(half[0], half[1], rtol=1e-6, atol=1e-9):
                return half[0]
    return None
