"""Model image format v1: quantization schemes and recipes, writer and reader (docs/image-format.md).

The firmware reads the image in place; `firmware/runtime/model.c` validates it with the same
checks, in the same order, as `read_image` here (ImageError.code is the firmware's code).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from twin.model.modelgen import FloatModel, ModelConfig

MAGIC = 0x4D4C5754  # b"TWLM"
VERSION = 1
PREAMBLE = struct.Struct("<IHHII")  # magic, version, header_size, total_size, crc32
HEADER = struct.Struct("<10I16sII16x")  # arch, dims..., flags, eps (as u32), name, n_tensors, entry_size
HEADER_SIZE = PREAMBLE.size + HEADER.size  # 96: the tensor table starts here
ENTRY = struct.Struct("<BBBxHHIIIIII")  # kind bits scheme - layer group rows cols doff dsize soff ssize
ARCH_LLAMA = 1
FLAG_SHARED_CLASSIFIER = 1
FLAG_KV_INT8 = 2  # the firmware keeps an int8 KV cache (docs/image-format.md)
KV_CACHE_TYPES = ("f32", "int8")
SUPPORTED_BITS = (2, 3, 4, 8)
SCHEME_SYMMETRIC, SCHEME_ASYMMETRIC = 0, 1
SUPPORTED_GROUPS = (32, 64, 128)
MAX_TENSORS = 4096

# Error codes shared with the firmware and the protocol.
E_BAD_MAGIC, E_VERSION, E_CRC, E_TOO_LARGE, E_NO_RAM, E_ARCH, E_QUANT, E_CORRUPT = 1, 2, 3, 4, 5, 6, 7, 8


class Kind(IntEnum):
    TOK_EMB = 0
    ATTN_NORM = 1
    WQ = 2
    WK = 3
    WV = 4
    WO = 5
    FFN_NORM = 6
    W1 = 7
    W2 = 8
    W3 = 9
    FINAL_NORM = 10
    CLASSIFIER = 11
    ROPE_FREQ = 12


PER_LAYER = (Kind.ATTN_NORM, Kind.WQ, Kind.WK, Kind.WV, Kind.WO, Kind.FFN_NORM, Kind.W1, Kind.W2, Kind.W3)
VECTORS = (Kind.ATTN_NORM, Kind.FFN_NORM, Kind.FINAL_NORM, Kind.ROPE_FREQ)


class ImageError(ValueError):
    """A malformed model image; `code` is the firmware's error code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------ quantization
#
# A quantized element is a code c of `bits` bits; its integer level is q = c - z and its value
# (float)q * scale, with one float32 scale per (row, group) and z as follows:
#   symmetric  (scheme 0): z = 2^(bits-1) implicit (8 bits: c is int8, z = 0); q in [-qmax, qmax],
#                          qmax = 2^(bits-1) - 1 (2 bits: ternary -1, 0, 1).
#   asymmetric (scheme 1): c in [0, 2^bits - 1], z a uint8 per (row, group) stored after the scales.


