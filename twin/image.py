"""Model image format v1: writer and reader (layout in docs/image-format.md).

The firmware reads the image in place; `firmware/runtime/model.c` validates it with the same
checks, in the same order, as `read_image` here (ImageError.code is the firmware's code).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from twin.modelgen import FloatModel, ModelConfig

MAGIC = 0x4D4C5754  # b"TWLM"
VERSION = 1
PREAMBLE = struct.Struct("<IHHII")  # magic, version, header_size, total_size, crc32
HEADER = struct.Struct("<10I16sII16x")  # arch, dims..., flags, eps (as u32), name, n_tensors, entry_size
HEADER_SIZE = PREAMBLE.size + HEADER.size  # 96: the tensor table starts here
ENTRY = struct.Struct("<BBBxHHIIIIII")  # kind bits scheme - layer group rows cols doff dsize soff ssize
ARCH_LLAMA = 1
FLAG_SHARED_CLASSIFIER = 1
SUPPORTED_BITS = (4, 8)
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


def padded(cols: int, group_size: int) -> int:
    return -(-cols // group_size) * group_size


def quantize(w: np.ndarray, bits: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-(row, group) quantization along cols.

    Returns q int8 (rows, padded_cols) in [-qmax, qmax] (qmax 127 or 7, zero padding) and
    float32 scales (rows, padded_cols / group_size) = maxabs / qmax.
    """
    qmax = {8: 127, 4: 7}[bits]
    rows, cols = w.shape
    x = np.zeros((rows, padded(cols, group_size)), dtype=np.float32)
    x[:, :cols] = w
    groups = x.reshape(rows, -1, group_size)
    scales = np.abs(groups).max(axis=2) / np.float32(qmax)
    safe = np.where(scales == 0, np.float32(1), scales).astype(np.float64)
    q = np.clip(np.rint(groups / safe[:, :, None]), -qmax, qmax).astype(np.int8)
    return q.reshape(rows, -1), scales.astype(np.float32)


def dequantize(q: np.ndarray, scales: np.ndarray, cols: int) -> np.ndarray:
    """(float)q * scale in float32, cut to the logical cols."""
    rows, pcols = q.shape
    g = pcols // scales.shape[1]
    w = q.reshape(rows, -1, g).astype(np.float32) * scales[:, :, None]
    return w.reshape(rows, pcols)[:, :cols]


def pack(q: np.ndarray, bits: int) -> bytes:
    """8-bit: int8 bytes. 4-bit: q + 8 in nibbles, element 2j low, 2j + 1 high."""
    if bits == 8:
        return q.astype(np.int8).tobytes()
    n = (q.astype(np.int16) + 8).astype(np.uint8).reshape(q.shape[0], -1, 2)
    return (n[:, :, 0] | (n[:, :, 1] << 4)).astype(np.uint8).tobytes()


def unpack(data: bytes, bits: int, rows: int, padded_cols: int) -> np.ndarray:
    if bits == 8:
        return np.frombuffer(data, dtype=np.int8).reshape(rows, padded_cols).copy()
    b = np.frombuffer(data, dtype=np.uint8).reshape(rows, padded_cols // 2)
    q = np.empty((rows, padded_cols), dtype=np.int8)
    q[:, 0::2] = (b & 15).astype(np.int8) - 8
    q[:, 1::2] = (b >> 4).astype(np.int8) - 8
    return q


# ----------------------------------------------------------------- model


@dataclass
class Tensor:
    kind: Kind
    layer: int
    bits: int  # 32, 8 or 4
    group_size: int  # 0 for float32
    rows: int
    cols: int
    values: np.ndarray  # float32 (rows, cols) if bits == 32, else int8 q (rows, padded_cols)
    scales: np.ndarray | None  # float32 (rows, n_groups)

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


def write_image(model: FloatModel, bits: int = 8, group_size: int = 32) -> bytes:
    """Quantize every matrix to `bits` (4 or 8) with `group_size`; vectors stay float32."""
    if bits not in SUPPORTED_BITS or group_size not in SUPPORTED_GROUPS:
        raise ValueError(f"unsupported quantization: {bits} bits, group size {group_size}")
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
            q, scales = quantize(w2, bits, group_size)
            doff, data = len(blob), pack(q, bits)
            blob += data
            _align4(blob)
            soff, sdata = len(blob), scales.tobytes()
            blob += sdata
            entries.append(ENTRY.pack(kind, bits, 0, layer, group_size, rows, cols, doff, len(data),
                                      soff, len(sdata)))
        _align4(blob)
    blob[HEADER_SIZE:table_end] = b"".join(entries)
    name = c.name.encode("utf-8")[:16]
    eps_bits = int(np.float32(c.norm_eps).view(np.uint32))
    flags = FLAG_SHARED_CLASSIFIER if c.shared_classifier else 0
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
    if f["flags"] & ~FLAG_SHARED_CLASSIFIER:
        return f"unknown flags 0x{f['flags']:x}"
    if not (0.0 < f["norm_eps"] < 1.0):
        return f"norm_eps {f['norm_eps']} out of range"
    return None


def _expected_sizes(bits: int, group: int, rows: int, cols: int) -> tuple[int, int] | None:
    if bits == 32:
        return rows * cols * 4, 0
    if bits not in SUPPORTED_BITS or group not in SUPPORTED_GROUPS:
        return None
    p = padded(cols, group)
    return rows * (p if bits == 8 else p // 2), rows * (p // group) * 4


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
        sizes = _expected_sizes(bits, group, rows, cols)
        if sizes is not None and sizes != (dsize, ssize):
            raise corrupt(f"{k.name} layer {layer}: sizes {dsize}/{ssize}, expected {sizes[0]}/{sizes[1]}")
        entries.append((k, layer, bits, scheme, group, rows, cols, doff, dsize, soff, ssize))

    if f["arch"] != ARCH_LLAMA:
        raise ImageError(E_ARCH, f"architecture {f['arch']} is not supported (1 = llama)")
    for k, layer, bits, scheme, group, *_ in entries:
        ok = (bits == 32 and group == 0) if k in VECTORS else (bits in SUPPORTED_BITS and group in SUPPORTED_GROUPS)
        if scheme != 0 or not ok:
            raise ImageError(E_QUANT, f"{k.name} layer {layer}: unsupported quantization "
                                      f"(bits {bits}, group size {group}, scheme {scheme})")

    tensors: dict[tuple[Kind, int], Tensor] = {}
    for k, layer, bits, _scheme, group, rows, cols, doff, dsize, soff, ssize in entries:
        data = image[doff:doff + dsize]
        if bits == 32:
            values = np.frombuffer(data, dtype="<f4").reshape(rows, cols).astype(np.float32)
            scales = None
        else:
            values = unpack(data, bits, rows, padded(cols, group))
            scales = np.frombuffer(image[soff:soff + ssize], dtype="<f4").reshape(rows, -1).astype(np.float32)
        tensors[(k, layer)] = Tensor(k, layer, bits, group, rows, cols, values, scales)
    return QuantModel(config=config, tensors=tensors, crc=crc, size=total)
