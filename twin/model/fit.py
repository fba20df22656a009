"""Memory fit: does a quantized model run on a platform, with how much headroom, up to which context?

Flash: the firmware's code and initialised data (``__flash_start`` .. ``__flash_end`` of the ELF built
for the platform) in the code window, the model image in the model partition (the firmware refuses a
larger image with E_TOO_LARGE).

RAM: static data (.data + .bss up to ``__arena_start``), the stack (``STACK_SIZE``), and the run-state
arena that ``model_open`` carves, computed here exactly as ``layout()`` in firmware/runtime/model.c
(each buffer rounded up to 8 bytes; struct sizes read from the ELF's DWARF): the firmware refuses an
arena larger than ``__arena_end - __arena_start`` with E_NO_RAM.

The firmware's KV cache is float32, or int8 when the image says so (flags bit 1, ``write_image(...,
kv_cache="int8")``): then each of the key and value caches is one buffer of one float32 scale per
(layer, position, KV head) followed by one int8 per element. ``kv_cache`` picks the cache the fit is
computed for (by default the image's own); the other type is reported as a what-if, and the int8
figures are exactly the arena of the same image written with an int8 KV cache.

Platforms without a firmware build (no ``board:``) are estimated from the ELF of their proxy platform
(same core) and the chip's memories; their results say ``"estimated": true``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from twin.model.image import Kind, QuantModel, read_image
from twin.model.modelgen import ModelConfig
from twin.platforms import Platform

MAX_SEQ_LEN = 16384           # config_ok() in model.c
MATRICES = (Kind.TOK_EMB, Kind.WQ, Kind.WK, Kind.WV, Kind.WO, Kind.W1, Kind.W2, Kind.W3, Kind.CLASSIFIER)


class FitError(RuntimeError):
    """The fit cannot be computed (no firmware for the platform, or no proxy to estimate from)."""


@dataclass(frozen=True)
class FirmwareFacts:
    """What the built ELF says about memory."""
    code_bytes: int           # flash used by code, read-only data and .data's load image
    static_ram_bytes: int     # .data + .bss (up to the arena)
    stack_bytes: int
    arena_bytes: int          # what model_open may use
    arena_misalign: int       # bytes model_open skips to 8-align the arena
    layer_struct_bytes: int   # sizeof(tw_layer)
    probindex_bytes: int      # sizeof(tw_probindex)
    elf: Path


def _round8(n: int) -> int:
    return (n + 7) & ~7


def act_sizes(matrices: list[tuple[int, int]]) -> tuple[int, int]:
    """(max padded cols, max groups) over the quantized matrices, as act_sizes() in model.c."""
    max_padded = max_groups = 0
    for cols, g in matrices:
        padded = -(-cols // g) * g
        max_padded, max_groups = max(max_padded, padded), max(max_groups, padded // g)
    return max_padded, max_groups


def kv_cache_bytes(c: ModelConfig, kv_cache: str = "f32") -> int:
    """One of the two caches (keys or values)."""
    n = c.n_layers * c.seq_len * c.kv_dim
    if kv_cache == "f32":
        return 4 * n
    if kv_cache == "int8":
        return n + 4 * c.n_layers * c.seq_len * c.n_kv_heads
    raise ValueError(f"unknown KV cache type {kv_cache!r} (f32 or int8)")


def arena_bytes(c: ModelConfig, matrices: list[tuple[int, int]], layer_struct_bytes: int,
                probindex_bytes: int = 8, kv_cache: str = "f32", misalign: int = 0) -> int:
    """model_open()'s arena need: layout() in firmware/runtime/model.c, buffer by buffer."""
    max_padded, max_groups = act_sizes(matrices)
    hs = c.dim // c.n_heads
    sizes = [
        c.n_layers * layer_struct_bytes,            # layer table
        4 * c.dim, 4 * c.dim, 4 * c.dim, 4 * c.dim,  # x, xb, xb2, q
        4 * c.hidden_dim, 4 * c.hidden_dim,         # hb, hb2
        4 * c.n_heads * c.seq_len,                  # att
        kv_cache_bytes(c, kv_cache), kv_cache_bytes(c, kv_cache),
        4 * (hs // 2), 4 * (hs // 2),               # rope cos, sin
        max_padded, 4 * max_groups,                 # xq, xs
        4 * c.vocab_size, 4 * c.vocab_size,         # logits, probs
        probindex_bytes * c.vocab_size,             # probindex
    ]
    return sum(_round8(s) for s in sizes) + misalign


def _symbols(elf) -> dict[str, int]:
    from elftools.elf.sections import SymbolTableSection

    out = {}
    for sec in elf.iter_sections():
        if isinstance(sec, SymbolTableSection):
            for s in sec.iter_symbols():
                if s.name.startswith("__"):
                    out[s.name] = s["st_value"]
    return out


def _dwarf_type_sizes(elf, names: set[str]) -> dict[str, int]:
    """byte_size of the named typedefs (through the typedef chain)."""
    if not elf.has_dwarf_info():
        return {}
    found: dict[str, int] = {}
    dwarf = elf.get_dwarf_info()
    for cu in dwarf.iter_CUs():
        for die in cu.iter_DIEs():
            if die.tag != "DW_TAG_typedef" or "DW_AT_name" not in die.attributes:
                continue
            name = die.attributes["DW_AT_name"].value.decode()
            if name not in names or name in found:
                continue
            t = die
            for _ in range(8):
                if "DW_AT_byte_size" in t.attributes:
                    found[name] = t.attributes["DW_AT_byte_size"].value
                    break
                if "DW_AT_type" not in t.attributes:
                    break
                t = t.get_DIE_from_attribute("DW_AT_type")
        if len(found) == len(names):
            break
    return found


@cache
def firmware_facts(elf_path: Path, platform: Platform) -> FirmwareFacts:
    from elftools.elf.elffile import ELFFile

    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        sym = _symbols(elf)
        sizes = _dwarf_type_sizes(elf, {"tw_layer", "tw_probindex", "tw_tensor"})
    need = ("__flash_start", "__flash_end", "__arena_start", "__arena_end", "__stack_top", "__stack_limit")
    missing = [s for s in need if s not in sym]
    if missing:
        raise FitError(f"{elf_path}: linker symbols {', '.join(missing)} not found")
    layer = sizes.get("tw_layer") or 9 * sizes.get("tw_tensor", 0)
    if not layer:
        raise FitError(f"{elf_path}: no DWARF size for tw_layer (built without -g?)")
    return FirmwareFacts(
        code_bytes=sym["__flash_end"] - sym["__flash_start"],
        static_ram_bytes=sym["__arena_start"] - platform.ram.origin,
        stack_bytes=sym["__stack_top"] - sym["__stack_limit"],
        arena_bytes=sym["__arena_end"] - sym["__arena_start"],
        arena_misalign=(-sym["__arena_start"]) & 7,
        layer_struct_bytes=layer,
        probindex_bytes=sizes.get("tw_probindex", 8),
        elf=elf_path,
    )


def _platform_basis(platform: Platform) -> tuple[Platform, bool]:
    """The platform whose ELF we read: itself, or its proxy (estimated) when it has no firmware build."""
    if getattr(platform, "has_firmware", platform.board is not None):
        return platform, False
    twin = getattr(platform, "twin", None)
    proxy = getattr(twin, "proxy", None) if twin else None
    if not proxy:
        raise FitError(f"platform {platform.id} has no firmware build and no proxy platform to estimate from")
    from twin.platforms import get_platform

    return get_platform(proxy), True


def _elf_for(platform: Platform) -> Path:
    from twin.device.build import build_firmware

    return build_firmware(platform).elf


def model_matrices(q: QuantModel) -> list[tuple[int, int]]:
    return [(t.cols, t.group_size) for (kind, _), t in q.tensors.items() if kind in MATRICES and t.bits != 32]


def fit_platform(platform: Platform, image: bytes, *, context: int | None = None, kv_cache: str | None = None,
                 elf: Path | None = None) -> dict:
    """The fit of one model image (its config's context, or ``context``) on one platform, with the image's
    KV cache type or ``kv_cache`` (the arena model_open would carve for that type)."""
    q = read_image(image)
    kv_cache = kv_cache or q.kv_cache
    c = q.config if context is None else dataclasses.replace(q.config, seq_len=context)
    basis, estimated = _platform_basis(platform)
    facts = firmware_facts(elf or _elf_for(basis), basis)
    matrices = model_matrices(q)
    if estimated:
        mem = platform.memories
        ram_total = mem.ram_bytes_available if mem else 0
        stack = platform.stack_size
        arena_avail = ram_total - facts.static_ram_bytes - stack
        code_window = mem.code_bytes_available if mem else 0
        flash_fits = facts.code_bytes + len(image) <= code_window
        flash_headroom = code_window - facts.code_bytes - len(image)
        partition = code_window - facts.code_bytes
    else:
        ram_total, stack = platform.ram.size, facts.stack_bytes
        arena_avail = facts.arena_bytes
        partition = platform.model.size
        flash_fits = len(image) <= partition and facts.code_bytes <= platform.flash.size
        flash_headroom = partition - len(image)

    def need(cfg: ModelConfig, kv: str) -> int:
        return arena_bytes(cfg, matrices, facts.layer_struct_bytes, facts.probindex_bytes, kv, facts.arena_misalign)

    def max_context(kv: str) -> int:
        lo, hi = 0, MAX_SEQ_LEN     # need() grows with seq_len
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if need(dataclasses.replace(c, seq_len=mid), kv) <= arena_avail:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def ram_report(kv: str) -> dict:
        arena = need(c, kv)
        ram_fits = arena <= arena_avail
        return {"kv_cache": kv, "fits": bool(flash_fits and ram_fits), "ram_fits": ram_fits,
                "ram_bytes": facts.static_ram_bytes + stack + arena, "arena_bytes": arena,
                "kv_cache_bytes": 2 * kv_cache_bytes(c, kv), "ram_headroom_bytes": arena_avail - arena,
                "max_context": max_context(kv)}

    main = ram_report(kv_cache)
    other = ram_report("int8" if kv_cache == "f32" else "f32")
    return {
        "platform": platform.id,
        **{k: main[k] for k in ("fits", "ram_fits")},
        "flash_fits": bool(flash_fits),
        "flash_bytes": facts.code_bytes + len(image),
        "code_bytes": facts.code_bytes,
        "image_bytes": len(image),
        "model_partition_bytes": partition,
        "flash_headroom_bytes": flash_headroom,
        "ram_bytes": main["ram_bytes"],
        "ram_total_bytes": ram_total,
        "ram_headroom_bytes": main["ram_headroom_bytes"],
        "static_ram_bytes": facts.static_ram_bytes,
        "stack_bytes": stack,
        "arena_bytes": main["arena_bytes"],
        "arena_available_bytes": arena_avail,
        "kv_cache": kv_cache,
        "kv_cache_bytes": main["kv_cache_bytes"],
        "context": c.seq_len,
        "max_context": main["max_context"],
        "estimated": estimated,
        "basis": basis.id,
        f"kv_{other['kv_cache']}": {k: other[k] for k in ("fits", "ram_bytes", "kv_cache_bytes",
                                                         "ram_headroom_bytes", "max_context")},
        "image_kv_cache": q.kv_cache,
        "firmware_kv_cache": ["f32", "int8"],
    }


def fit(image: bytes, platforms: list[Platform], *, context: int | None = None,
        kv_cache: str | None = None) -> list[dict]:
    out = []
    for p in platforms:
        try:
            out.append(fit_platform(p, image, context=context, kv_cache=kv_cache))
        except FitError as exc:
            out.append({"platform": p.id, "fits": None, "error": str(exc), "flash_bytes": None,
                        "ram_bytes": None, "max_context": None})
    return out