def padded(cols: int, group_size: int) -> int:
    return -(-cols // group_size) * group_size


def qmax(bits: int) -> int:
    """Largest symmetric level: 127, 7, 3, 1 for 8, 4, 3, 2 bits."""
    return (1 << (bits - 1)) - 1


def _grouped(w: np.ndarray, group_size: int) -> np.ndarray:
    rows, cols = w.shape
    x = np.zeros((rows, padded(cols, group_size)), dtype=np.float32)
    x[:, :cols] = w
    return x.reshape(rows, -1, group_size)


def quantize(w: np.ndarray, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-(row, group) quantization along cols.

    Returns the levels q as int8 (rows, padded_cols) in [-qmax, qmax] (zero padding) and float32
    scales (rows, padded_cols / group_size) = maxabs / qmax.
    """
    m = qmax(bits)
    rows = w.shape[0]
    groups = _grouped(w, group_size)
    scales = np.abs(groups).max(axis=2) / np.float32(m)
    safe = np.where(scales == 0, np.float32(1), scales).astype(np.float64)
    q = np.clip(np.rint(groups / safe[:, :, None]), -m, m).astype(np.int8)
    return q.reshape(rows, -1), scales.astype(np.float32)


def quantize_asymmetric(w: np.ndarray, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric per-(row, group) quantization along cols.

    The group's range is widened to include 0, [lo, hi] = [min(min, 0), max(max, 0)];
    scale = (hi - lo) / (2^bits - 1) (float32), z = round(-lo / scale), c = clip(round(w / scale) + z).
    Returns codes uint8 (rows, padded_cols) in [0, 2^bits - 1] (padding holds z, i.e. level 0),
    float32 scales and uint8 zero points (rows, padded_cols / group_size). |value - w| <= scale / 2.
    """
    top = (1 << bits) - 1
    rows = w.shape[0]
    groups = _grouped(w, group_size)
    lo = np.minimum(groups.min(axis=2), np.float32(0))
    hi = np.maximum(groups.max(axis=2), np.float32(0))
    scales = ((hi - lo) / np.float32(top)).astype(np.float32)
    safe = np.where(scales == 0, np.float32(1), scales).astype(np.float64)
    zeros = np.clip(np.rint(-lo / safe), 0, top)
    codes = np.clip(np.rint(groups / safe[:, :, None]) + zeros[:, :, None], 0, top)
    return codes.astype(np.uint8).reshape(rows, -1), scales, zeros.astype(np.uint8)


def dequantize(q: np.ndarray, scales: np.ndarray, cols: int) -> np.ndarray:
    """(float)q * scale in float32 for levels q (= c - z), cut to the logical cols."""
    rows, pcols = q.shape
    g = pcols // scales.shape[1]
    w = q.reshape(rows, -1, g).astype(np.float32) * scales[:, :, None]
    return w.reshape(rows, pcols)[:, :cols]


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Codes (rows, padded_cols), each in [0, 2^bits) (8 bits: any byte), packed row by row:
    8: a byte each; 4: element 2j in the low nibble of byte j; 2: element 4j+k at bits 2k of byte j;
    3: 8 elements per 3 bytes, element 8j+k at bits 3k of the little-endian 24-bit word."""
    c = np.asarray(codes).astype(np.uint32)
    rows = c.shape[0]
    if bits == 8:
        return (c & 0xFF).astype(np.uint8).tobytes()
    per = {4: 2, 2: 4, 3: 8}[bits]
    parts = c.reshape(rows, -1, per) << (np.arange(per, dtype=np.uint32) * bits)
    word = np.bitwise_or.reduce(parts, axis=2)
    nbytes = per * bits // 8
    out = np.stack([(word >> (8 * i)) & 0xFF for i in range(nbytes)], axis=2)
    return out.astype(np.uint8).tobytes()


def unpack_codes(data: bytes, bits: int, rows: int, padded_cols: int) -> np.ndarray:
    """Inverse of pack_codes: uint8 codes (rows, padded_cols)."""
    b = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return b.reshape(rows, padded_cols).copy()
    per = {4: 2, 2: 4, 3: 8}[bits]
    nbytes = per * bits // 8
    chunks = b.reshape(rows, -1, nbytes).astype(np.uint32)
    word = np.bitwise_or.reduce(chunks << (np.arange(nbytes, dtype=np.uint32) * 8), axis=2)
    codes = (word[:, :, None] >> (np.arange(per, dtype=np.uint32) * bits)) & ((1 << bits) - 1)
    return codes.reshape(rows, padded_cols).astype(np.uint8)


def pack(q: np.ndarray, bits: int) -> bytes:
    """Symmetric levels q: 8-bit as int8 bytes, otherwise codes q + 2^(bits-1) (pack_codes)."""
    q = np.asarray(q).astype(np.int16)
    return pack_codes(q if bits == 8 else q + (1 << (bits - 1)), bits)


def unpack(data: bytes, bits: int, rows: int, padded_cols: int) -> np.ndarray:
    """Symmetric levels q (int8) of packed data (inverse of pack)."""
    c = unpack_codes(data, bits, rows, padded_cols)
    if bits == 8:
        return c.view(np.int8)
    return (c.astype(np.int16) - (1 << (bits - 1))).astype(np.int8)


@dataclass(frozen=True)
class QuantScheme:
    """How one tensor is quantized: width, group size along cols, symmetric or asymmetric."""

    bits: int = 4
    group_size: int = 32
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS or self.group_size not in SUPPORTED_GROUPS:
            raise ValueError(f"unsupported quantization: {self.bits} bits, group size {self.group_size} "
                             f"(bits {'/'.join(map(str, SUPPORTED_BITS))}, group size "
                             f"{'/'.join(map(str, SUPPORTED_GROUPS))})")

    @property
    def scheme(self) -> int:
        return SCHEME_SYMMETRIC if self.symmetric else SCHEME_ASYMMETRIC

    @property
    def label(self) -> str:
        """e.g. q4g32 (symmetric), q3g64a (asymmetric)."""
        return f"q{self.bits}g{self.group_size}{'' if self.symmetric else 'a'}"

    def sizes(self, rows: int, cols: int) -> tuple[int, int]:
        """(data bytes, scale-block bytes) of a rows x cols matrix."""
        p = padded(cols, self.group_size)
        groups = rows * (p // self.group_size)
        return rows * p * self.bits // 8, groups * 4 + (0 if self.symmetric else groups)

    def encode(self, w: np.ndarray) -> tuple[bytes, bytes]:
        """Quantize and pack a float matrix: (data, scale block) as stored in the image."""
        if self.symmetric:
            q, scales = quantize(w, self.bits, self.group_size)
            return pack(q, self.bits), scales.tobytes()
        codes, scales, zeros = quantize_asymmetric(w, self.bits, self.group_size)
        return pack_codes(codes, self.bits), scales.tobytes() + zeros.tobytes()


RECIPE_KEYS = ("tok_emb", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "classifier")


@dataclass(frozen=True)
class QuantRecipe:
    """Per-tensor quantization (mixed precision): a default scheme and overrides by tensor name.

    Override keys are matrix names (RECIPE_KEYS: tok_emb, wq, wk, wv, wo, w1, w2, w3, classifier),
    optionally with a layer, e.g. "w2.0"; a layer key wins over a name key. Values are a
    QuantScheme or a bit width (the default's group size and symmetry with those bits). When the
    model's classifier shares the token embedding, tok_emb and classifier name one tensor.
    """

    default: QuantScheme = QuantScheme()
    overrides: tuple[tuple[str, QuantScheme], ...] = ()

    @classmethod
    def make(cls, bits: int = 4, group_size: int = 32, symmetric: bool = True,
             overrides: dict[str, int | QuantScheme] | None = None) -> QuantRecipe:
        default = QuantScheme(bits, group_size, symmetric)
        items = []
        for key, v in sorted((overrides or {}).items()):
            name, _, layer = key.partition(".")
            if name not in RECIPE_KEYS or (layer and not layer.isdigit()):
                raise ValueError(f"unknown tensor {key!r} in the quantization overrides "
                                 f"(names: {', '.join(RECIPE_KEYS)}, optionally with .LAYER)")
            scheme = v if isinstance(v, QuantScheme) else QuantScheme(int(v), group_size, symmetric)
            items.append((key, scheme))
        return cls(default, tuple(items))

    @classmethod
    def parse(cls, text: str, group_size: int = 32, symmetric: bool = True) -> QuantRecipe:
        """'4' or '4,tok_emb=8,classifier=8,w2.0=8' (the CLI's form)."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or "=" in parts[0]:
            raise ValueError(f"a recipe starts with the default bit width, e.g. '4,tok_emb=8' (got {text!r})")
        try:
            bits = int(parts[0])
            over = {k.strip(): int(v) for k, v in (p.split("=", 1) for p in parts[1:])}
        except ValueError:
            raise ValueError(f"bad recipe {text!r}: expected BITS[,NAME=BITS...]") from None
        return cls.make(bits, group_size, symmetric, over)

    def for_tensor(self, kind: Kind, layer: int = 0, shared_classifier: bool = False) -> QuantScheme:
        table = dict(self.overrides)
        names = [kind.name.lower()]
        if shared_classifier and kind == Kind.TOK_EMB:
            names = ["tok_emb", "classifier"]
            picks = {table[n] for n in names if n in table}
            if len(picks) > 1:
                raise ValueError("tok_emb and classifier are one tensor in this model (shared classifier) "
                                 "but the recipe gives them different schemes")
        for n in names:
            if f"{n}.{layer}" in table:
                return table[f"{n}.{layer}"]
        for n in names:
            if n in table:
                return table[n]
        return self.default

    @property
    def label(self) -> str:
        """e.g. q4g32, q4g32a+tok_emb=q8g32a."""
        return "+".join([self.default.label, *(f"{k}={s.label}" for k, s in self.overrides)])

    @property
    def is_uniform(self) -> bool:
        return all(s == self.default for _, s in self.overrides)


# ----------------------------------------------------------------- model


@dataclass
class Tensor:
    kind: Kind
    layer: int
    bits: int  # 32, 8, 4, 3 or 2
    group_size: int  # 0 for float32
    rows: int
    cols: int
    values: np.ndarray  # float32 (rows, cols) if bits == 32, else int16 levels q = c - z (rows, padded_cols)
    scales: np.ndarray | None  # float32 (rows, n_groups)
    scheme: int = SCHEME_SYMMETRIC
    zeros: np.ndarray | None = None  # uint8 (rows, n_groups), asymmetric only

    @property
    def stored_bytes(self) -> int:
        """Bytes of data and scale block in the image (without alignment padding)."""
        if self.bits == 32:
            return self.rows * self.cols * 4
        return sum(QuantScheme(self.bits, self.group_size, self.scheme == SCHEME_SYMMETRIC).sizes(
            self.rows, self.cols))

    def dense(self) -> np.ndarray:
        if self.bits == 32:
            return self.values
        assert self.scales is not None
        return dequantize(self.values, self.scales, self.cols)


@dataclass
class QuantModel:
    """A model as stored in an image."""

    config: ModelConfig
    tensors: dict[tuple[Kind, int], Tensor]
    crc: int
    size: int
    kv_cache: str = "f32"  # "int8" when flags bit 1 is set

    def tensor(self, kind: Kind, layer: int = 0) -> Tensor:
        if kind == Kind.CLASSIFIER and self.config.shared_classifier:
            kind = Kind.TOK_EMB
        return self.tensors[(kind, layer)]


def expected_shape(c: ModelConfig, kind: Kind) -> tuple[int, int]:
    return {
        Kind.TOK_EMB: (c.vocab_size, c.dim),
        Kind.CLASSIFIER: (c.vocab_size, c.dim),
        Kind.WQ: (c.dim, c.dim),
        Kind.WO: (c.dim, c.dim),
        Kind.WK: (c.kv_dim, c.dim),
        Kind.WV: (c.kv_dim, c.dim),
        Kind.W1: (c.hidden_dim, c.dim),
        Kind.W3: (c.hidden_dim, c.dim),
        Kind.W2: (c.dim, c.hidden_dim),
        Kind.ROPE_FREQ: (1, c.head_size // 2),
    }.get(kind, (1, c.dim))


def _tensor_list(model: FloatModel) -> list[tuple[Kind, int, np.ndarray]]:
    out: list[tuple[Kind, int, np.ndarray]] = [(Kind.TOK_EMB, 0, model.tok_emb)]
    for i, lw in enumerate(model.layers):
        for kind in PER_LAYER:
            out.append((kind, i, getattr(lw, kind.name.lower())))
    out.append((Kind.FINAL_NORM, 0, model.final_norm))
    if model.classifier is not None:
        out.append((Kind.CLASSIFIER, 0, model.classifier))
    out.append((Kind.ROPE_FREQ, 0, model.rope_freq))
    return out


def _align4(b: bytearray) -> None:
    b.extend(b"\0" * (-len(b) % 4))


def write_image(model: FloatModel, bits: int = 8, group_size: int = 32, *, symmetric: bool = True,
                overrides: dict[str, int | QuantScheme] | None = None,
                recipe: QuantRecipe | None = None, kv_cache: str = "f32") -> bytes:
    """Quantize every matrix with `recipe`, by default QuantRecipe.make(bits, group_size,
    symmetric, overrides) (e.g. overrides={"tok_emb": 8}); vectors stay float32.
    kv_cache "int8" sets flags bit 1: the firmware then keeps its KV cache in int8."""
    if kv_cache not in KV_CACHE_TYPES:
        raise ValueError(f"unknown KV cache type {kv_cache!r} (f32 or int8)")
    if recipe is None:
        recipe = QuantRecipe.make(bits, group_size, symmetric, overrides)
    elif overrides:
        raise ValueError("give either a recipe or bits/group_size/symmetric/overrides")
    c = model.config
    if (model.classifier is None) != c.shared_classifier:
        raise ValueError("config.shared_classifier disagrees with the classifier weights")
    tensors = _tensor_list(model)
    table_end = HEADER_SIZE + len(tensors) * ENTRY.size
    blob = bytearray(table_end)
    entries = []
    for kind, layer, w in tensors:
        w2 = np.asarray(w, dtype=np.float32).reshape(expected_shape(c, kind))
        rows, cols = w2.shape
        if kind in VECTORS:
            doff, data = len(blob), w2.tobytes()
            blob += data
            entries.append(ENTRY.pack(kind, 32, 0, layer, 0, rows, cols, doff, len(data), 0, 0))
        else:
            qs = recipe.for_tensor(kind, layer, c.shared_classifier)
            data, sdata = qs.encode(w2)
            doff = len(blob)
            blob += data
            _align4(blob)
            soff = len(blob)
            blob += sdata
            entries.append(ENTRY.pack(kind, qs.bits, qs.scheme, layer, qs.group_size, rows, cols, doff,
                                      len(data), soff, len(sdata)))
        _align4(blob)
    blob[HEADER_SIZE:table_end] = b"".join(entries)
    name = c.name.encode("utf-8")[:16]
    eps_bits = int(np.float32(c.norm_eps).view(np.uint32))
    flags = (FLAG_SHARED_CLASSIFIER if c.shared_classifier else 0) | (FLAG_KV_INT8 if kv_cache == "int8" else 0)
    blob[PREAMBLE.size:HEADER_SIZE] = HEADER.pack(
        ARCH_LLAMA, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
        c.seq_len, flags, eps_bits, name, len(tensors), ENTRY.size)
    blob[:PREAMBLE.size] = PREAMBLE.pack(MAGIC, VERSION, HEADER_SIZE, len(blob), 0)
    return fix_crc(bytes(blob))


def fix_crc(image: bytes) -> bytes:
    """Recompute the CRC field over [16, total_size) (for tests that patch images)."""
    total = struct.unpack_from("<I", image, 8)[0]
    crc = zlib.crc32(image[PREAMBLE.size:total])
    return image[:12] + struct.pack("<I", crc) + image[16:]


# ------------------------------------------------------------------ reader


def _config_problem(f: dict) -> str | None:
    if not (0 < f["dim"] <= 8192 and 0 < f["hidden_dim"] <= 32768 and 0 < f["n_layers"] <= 256):
        return "dimensions out of range"
    if not (0 < f["vocab_size"] <= 65536 and 0 < f["seq_len"] <= 16384):
        return "vocab_size or seq_len out of range"
    if f["n_heads"] == 0 or f["dim"] % f["n_heads"] or (f["dim"] // f["n_heads"]) % 2:
        return "dim is not a multiple of 2 * n_heads"
    if f["n_kv_heads"] == 0 or f["n_heads"] % f["n_kv_heads"]:
        return "n_heads is not a multiple of n_kv_heads"
    if f["flags"] & ~(FLAG_SHARED_CLASSIFIER | FLAG_KV_INT8):
        return f"unknown flags 0x{f['flags']:x}"
    if not (0.0 < f["norm_eps"] < 1.0):
        return f"norm_eps {f['norm_eps']} out of range"
    return None


def _expected_sizes(bits: int, scheme: int, group: int, rows: int, cols: int) -> tuple[int, int] | None:
    if bits == 32:
        return (rows * cols * 4, 0) if scheme == SCHEME_SYMMETRIC else None
    if (bits not in SUPPORTED_BITS or group not in SUPPORTED_GROUPS
            or scheme not in (SCHEME_SYMMETRIC, SCHEME_ASYMMETRIC)):
        return None
    return QuantScheme(bits, group, scheme == SCHEME_SYMMETRIC).sizes(rows, cols)


def read_image(image: bytes, partition_size: int | None = None) -> QuantModel:
    """Parse and validate an image (same checks and order as the firmware's model_open)."""
    image = bytes(image)
    partition = len(image) if partition_size is None else min(partition_size, len(image))
    if partition < PREAMBLE.size or struct.unpack_from("<I", image)[0] != MAGIC:
        raise ImageError(E_BAD_MAGIC, "not a model image (bad magic, expected b'TWLM')")
    magic, version, header_size, total, crc = PREAMBLE.unpack_from(image)
    if version != VERSION:
        raise ImageError(E_VERSION, f"image format version {version} is not supported (expected {VERSION})")
    if total > partition:
        what = "the file" if partition == len(image) else "the partition"
        raise ImageError(E_TOO_LARGE, f"image claims {total} bytes but {what} holds {partition} (truncated?)")
    if total < HEADER_SIZE:
        raise ImageError(E_CORRUPT, f"image size {total} is smaller than the header ({HEADER_SIZE})")
    actual = zlib.crc32(image[PREAMBLE.size:total])
    if actual != crc:
        raise ImageError(E_CRC, f"CRC mismatch: header says 0x{crc:08x}, payload has 0x{actual:08x}")

    vals = HEADER.unpack_from(image, PREAMBLE.size)
    keys = ("arch", "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len", "flags")
    f = dict(zip(keys, vals[:9], strict=True))
    f["norm_eps"] = float(np.uint32(vals[9]).view(np.float32))
    name = vals[10].split(b"\0", 1)[0].decode("utf-8", errors="replace")
    n_tensors, entry_size = vals[11], vals[12]

    def corrupt(msg: str) -> ImageError:
        return ImageError(E_CORRUPT, f"inconsistent image: {msg}")

    if header_size < HEADER_SIZE or header_size % 4:
        raise corrupt(f"header_size {header_size}")
    problem = _config_problem(f)
    if problem:
        raise corrupt(problem)
    if not (ENTRY.size <= entry_size <= 256 and entry_size % 4 == 0) or n_tensors > MAX_TENSORS:
        raise corrupt(f"tensor table entry size {entry_size} / count {n_tensors}")
    table_end = header_size + n_tensors * entry_size
    if table_end > total:
        raise corrupt("tensor table runs past the end of the image")
    shared = bool(f["flags"] & FLAG_SHARED_CLASSIFIER)
    config = ModelConfig(
        dim=f["dim"], hidden_dim=f["hidden_dim"], n_layers=f["n_layers"], n_heads=f["n_heads"],
        n_kv_heads=f["n_kv_heads"], vocab_size=f["vocab_size"], seq_len=f["seq_len"],
        norm_eps=f["norm_eps"], name=name, shared_classifier=shared)
    n_required = 9 * config.n_layers + 3 + (0 if shared else 1)
    if n_tensors != n_required:
        raise corrupt(f"{n_tensors} tensors, the header needs {n_required}")

    entries = []
    seen: set[tuple[int, int]] = set()
    for i in range(n_tensors):
        kind, bits, scheme, layer, group, rows, cols, doff, dsize, soff, ssize = ENTRY.unpack_from(
            image, header_size + i * entry_size)
        if kind >= len(Kind) or (kind == Kind.CLASSIFIER and shared):
            raise corrupt(f"tensor {i}: unexpected kind {kind}")
        k = Kind(kind)
        if (layer >= config.n_layers) if k in PER_LAYER else (layer != 0):
            raise corrupt(f"tensor {i} ({k.name}): bad layer {layer}")
        if (kind, layer) in seen:
            raise corrupt(f"tensor {k.name} layer {layer} appears twice")
        seen.add((kind, layer))
        if (rows, cols) != expected_shape(config, k):
            raise corrupt(f"{k.name} layer {layer} is {rows}x{cols}, expected "
                          f"{'x'.join(map(str, expected_shape(config, k)))}")
        for off, size in ((doff, dsize), (soff, ssize)):
            if off % 4 or off > total or size > total - off:
                raise corrupt(f"{k.name} layer {layer}: data [{off}, +{size}) outside the image")
        if doff < table_end or (ssize and soff < table_end):
            raise corrupt(f"{k.name} layer {layer}: data overlaps the header")
        sizes = _expected_sizes(bits, scheme, group, rows, cols)
        if sizes is not None and sizes != (dsize, ssize):
            raise corrupt(f"{k.name} layer {layer}: sizes {dsize}/{ssize}, expected {sizes[0]}/{sizes[1]}")
        entries.append((k, layer, bits, scheme, group, rows, cols, doff, dsize, soff, ssize))

    if f["arch"] != ARCH_LLAMA:
        raise ImageError(E_ARCH, f"architecture {f['arch']} is not supported (1 = llama)")
    for k, layer, bits, scheme, group, *_ in entries:
        if k in VECTORS:
            ok = bits == 32 and group == 0 and scheme == SCHEME_SYMMETRIC
        else:
            ok = bits in SUPPORTED_BITS and group in SUPPORTED_GROUPS and scheme in (SCHEME_SYMMETRIC,
                                                                                    SCHEME_ASYMMETRIC)
        if not ok:
            raise ImageError(E_QUANT, f"{k.name} layer {layer}: unsupported quantization "
                                      f"(bits {bits}, group size {group}, scheme {scheme})")

    tensors: dict[tuple[Kind, int], Tensor] = {}
    for k, layer, bits, scheme, group, rows, cols, doff, dsize, soff, ssize in entries:
        data = image[doff:doff + dsize]
        zeros = None
        if bits == 32:
            values = np.frombuffer(data, dtype="<f4").reshape(rows, cols).astype(np.float32)
            scales = None
        else:
            ng = padded(cols, group) // group
            scales = np.frombuffer(image[soff:soff + rows * ng * 4], dtype="<f4").reshape(rows, ng).astype(np.float32)
            if scheme == SCHEME_SYMMETRIC:
                values = unpack(data, bits, rows, padded(cols, group)).astype(np.int16)
            else:
                zeros = np.frombuffer(image[soff + rows * ng * 4:soff + ssize], dtype=np.uint8).reshape(rows, ng).copy()
                codes = unpack_codes(data, bits, rows, padded(cols, group)).astype(np.int16)
                values = codes - np.repeat(zeros, group, axis=1).astype(np.int16)
        tensors[(k, layer)] = Tensor(k, layer, bits, group, rows, cols, values, scales, scheme, zeros)
    return QuantModel(config=config, tensors=tensors, crc=crc, size=total,
                      kv_cache="int8" if f["flags"] & FLAG_KV_INT8 else "f32")
