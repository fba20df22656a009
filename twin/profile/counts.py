"""Exact execution profiles from the QEMU plugin (firmware/plugin/twin_plugin.c).

Flow: :func:`build_plugin` compiles the plugin once per source version; :func:`plugin_args` gives
the ``-plugin`` option for one run (the mark address comes from the ELF's ``twin_mark`` symbol);
at exit the plugin writes a dump that :func:`parse_dump` reads; :func:`analyze` expands the
per-translation-block counts to instructions and attributes them to classes (``twin.profile.isa``) and
functions (ELF symbol table), one :class:`SegmentProfile` per interval between marks.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from elftools.elf.elffile import ELFFile

from twin.device.build import cache_dir
from twin.platforms import ROOT, Accelerator, Platform, all_platforms
from twin.profile import isa

PLUGIN_SRC_DIR = ROOT / "firmware" / "plugin"
PLUGIN_SOURCES = ("twin_plugin.c", "qemu_plugin_api.h")
PLUGIN_CFLAGS = ("-O2", "-g", "-Wall", "-Wextra", "-std=gnu11", "-fPIC", "-shared",
                 "-fvisibility=hidden")
MARK_SYMBOL = "twin_mark"
MAX_REGIONS = 8
MAX_ENTRIES = 64
MAX_CACHES = 4
UNKNOWN_FUNCTION = "?"
OUTSIDE_REGIONS = "?"
DUMP_MAGIC = "TWINPROF 1"

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ProfileError(Exception):
    """A run's profile could not be produced; the message says what was wrong."""


# ---------------------------------------------------------------------------------------------
# Building the plugin
# ---------------------------------------------------------------------------------------------
def _plugin_hash(cc: str) -> str:
    h = hashlib.sha256()
    h.update(" ".join((cc, *PLUGIN_CFLAGS)).encode())
    for name in PLUGIN_SOURCES:
        h.update(name.encode() + b"\0")
        h.update((PLUGIN_SRC_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def build_plugin(out_dir: Path | str | None = None, cc: str = "gcc") -> Path:
    """Compile the plugin into ``out_dir`` (default: the twin's cache) and return the .so path.

    The file name carries a hash of the sources and flags, so it is rebuilt only when they
    change; it is compiled to a private temporary name and renamed into place, so parallel
    test processes never see (or load) a half-written library.
    """
    out = Path(out_dir) if out_dir is not None else cache_dir() / "plugin"
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"twin_plugin-{_plugin_hash(cc)}.so"
    if target.exists():
        return target
    fd, tmp_name = tempfile.mkstemp(prefix=".twin_plugin-", suffix=".so", dir=out)
    os.close(fd)
    cmd = [cc, *PLUGIN_CFLAGS, "-o", tmp_name, str(PLUGIN_SRC_DIR / "twin_plugin.c"), "-lpthread"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ProfileError(f"building the QEMU plugin failed ({' '.join(cmd)}):\n{proc.stderr}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


# ---------------------------------------------------------------------------------------------
# Plugin arguments
# ---------------------------------------------------------------------------------------------
def _is_arm(elf: ELFFile) -> bool:
    return elf.header["e_machine"] == "EM_ARM"


def mark_address(elf_path: Path | str, symbol: str = MARK_SYMBOL) -> int | None:
    """Address of the first instruction of ``twin_mark`` (Thumb bit cleared), or None."""
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise ProfileError(f"{elf_path} has no symbol table (stripped?): cannot find {symbol}")
        syms = symtab.get_symbol_by_name(symbol)
        if not syms:
            return None
        addr = int(syms[0]["st_value"])
        return addr & ~1 if _is_arm(elf) else addr


def _qemu_escape(value: str) -> str:
    """QEMU option values escape a comma by doubling it."""
    return value.replace(",", ",,")


def plugin_args(
    elf: Path | str,
    out_path: Path | str,
    mem_regions: Mapping[str, tuple[int, int]] | None = None,
    plugin: Path | str | None = None,
    edges: bool = False,
    entries: Iterable[int] = (),
    mark: bool = True,
    icaches: Iterable[CacheGeometry] = (),
    dcaches: Iterable[CacheGeometry] = (),
) -> list[str]:
    """``["-plugin", "<so>,out=...,mark=0x...[,mem=on,region=NAME:0xSTART:0xEND...][,edges=on]"]``.

    ``mem_regions`` maps a region name to ``(start, end)`` (end exclusive) and turns on the
    (costly) memory-traffic mode; accesses outside every region are counted under ``"?"``.
    ``plugin`` defaults to :func:`build_plugin` ``()``.  Without a ``twin_mark`` symbol the
    whole run is one segment.  ``edges`` turns on the (costly) exact TB-to-TB edge counts, from
    which :func:`analyze` takes exact taken / not-taken branch counts instead of deriving them.
    ``entries``: addresses of *entry cuts* (up to MAX_ENTRIES; the plugin's ``entry=``): every
    execution of one of them closes the segment just before it, and the dump says which cut closed
    each segment (``Dump.cuts``).  ``mark=False`` ignores the ELF's ``twin_mark`` (foreign firmware).
    ``icaches``: instruction caches to simulate (up to MAX_CACHES geometries, the plugin's ``icache=``);
    ``dcaches``: data caches the loads go through (``dcache=``, up to MAX_CACHES; with ``mem_regions`` only).
    """
    so = Path(plugin) if plugin is not None else build_plugin()
    opts = [_qemu_escape(str(so)), "out=" + _qemu_escape(str(out_path))]
    mark_at = mark_address(elf) if mark else None
    if mark_at is not None:
        opts.append(f"mark={mark_at:#x}")
    entries = list(entries)
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} entry cuts, got {len(entries)}")
    for addr in entries:
        if not 0 <= addr < 2**64:
            raise ValueError(f"entry address {addr:#x} out of range")
        opts.append(f"entry={addr:#x}")
    if mem_regions:
        if len(mem_regions) > MAX_REGIONS:
            raise ValueError(f"at most {MAX_REGIONS} memory regions, got {len(mem_regions)}")
        opts.append("mem=on")
        for name, (start, end) in mem_regions.items():
            if not _NAME_RE.match(name) or name == OUTSIDE_REGIONS:
                raise ValueError(f"region name {name!r}: use letters, digits, '_', '.', '-'")
            if not 0 <= start < end:
                raise ValueError(f"region {name!r}: need 0 <= start < end, got {start:#x}..{end:#x}")
            opts.append(f"region={name}:{start:#x}:{end:#x}")
    if edges:
        opts.append("edges=on")
    icaches, dcaches = list(icaches), list(dcaches)
    if dcaches and not mem_regions:
        raise ValueError("simulated data caches need the memory-traffic mode (mem_regions)")
    for kind, geoms in (("instruction", icaches), ("data", dcaches)):
        if len(geoms) > MAX_CACHES:
            raise ValueError(f"at most {MAX_CACHES} simulated {kind} caches, got {len(geoms)}")
        for g in geoms:
            if (g.line_bytes & (g.line_bytes - 1)) or (g.sets & (g.sets - 1)) or min(g.line_bytes, g.sets, g.ways) < 1 \
                    or not 0 <= g.start < g.end:
                raise ValueError(f"cache geometry {g}: line bytes and sets must be powers of two, ways >= 1, "
                                 "start < end")
    opts += [g.arg() for g in icaches] + [g.arg("dcache") for g in dcaches]
    return ["-plugin", ",".join(opts)]


# ---------------------------------------------------------------------------------------------
# The dump
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheGeometry:
    """An instruction cache the plugin simulates (``icache=``): true LRU, an optional next-line
    prefetch buffer, serving fetches from [start, end)."""

    line_bytes: int
    sets: int
    ways: int
    prefetch: bool
    start: int
    end: int

    @property
    def key(self) -> str:
        """How the counts name it: size / line / ways (+pf), e.g. ``4096B/8B/2w+pf``."""
        return (f"{self.line_bytes * self.sets * self.ways}B/{self.line_bytes}B/{self.ways}w"
                f"{'+pf' if self.prefetch else ''}")

    def arg(self, kind: str = "icache") -> str:
        pf = f":{int(self.prefetch)}" if kind == "icache" else ""
        return f"{kind}={self.line_bytes}:{self.sets}:{self.ways}{pf}:{self.start:#x}:{self.end:#x}"


INSTRUCTION_CACHE_KINDS = ("icache", "art", "xip-cache", "cache")
DATA_CACHE_KINDS = ("dcache",)


def cache_geometry(acc: Accelerator, start: int, end: int,
                   kinds: tuple[str, ...] = INSTRUCTION_CACHE_KINDS) -> CacheGeometry | None:
    """A catalog accelerator as a simulated cache over [start, end), None when it is none of ``kinds``
    (default: the instruction caches; DATA_CACHE_KINDS: the data caches) or states no full geometry
    (size, line, ways: sets = size / line / ways)."""
    if acc.kind not in kinds or not (acc.size_bytes and acc.line_bytes and acc.ways):
        return None
    return CacheGeometry(acc.line_bytes, acc.size_bytes // (acc.line_bytes * acc.ways), acc.ways, bool(acc.prefetch),
                         start, end)


def own_cache(accelerators: Iterable[Accelerator], start: int = 0, end: int = 1,
              kinds: tuple[str, ...] = INSTRUCTION_CACHE_KINDS) -> tuple[CacheGeometry, Accelerator] | None:
    """The first of a platform's accelerators that is a simulated cache of ``kinds`` (default: an
    instruction cache), as (geometry over [start, end), the accelerator), None when none states one."""
    for acc in accelerators:
        g = cache_geometry(acc, start, end, kinds)
        if g is not None:
            return g, acc
    return None


def catalog_caches(platform: Platform, kinds: tuple[str, ...] = INSTRUCTION_CACHE_KINDS) -> tuple[CacheGeometry, ...]:
    """The caches a run on ``platform`` simulates: the geometry of every catalog board of its ISA whose
    cache of ``kinds`` states one (``accelerators``: line_bytes, ways), the platform's own first, at most
    MAX_CACHES. Instruction caches serve the fetches from the platform's code window; data caches
    (DATA_CACHE_KINDS) the loads from its code and model windows (where weights and constants live).
    What-if predictions for a board then use the misses of its own geometry (calibration.cycles)."""
    start, end = platform.flash.origin, platform.flash.end
    if kinds != INSTRUCTION_CACHE_KINDS:
        lo, hi = sorted(((platform.flash.origin, platform.flash.end), (platform.model.origin, platform.model.end)))
        start, end = (lo[0], hi[1]) if lo[1] == hi[0] else (platform.model.origin, platform.model.end)
    boards = [platform, *(p for pid, p in sorted(all_platforms().items())
                          if pid != platform.id and p.isa == platform.isa)]
    out: dict[str, CacheGeometry] = {}
    for board in boards:
        for acc in board.accelerators:
            g = cache_geometry(acc, start, end, kinds)
            if g is not None and len(out) < MAX_CACHES:
                out.setdefault(g.key, g)
    return tuple(out.values())


@dataclass(frozen=True, eq=False)
class Dump:
    """Parsed plugin dump.  TB ``i``'s instructions are ``insn_addrs[tb_offsets[i]:tb_offsets[i+1]]``."""

    target: str
    mark: int | None
    tb_vaddr: np.ndarray  # (T,) uint64
    tb_offsets: np.ndarray  # (T+1,) int64
    insn_addrs: np.ndarray  # (sum of TB lengths,) uint64
    segments: tuple[tuple[np.ndarray, np.ndarray], ...]  # per segment: (tb ids, executions), int64
    regions: tuple[tuple[str, int, int], ...] = ()
    mem: np.ndarray | None = None  # (S, R+1, 2) int64: [segment, region or "?", loads/stores]
    # mem=on: per segment (instruction addresses, region buckets, loads, stores), int64; they add up
    # to mem (an address may appear more than once)
    mem_sites: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...] | None = None
    # edges=on only: per segment (source TB ids, destination TB ids, transitions), int64
    edges: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...] | None = None
    # entry= only: the entry-cut addresses, and per segment what closed it: (address, exact) of the
    # mark or entry, or None for the end of the run
    entries: tuple[int, ...] = ()
    cuts: tuple[tuple[int, bool] | None, ...] | None = None
    # icache= only: the simulated geometries (line bytes, sets, ways, prefetch, start, end), per
    # segment and geometry (lookups, misses, prefetched), and per segment and geometry the misses per
    # TB (tb ids, misses), which add up to the segment's misses
    icaches: tuple[CacheGeometry, ...] = ()
    cache: np.ndarray | None = None  # (S, G, 3) int64
    cache_misses: tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...] | None = None
    # dcache= only (mem=on): the simulated data caches, per segment and cache (load lookups, misses), and
    # per segment and cache the misses per instruction (addresses, misses), which add up to its misses
    dcaches: tuple[CacheGeometry, ...] = ()
    dcache: np.ndarray | None = None  # (S, G, 2) int64
    dcache_sites: tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...] | None = None

    @property
    def n_tbs(self) -> int:
        return len(self.tb_vaddr)

    @property
    def n_segments(self) -> int:
        return len(self.segments)


def _err(path: Path, lineno: int, what: str) -> ProfileError:
    return ProfileError(f"garbled plugin dump {path}, line {lineno}: {what}")


def parse_dump(path: Path | str) -> Dump:
    """Read a plugin dump; a missing, truncated or garbled file raises :class:`ProfileError`."""
    p = Path(path)
    if not p.exists():
        raise ProfileError(
            f"no plugin dump at {p}: QEMU exited before the plugin wrote its dump "
            "- did the emulator crash or get killed (timeout)?"
        )
    try:
        lines = p.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError as e:
        raise ProfileError(f"garbled plugin dump {p}: not ASCII text ({e})") from None
    if not lines or lines[0] != DUMP_MAGIC:
        raise ProfileError(f"{p} is not a twin plugin dump (first line should be {DUMP_MAGIC!r})")
    if not lines[-1].startswith("end "):
        raise ProfileError(f"truncated plugin dump {p}: the final 'end' line is missing")

    target = "?"
    mark: int | None = None
    regions: list[tuple[str, int, int]] = []
    tb_vaddr: list[int] = []
    tb_lengths: list[int] = []
    insn_addrs: list[int] = []
    segments: list[tuple[np.ndarray, np.ndarray]] = []
    mem_rows: list[list[int]] = []
    site_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    edge_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    entries: list[int] = []
    cut_rows: list[tuple[int, bool] | None] = []
    icaches: list[CacheGeometry] = []
    cache_rows: dict[tuple[int, int], list[int]] = {}
    miss_rows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    dcaches: list[CacheGeometry] = []
    dstat_rows: dict[tuple[int, int], list[int]] = {}
    dsite_rows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    end: tuple[int, int] | None = None

    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            raise _err(p, lineno, "empty line")
        tag = parts[0]
        try:
            if tag == "tb":
                tb_id, vaddr, n = int(parts[1]), int(parts[2], 16), int(parts[3])
                if tb_id != len(tb_vaddr) or len(parts) != 4 + n:
                    raise _err(p, lineno, f"tb record {tb_id} out of order or of wrong length")
                tb_vaddr.append(vaddr)
                tb_lengths.append(n)
                insn_addrs.extend(int(a, 16) for a in parts[4:])
            elif tag == "seg":
                k, n_pairs = int(parts[1]), int(parts[2])
                if k != len(segments) or len(parts) != 3 + 2 * n_pairs:
                    raise _err(p, lineno, f"segment {k} out of order or of wrong length")
                flat = np.array([int(x) for x in parts[3:]], dtype=np.int64)
                segments.append((flat[0::2].copy(), flat[1::2].copy()))
            elif tag == "edge":
                k, n_edges = int(parts[1]), int(parts[2])
                if k != len(edge_rows) or len(parts) != 3 + 3 * n_edges:
                    raise _err(p, lineno, f"edge record {k} out of order or of wrong length")
                flat = np.array([int(x) for x in parts[3:]], dtype=np.int64)
                edge_rows.append((flat[0::3].copy(), flat[1::3].copy(), flat[2::3].copy()))
            elif tag == "mem":
                k = int(parts[1])
                if k != len(mem_rows) or len(parts) != 2 + 2 * (len(regions) + 1):
                    raise _err(p, lineno, f"mem record {k} out of order or of wrong length")
                mem_rows.append([int(x) for x in parts[2:]])
            elif tag == "msite":
                k, n_sites = int(parts[1]), int(parts[2])
                if k != len(site_rows) or len(parts) != 3 + 4 * n_sites:
                    raise _err(p, lineno, f"msite record {k} out of order or of wrong length")
                flat = parts[3:]
                site_rows.append((np.array([int(a, 16) for a in flat[0::4]], dtype=np.int64),
                                  np.array([int(x) for x in flat[1::4]], dtype=np.int64),
                                  np.array([int(x) for x in flat[2::4]], dtype=np.int64),
                                  np.array([int(x) for x in flat[3::4]], dtype=np.int64)))
            elif tag == "region":
                idx, name, start, stop = int(parts[1]), parts[2], int(parts[3], 16), int(parts[4], 16)
                if idx != len(regions) or len(parts) != 5:
                    raise _err(p, lineno, "region record out of order")
                regions.append((name, start, stop))
            elif tag == "icache":
                if int(parts[1]) != len(icaches) or len(parts) != 8:
                    raise _err(p, lineno, "icache record out of order or of wrong length")
                icaches.append(CacheGeometry(int(parts[2]), int(parts[3]), int(parts[4]), parts[5] == "1",
                                             int(parts[6], 16), int(parts[7], 16)))
            elif tag == "cache":
                key = (int(parts[1]), int(parts[2]))
                if len(parts) != 6 or key in cache_rows or key[1] >= len(icaches):
                    raise _err(p, lineno, "cache record repeated, of wrong length or of an unknown geometry")
                cache_rows[key] = [int(x) for x in parts[3:]]
            elif tag == "cmiss":
                key, n_pairs = (int(parts[1]), int(parts[2])), int(parts[3])
                if len(parts) != 4 + 2 * n_pairs or key in miss_rows or key[1] >= len(icaches):
                    raise _err(p, lineno, "cmiss record repeated, of wrong length or of an unknown geometry")
                flat = np.array([int(x) for x in parts[4:]], dtype=np.int64)
                miss_rows[key] = (flat[0::2].copy(), flat[1::2].copy())
            elif tag == "dcache":
                if int(parts[1]) != len(dcaches) or len(parts) != 7:
                    raise _err(p, lineno, "dcache record out of order or of wrong length")
                dcaches.append(CacheGeometry(int(parts[2]), int(parts[3]), int(parts[4]), False,
                                             int(parts[5], 16), int(parts[6], 16)))
            elif tag == "dstat":
                key = (int(parts[1]), int(parts[2]))
                if len(parts) != 5 or key in dstat_rows or key[1] >= len(dcaches):
                    raise _err(p, lineno, "dstat record repeated, of wrong length or of an unknown cache")
                dstat_rows[key] = [int(x) for x in parts[3:]]
            elif tag == "dsite":
                key, n_pairs = (int(parts[1]), int(parts[2])), int(parts[3])
                if len(parts) != 4 + 2 * n_pairs or key in dsite_rows or key[1] >= len(dcaches):
                    raise _err(p, lineno, "dsite record repeated, of wrong length or of an unknown cache")
                flat = parts[4:]
                dsite_rows[key] = (np.array([int(a, 16) for a in flat[0::2]], dtype=np.int64),
                                   np.array([int(x) for x in flat[1::2]], dtype=np.int64))
            elif tag == "entry":
                if len(parts) != 2:
                    raise _err(p, lineno, "entry record of wrong length")
                entries.append(int(parts[1], 16))
            elif tag == "cut":
                k = int(parts[1])
                if k != len(cut_rows) or len(parts) != (3 if parts[2] == "-" else 4):
                    raise _err(p, lineno, f"cut record {k} out of order or of wrong length")
                cut_rows.append(None if parts[2] == "-" else (int(parts[2], 16), parts[3] == "1"))
            elif tag == "target":
                target = parts[1]
            elif tag == "mark":
                mark = None if parts[1] == "-" else int(parts[1], 16)
            elif tag == "end":
                if lineno != len(lines):
                    raise _err(p, lineno, "'end' before the end of the file")
                end = (int(parts[1]), int(parts[2]))
            else:
                raise _err(p, lineno, f"unknown record {tag!r}")
        except (ValueError, IndexError):
            raise _err(p, lineno, f"cannot parse {line[:60]!r}") from None

    assert end is not None  # the last line starts with "end "
    if end != (len(tb_vaddr), len(segments)):
        raise ProfileError(
            f"truncated plugin dump {p}: trailer announces {end[0]} TBs and {end[1]} segments, "
            f"found {len(tb_vaddr)} and {len(segments)}"
        )
    if not segments:
        raise ProfileError(f"plugin dump {p} has no segments")
    for k, (ids, counts) in enumerate(segments):
        if ids.size and (ids.min() < 0 or ids.max() >= len(tb_vaddr) or counts.min() <= 0):
            raise ProfileError(f"garbled plugin dump {p}: segment {k} names unknown TBs or counts <= 0")
    mem = None
    if mem_rows:
        if len(mem_rows) != len(segments):
            raise ProfileError(f"truncated plugin dump {p}: {len(mem_rows)} mem rows for "
                               f"{len(segments)} segments")
        mem = np.array(mem_rows, dtype=np.int64).reshape(len(segments), len(regions) + 1, 2)
    mem_sites = None
    if site_rows:
        if len(site_rows) != len(segments) or mem is None:
            raise ProfileError(f"truncated plugin dump {p}: {len(site_rows)} msite rows for "
                               f"{len(segments)} segments")
        for k, (_, bucket, loads, stores) in enumerate(site_rows):
            per = np.zeros((len(regions) + 1, 2), dtype=np.int64)
            if bucket.size and (bucket.min() < 0 or bucket.max() > len(regions)):
                raise ProfileError(f"garbled plugin dump {p}: msite record {k} names an unknown region")
            np.add.at(per, (bucket, 0), loads)
            np.add.at(per, (bucket, 1), stores)
            if not np.array_equal(per, mem[k]):
                raise ProfileError(f"garbled plugin dump {p}: the per-instruction accesses of segment {k} "
                                   "do not add up to its mem record")
        mem_sites = tuple(site_rows)

    edges = None
    if edge_rows:
        if len(edge_rows) != len(segments):
            raise ProfileError(f"truncated plugin dump {p}: {len(edge_rows)} edge rows for "
                               f"{len(segments)} segments")
        for k, (src, dst, cnt) in enumerate(edge_rows):
            if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= len(tb_vaddr)
                             or cnt.min() <= 0):
                raise ProfileError(f"garbled plugin dump {p}: edges of segment {k} name unknown TBs "
                                   "or counts <= 0")
        edges = tuple(edge_rows)

    cache = cache_misses = None
    if icaches:
        want = {(k, g) for k in range(len(segments)) for g in range(len(icaches))}
        if set(cache_rows) != want or set(miss_rows) != want:
            raise ProfileError(f"truncated plugin dump {p}: cache records do not cover every segment and "
                               f"cache ({len(cache_rows)} and {len(miss_rows)} for {len(want)})")
        cache = np.array([[cache_rows[k, g] for g in range(len(icaches))] for k in range(len(segments))],
                         dtype=np.int64)
        for (k, g), (ids, misses) in miss_rows.items():
            look, miss, pref = cache[k, g]
            if (ids.size and (ids.min() < 0 or ids.max() >= len(tb_vaddr) or misses.min() <= 0)) \
                    or int(misses.sum()) != miss or miss + pref > look:
                raise ProfileError(f"garbled plugin dump {p}: the cache misses of segment {k} (cache {g}) "
                                   "name unknown TBs or do not add up to its cache record")
        cache_misses = tuple(tuple(miss_rows[k, g] for g in range(len(icaches))) for k in range(len(segments)))
    elif cache_rows or miss_rows:
        raise ProfileError(f"garbled plugin dump {p}: cache records without an icache geometry")
    dcache = dcache_sites = None
    if dcaches:
        want = {(k, g) for k in range(len(segments)) for g in range(len(dcaches))}
        if set(dstat_rows) != want or set(dsite_rows) != want:
            raise ProfileError(f"truncated plugin dump {p}: data-cache records do not cover every segment and "
                               f"cache ({len(dstat_rows)} and {len(dsite_rows)} for {len(want)})")
        dcache = np.array([[dstat_rows[k, g] for g in range(len(dcaches))] for k in range(len(segments))],
                          dtype=np.int64)
        for (k, g), (_, misses) in dsite_rows.items():
            look, miss = dcache[k, g]
            if (misses.size and misses.min() <= 0) or int(misses.sum()) != miss or miss > look:
                raise ProfileError(f"garbled plugin dump {p}: the data-cache misses of segment {k} (cache {g}) "
                                   "do not add up to its dstat record")
        dcache_sites = tuple(tuple(dsite_rows[k, g] for g in range(len(dcaches))) for k in range(len(segments)))
    elif dstat_rows or dsite_rows:
        raise ProfileError(f"garbled plugin dump {p}: data-cache records without a dcache geometry")

    if cut_rows and len(cut_rows) != len(segments):
        raise ProfileError(f"truncated plugin dump {p}: {len(cut_rows)} cut rows for {len(segments)} segments")

    offsets = np.zeros(len(tb_lengths) + 1, dtype=np.int64)
    np.cumsum(tb_lengths, out=offsets[1:])
    return Dump(
        target=target,
        mark=mark,
        tb_vaddr=np.array(tb_vaddr, dtype=np.uint64),
        tb_offsets=offsets,
        insn_addrs=np.array(insn_addrs, dtype=np.uint64),
        segments=tuple(segments),
        regions=tuple(regions),
        mem=mem,
        mem_sites=mem_sites,
        edges=edges,
        entries=tuple(entries),
        cuts=tuple(cut_rows) if cut_rows else None,
        icaches=tuple(icaches),
        cache=cache,
        cache_misses=cache_misses,
        dcaches=tuple(dcaches),
        dcache=dcache,
        dcache_sites=dcache_sites,
    )


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentProfile:
    """What ran in one segment (between two marks).

    ``by_class`` has every class of ``twin.profile.isa.CLASSES``; ``by_function`` only functions that
    ran ("?" for addresses outside every function symbol); ``mem`` maps region name (and "?"
    for the rest) to ``{"loads": n, "stores": n}``, or is None when memory mode was off.
    """

    total: int
    by_class: dict[str, int]
    by_function: dict[str, int]
    mem: dict[str, dict[str, int]] | None = None
    # Instructions whose address objdump did not decode (counted as "other" in by_class).
    undecoded: int = field(default=0)
    # Control transfers (see "Taken branches" below): executions that left the straight line
    # (every unconditional jump, call, return, indirect branch, pop/ldr into pc, and the taken
    # conditional branches), conditional branches that fell through, and conditional-branch
    # executions whose split could not be derived (in neither of the other two).
    branches_taken: int = field(default=0)
    branches_not_taken: int = field(default=0)
    branches_unresolved: int = field(default=0)
    # Bytes of instructions executed (Σ executions × encoded size): what the fetch unit had to read,
    # e.g. half as many words for compressed RISC-V code as its instruction count suggests.
    fetch_bytes: int = field(default=0)
    # Per function (the keys of by_function): instructions by class (every class; the sums over the
    # functions are by_class, and each function's sum is its by_function entry) and executed
    # instruction bytes (they sum to fetch_bytes).
    by_function_class: dict[str, dict[str, int]] = field(default_factory=dict)
    fetch_bytes_by_function: dict[str, int] = field(default_factory=dict)
    # Taken branches per function of the branch instruction (only functions with some): they sum to
    # branches_taken. A conditional branch whose split is unresolved has no taken count to give a
    # function (none is guessed): its executions per function are in branches_unresolved_by_function,
    # which sums to branches_unresolved.
    branches_taken_by_function: dict[str, int] = field(default_factory=dict)
    branches_unresolved_by_function: dict[str, int] = field(default_factory=dict)
    # Loads/stores per function of the accessing instruction and region, as mem (None without the
    # plugin's per-instruction counts; summed over the functions, each region's figure is mem's)
    mem_by_function: dict[str, dict[str, dict[str, int]]] | None = None
    # Simulated instruction caches (plugin icache=), by CacheGeometry.key: {"lookups", "misses",
    # "prefetched"} (line lookups; misses and prefetch-buffer hits are not hits), and each cache's
    # misses per function of the missing TB (they sum to its misses). {} without a simulation.
    icache: dict[str, dict[str, int]] = field(default_factory=dict)
    icache_misses_by_function: dict[str, dict[str, int]] = field(default_factory=dict)
    # Simulated data caches (plugin dcache=, mem mode), by key: {"lookups", "misses"} of the loads from
    # the code and model windows, and each cache's misses per function of the loading instruction.
    dcache: dict[str, dict[str, int]] = field(default_factory=dict)
    dcache_misses_by_function: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class _FunctionTable:
    starts: np.ndarray  # sorted uint64
    ends: np.ndarray
    names: tuple[str, ...]

    def lookup(self, addrs: np.ndarray) -> np.ndarray:
        """Index into names for each address; len(names) (the "?" slot) when none contains it."""
        idx = np.searchsorted(self.starts, addrs, side="right").astype(np.int64) - 1
        inside = idx >= 0
        inside[inside] = addrs[inside] < self.ends[idx[inside]]
        return np.where(inside, idx, len(self.names))


def _function_table(elf_path: Path | str) -> _FunctionTable:
    """Function symbols of the ELF; a symbol without size extends to the next one (read once per file
    version: a bench asks for them per segment)."""
    st = Path(elf_path).stat()
    return _function_table_cached(str(elf_path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _function_table_cached(elf_path: str, mtime_ns: int, size: int) -> _FunctionTable:
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        arm = _is_arm(elf)
        symtab = elf.get_section_by_name(".symtab")
        entries: dict[int, tuple[int, str]] = {}
        if symtab is not None:
            for sym in symtab.iter_symbols():
                if sym["st_info"]["type"] != "STT_FUNC" or not sym.name:
                    continue
                start = int(sym["st_value"]) & (~1 if arm else ~0)
                size = int(sym["st_size"])
                old = entries.get(start)
                if old is None or (size, sym.name) > old:  # one name per address, deterministic
                    entries[start] = (size, sym.name)
    starts = sorted(entries)
    ends = []
    for i, s in enumerate(starts):
        size = entries[s][0]
        if size == 0:
            size = (starts[i + 1] - s) if i + 1 < len(starts) else 1
        ends.append(s + size)
    return _FunctionTable(
        starts=np.array(starts, dtype=np.uint64),
        ends=np.array(ends, dtype=np.uint64),
        names=tuple(entries[s][1] for s in starts),
    )


def _weighted_counts(keys: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Exact int64 sum of weights per key in [0, n)."""
    if weights.size == 0:
        return np.zeros(n, dtype=np.int64)
    if int(weights.sum()) < 2**53:  # float64 bincount is exact below 2**53
        return np.rint(np.bincount(keys, weights=weights, minlength=n)).astype(np.int64)
    out = np.zeros(n, dtype=np.int64)
    np.add.at(out, keys, weights)
    return out


def analyze(dump: Dump, elf: Path | str, arch: str,
            objdump_args: tuple[str, ...] = ()) -> list[SegmentProfile]:
    """One SegmentProfile per segment of the dump, attributed with the ELF that ran.

    ``arch`` is "arm" or "riscv" (aliases as in :func:`twin.profile.isa.normalize_arch`);
    ``objdump_args`` go to objdump (e.g. ``("-m", "armv8.1-m.main")`` for Helium).
    """
    a = isa.normalize_arch(arch)
    if dump.target != "?" and isa.normalize_arch(dump.target) != a:
        raise ProfileError(f"the dump comes from a {dump.target} guest, not {arch}")
    if not Path(elf).exists():
        raise ProfileError(f"ELF {elf} not found")
    try:
        insns = isa.disassemble(elf, a, objdump_args)
    except RuntimeError as e:
        raise ProfileError(str(e)) from None

    # Per distinct instruction address: class index, function index, decoded?
    uniq, flat_to_uniq = np.unique(dump.insn_addrs, return_inverse=True)
    class_index = {c: i for i, c in enumerate(isa.CLASSES)}
    other = class_index["other"]
    uniq_insns = [insns.get(int(x)) for x in uniq]
    decoded = np.array([i is not None for i in uniq_insns], dtype=bool)
    uniq_class = np.array([class_index[i.cls] if i else other for i in uniq_insns], dtype=np.int64)
    functions = _function_table(elf)
    uniq_func = functions.lookup(uniq)
    func_names = (*functions.names, UNKNOWN_FUNCTION)

    branches = _branch_info(dump, insns, a, elf, functions)
    flat_mid_cond = branches.uniq_cond[flat_to_uniq].astype(np.int64)
    flat_mid_cond[dump.tb_offsets[1:][np.diff(dump.tb_offsets) > 0] - 1] = 0  # last insns of TBs

    flat_class = uniq_class[flat_to_uniq]
    flat_func = uniq_func[flat_to_uniq]
    flat_undecoded = (~decoded[flat_to_uniq]).astype(np.int64)
    flat_size = np.array([i.size if i else 0 for i in uniq_insns], dtype=np.int64)[flat_to_uniq]
    n_func, n_cls = len(func_names), len(isa.CLASSES)
    flat_func_class = flat_func * n_cls + flat_class
    end_func = dict(zip(branches.ends.tolist(), functions.lookup(branches.ends).tolist(), strict=True))
    tb_len = np.diff(dump.tb_offsets)

    profiles = []
    for k, (ids, counts) in enumerate(dump.segments):
        lens = tb_len[ids]
        # Flat instruction indices of the executed TBs, and the execution count of each.
        flat_idx = np.repeat(dump.tb_offsets[ids] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        weights = np.repeat(counts, lens)
        by_class = _weighted_counts(flat_class[flat_idx], weights, len(isa.CLASSES))
        by_func = _weighted_counts(flat_func[flat_idx], weights, len(func_names))
        func_class = _weighted_counts(flat_func_class[flat_idx], weights, n_func * n_cls).reshape(n_func, n_cls)
        func_bytes = _weighted_counts(flat_func[flat_idx], weights * flat_size[flat_idx], n_func)
        undecoded = int((flat_undecoded[flat_idx] * weights).sum())
        taken, not_taken, unresolved, taken_f, unres_f = _branch_totals(branches, dump, k, ids, counts, end_func)
        not_taken += int((flat_mid_cond[flat_idx] * weights).sum())  # never seen (QEMU ends TBs there)
        ran = np.flatnonzero(by_func)
        profiles.append(SegmentProfile(
            total=int((counts * lens).sum()),
            by_class={c: int(by_class[i]) for i, c in enumerate(isa.CLASSES)},
            by_function={func_names[i]: int(n) for i, n in enumerate(by_func) if n},
            mem=_segment_mem(dump, k),
            undecoded=undecoded,
            branches_taken=taken,
            branches_not_taken=not_taken,
            branches_unresolved=unresolved,
            fetch_bytes=int((flat_size[flat_idx] * weights).sum()),
            by_function_class={func_names[i]: {c: int(func_class[i, j]) for j, c in enumerate(isa.CLASSES)}
                               for i in ran},
            fetch_bytes_by_function={func_names[i]: int(func_bytes[i]) for i in ran},
            branches_taken_by_function={func_names[i]: n for i, n in sorted(taken_f.items()) if n},
            branches_unresolved_by_function={func_names[i]: n for i, n in sorted(unres_f.items()) if n},
            mem_by_function=_segment_mem_by_function(dump, k, functions, func_names),
            **_segment_cache(dump, k, functions, func_names),
        ))
    return profiles


def _segment_cache(dump: Dump, k: int, functions: _FunctionTable, func_names: tuple[str, ...]) -> dict:
    """SegmentProfile's icache fields of segment k (a TB's misses are its first instruction's function's)."""
    out: dict = {}
    if dump.cache is not None and dump.cache_misses is not None:
        stats, by_fn = {}, {}
        for g, geom in enumerate(dump.icaches):
            look, miss, pref = (int(x) for x in dump.cache[k, g])
            stats[geom.key] = {"lookups": look, "misses": miss, "prefetched": pref}
            ids, misses = dump.cache_misses[k][g]
            fn = functions.lookup(dump.tb_vaddr[ids]) if ids.size else np.zeros(0, dtype=np.int64)
            per = _weighted_counts(fn, misses, len(func_names))
            by_fn[geom.key] = {func_names[i]: int(n) for i, n in enumerate(per) if n}
        out |= {"icache": stats, "icache_misses_by_function": by_fn}
    if dump.dcache is not None and dump.dcache_sites is not None:
        stats, by_fn = {}, {}
        for g, geom in enumerate(dump.dcaches):
            look, miss = (int(x) for x in dump.dcache[k, g])
            stats[geom.key] = {"lookups": look, "misses": miss}
            addrs, misses = dump.dcache_sites[k][g]
            fn = functions.lookup(addrs.astype(np.uint64)) if addrs.size else np.zeros(0, dtype=np.int64)
            per = _weighted_counts(fn, misses, len(func_names))
            by_fn[geom.key] = {func_names[i]: int(n) for i, n in enumerate(per) if n}
        out |= {"dcache": stats, "dcache_misses_by_function": by_fn}
    return out


def _segment_mem(dump: Dump, k: int) -> dict[str, dict[str, int]] | None:
    if dump.mem is None:
        return None
    names = [r[0] for r in dump.regions] + [OUTSIDE_REGIONS]
    return {n: {"loads": int(dump.mem[k, i, 0]), "stores": int(dump.mem[k, i, 1])}
            for i, n in enumerate(names)}


def _segment_mem_by_function(dump: Dump, k: int, functions: _FunctionTable,
                             func_names: tuple[str, ...]) -> dict[str, dict[str, dict[str, int]]] | None:
    if dump.mem_sites is None:
        return None
    addrs, bucket, loads, stores = dump.mem_sites[k]
    names = [r[0] for r in dump.regions] + [OUTSIDE_REGIONS]
    fn = functions.lookup(addrs.astype(np.uint64)) if addrs.size else np.zeros(0, dtype=np.int64)
    out: dict[str, dict[str, dict[str, int]]] = {}
    for f, b, n_ld, n_st in zip(fn.tolist(), bucket.tolist(), loads.tolist(), stores.tolist(), strict=True):
        acc = out.setdefault(func_names[f], {}).setdefault(names[b], {"loads": 0, "stores": 0})
        acc["loads"] += n_ld
        acc["stores"] += n_st
    return out


def function_table(p: SegmentProfile) -> dict[str, dict]:
    """Per function of a profile: instructions, the non-zero classes, instruction bytes, taken and
    unresolved conditional branches (and, where counted, loads/stores per region and each simulated
    cache's misses), as plain numbers ({} when the backend counted no functions)."""
    return {f: {"instructions": p.by_function.get(f, 0),
                "by_class": {c: n for c, n in by_class.items() if n},
                "fetch_bytes": p.fetch_bytes_by_function.get(f, 0),
                "branches_taken": p.branches_taken_by_function.get(f, 0),
                "branches_unresolved": p.branches_unresolved_by_function.get(f, 0),
                **({} if p.mem_by_function is None else {"mem": p.mem_by_function.get(f, {})}),
                **({} if not p.icache else
                   {"icache_misses": {k: m.get(f, 0) for k, m in p.icache_misses_by_function.items()}}),
                **({} if not p.dcache else
                   {"dcache_misses": {k: m.get(f, 0) for k, m in p.dcache_misses_by_function.items()}})}
            for f, by_class in sorted(p.by_function_class.items())}


def sum_profiles(profiles: Iterable[SegmentProfile]) -> SegmentProfile:
    """Add segment profiles (e.g. all segments of one token, or a whole run)."""
    total = 0
    undecoded = 0
    taken = not_taken = unresolved = fetch_bytes = 0
    by_class = dict.fromkeys(isa.CLASSES, 0)
    by_function: dict[str, int] = {}
    mem: dict[str, dict[str, int]] | None = None
    func_class: dict[str, dict[str, int]] = {}
    func_bytes: dict[str, int] = {}
    func_taken: dict[str, int] = {}
    func_unres: dict[str, int] = {}
    profiles = list(profiles)
    # per function and region only when every profile has them (else a partial sum would look whole)
    func_mem: dict[str, dict[str, dict[str, int]]] | None = (
        {} if profiles and all(p.mem_by_function is not None for p in profiles) else None)
    # cache figures only for caches every profile simulated
    keys = set.intersection(*(set(p.icache) for p in profiles)) if profiles else set()
    icache = {key: {"lookups": 0, "misses": 0, "prefetched": 0} for key in sorted(keys)}
    icache_fn: dict[str, dict[str, int]] = {key: {} for key in sorted(keys)}
    dkeys = set.intersection(*(set(p.dcache) for p in profiles)) if profiles else set()
    dcache = {key: {"lookups": 0, "misses": 0} for key in sorted(dkeys)}
    dcache_fn: dict[str, dict[str, int]] = {key: {} for key in sorted(dkeys)}
    for p in profiles:
        total += p.total
        undecoded += p.undecoded
        taken += p.branches_taken
        not_taken += p.branches_not_taken
        unresolved += p.branches_unresolved
        fetch_bytes += p.fetch_bytes
        for c, n in p.by_class.items():
            by_class[c] = by_class.get(c, 0) + n
        for f, n in p.by_function.items():
            by_function[f] = by_function.get(f, 0) + n
        for f, cls in p.by_function_class.items():
            acc_c = func_class.setdefault(f, dict.fromkeys(isa.CLASSES, 0))
            for c, n in cls.items():
                acc_c[c] = acc_c.get(c, 0) + n
        for acc_f, add in ((func_bytes, p.fetch_bytes_by_function), (func_taken, p.branches_taken_by_function),
                           (func_unres, p.branches_unresolved_by_function)):
            for f, n in add.items():
                acc_f[f] = acc_f.get(f, 0) + n
        if p.mem is not None:
            mem = mem if mem is not None else {}
            for r, d in p.mem.items():
                acc = mem.setdefault(r, {"loads": 0, "stores": 0})
                acc["loads"] += d["loads"]
                acc["stores"] += d["stores"]
        for stats, fns, ks, mine, mine_fn in ((icache, icache_fn, keys, p.icache, p.icache_misses_by_function),
                                              (dcache, dcache_fn, dkeys, p.dcache, p.dcache_misses_by_function)):
            for key in ks:
                for stat, n in mine[key].items():
                    stats[key][stat] += n
                for f, n in mine_fn.get(key, {}).items():
                    fns[key][f] = fns[key].get(f, 0) + n
        if func_mem is not None:
            for f, regions in p.mem_by_function.items():
                for r, d in regions.items():
                    acc = func_mem.setdefault(f, {}).setdefault(r, {"loads": 0, "stores": 0})
                    acc["loads"] += d["loads"]
                    acc["stores"] += d["stores"]
    return SegmentProfile(total, by_class, by_function, mem, undecoded, taken, not_taken, unresolved, fetch_bytes,
                          func_class, func_bytes, func_taken, func_unres, func_mem, icache, icache_fn, dcache,
                          dcache_fn)


# ---------------------------------------------------------------------------------------------
# Taken branches
# ---------------------------------------------------------------------------------------------
# QEMU ends a translated block (TB) at every instruction that may change the PC, and sometimes
# elsewhere (TB size limit, guest page boundary, semihosting): a TB then simply falls through.
# The dump gives executions per TB, not per edge, so the split of each *conditional* branch
# (taken / fell through) is derived from flow conservation at TB entry addresses:
#
#     executions of TBs starting at A  =  sum over the transfers that end a TB and go to A
#
# Transfers into A: the fall-through of the instruction P just before A when P ended a TB
# (P not a branch: all of its TB-ending executions; P a conditional branch: its not-taken ones),
# and every direct branch whose target is A (unconditional jump or call: all its executions;
# conditional: its taken ones).  Addresses that may also be entered in ways the disassembly does
# not show are never used: function starts (indirect calls, vectors), the ELF entry, return sites
# (after a call), tbb/tbh table targets, and every address that appears as a 32-bit word in a
# loaded section (jump tables, literal pools, vector tables).  Each usable address gives one
# linear equation in the unknown taken counts; those with one unknown are solved, repeatedly,
# until nothing changes.  A solution outside 0..executions is rejected.  Conditional branches
# left unsolved are *unresolved*: counted in neither taken nor not-taken (no assumption made),
# so taken + not_taken + unresolved = all control-transfer executions.
#
# With edges=on the plugin counts the transitions between TBs, and the split is exact: a
# conditional branch's executions that continued anywhere but at its fall-through address were
# taken.  Exceptions and interrupts would break the derivation (an unmodelled transfer); the
# firmware runs without them, and the edge mode checks the derivation on real runs.
#
# "Taken" counts every executed transfer that left the straight line: unconditional direct
# branches and calls, returns, indirect branches (bx, blx rN, tbb/tbh, jalr), and loads into the
# PC (pop {..., pc}, ldr pc) although twin.profile.isa classes the latter as loads.  Armv8.1-M dls is
# not a transfer; le lr / wls are conditional; a conditional branch that QEMU would not end a
# TB at (never seen) counts as not taken.

_NONE, _COND, _JUMP, _CALL, _ICALL, _IJUMP, _UNKNOWN = range(7)
_TAKEN_KINDS = (_JUMP, _CALL, _ICALL, _IJUMP)
_ARM_BRANCH_BASES = frozenset(
    "b bl blx bx bxns blxns cbz cbnz tbb tbh le letp dls dlstp wls wlstp".split())
_ARM_CONDS = frozenset("eq ne cs hs cc lo mi pl vs vc hi ls ge lt gt le".split())
_TARGET_RE = re.compile(r"(?:^|[\s,])([0-9a-f]+)\s*<")
_PC_LIST_RE = re.compile(r"\{[^}]*\bpc\b[^}]*\}")
_RV_COND = frozenset("beq bne blt bge bltu bgeu beqz bnez".split())


def _target(operands: str) -> int | None:
    m = _TARGET_RE.findall(operands)
    return int(m[-1], 16) if m else None


def _arm_split(name: str, bases: frozenset[str] | tuple[str, ...]) -> tuple[str, bool] | None:
    """(base mnemonic, conditional?) when ``name`` is a base or a base + condition code."""
    if name in bases:
        return name, False
    if len(name) > 2 and name[:-2] in bases and (name[-2:] in _ARM_CONDS or name[-2:] == "al"):
        return name[:-2], name[-2:] != "al"
    return None


def branch_kind(insn: isa.Insn | None, arch: str) -> tuple[int, int | None]:
    """(kind, direct target) of one instruction for the taken-branch derivation."""
    if insn is None:
        return _UNKNOWN, None
    m = insn.mnemonic.lower()
    name = m.split(".")[0]
    ops = insn.operands.lower()
    if arch == "arm":
        if insn.cls == "branch":
            split = _arm_split(name, _ARM_BRANCH_BASES)
            if split is None:
                return _UNKNOWN, None
            base, cond = split
            target = _target(ops)
            if base in ("dls", "dlstp"):
                return _NONE, None
            if base in ("cbz", "cbnz", "wls", "wlstp") or (base in ("le", "letp") and ops.startswith("lr")):
                return _COND, target
            if base in ("b", "le", "letp"):
                return (_COND if cond else _JUMP), target
            if cond:  # conditional call or indirect branch inside an IT block
                return (_UNKNOWN, None) if base.startswith("bl") else (_COND, None)
            if base == "bl" or (base in ("blx", "blxns") and target is not None):
                return _CALL, target
            if base in ("blx", "blxns"):
                return _ICALL, None
            return _IJUMP, None  # bx, tbb, tbh
        split = _arm_split(name, ("pop", "ldm", "ldmia", "ldmfd", "ldr", "mov", "add"))
        if split is not None:
            base, cond = split
            writes_pc = (_PC_LIST_RE.search(ops) is not None if base in ("pop", "ldm", "ldmia", "ldmfd")
                         else ops.startswith("pc,") or ops == "pc")
            if writes_pc:
                return (_COND, None) if cond else (_IJUMP, None)
        return _NONE, None
    # RISC-V, objdump -M no-aliases
    if m.startswith("c."):
        name = m[2:].split(".")[0]
    if name in _RV_COND:
        return _COND, _target(ops)
    if name == "jal":
        if m.startswith("c."):
            return _CALL, _target(ops)  # c.jal (RV32)
        return (_JUMP if ops.startswith("zero,") else _CALL), _target(ops)
    if name == "j":
        return _JUMP, _target(ops)
    if name == "jr" or (name == "jalr" and (ops.startswith("zero,") or ops.startswith("x0,"))):
        return _IJUMP, None
    if name == "jalr":
        return _ICALL, None
    if name in ("mret", "sret", "uret"):
        return _IJUMP, None
    return _NONE, None


def _table_jump(insn: isa.Insn, arch: str) -> bool:
    """An indirect jump that is neither a return nor a decoded table (tbb/tbh, words of addresses)."""
    m = insn.mnemonic.lower()
    ops = insn.operands.lower().replace(" ", "")
    if arch == "arm":
        return m.split(".")[0] in ("bx", "mov") and not ops.startswith("lr") and (m.startswith("bx")
                                                                                   or ops.startswith("pc,"))
    if m == "c.jr":
        return ops != "ra"
    return m == "jalr" and ops.startswith("zero,") and not ops.endswith("(ra)")


@dataclass(frozen=True, eq=False)
class _BranchInfo:
    """Static facts for the derivation, indexed like the dump's TBs and their end addresses."""

    tb_end: np.ndarray  # (T,) index into ends: each TB's last instruction
    tb_start: np.ndarray  # (T,) index into starts
    ends: np.ndarray  # unique last-instruction addresses (uint64)
    starts: np.ndarray  # unique TB start addresses (uint64)
    end_kind: np.ndarray  # (E,) kind of each end instruction
    end_target: list[int | None]
    end_fall: np.ndarray  # (E,) address after each end instruction (uint64)
    kind: dict[int, tuple[int, int | None]]  # every decoded instruction
    fall_pred: dict[int, int]  # address -> the instruction just before it
    direct_preds: dict[int, list[int]]  # address -> direct branches (jump/call/cond) targeting it
    opaque: frozenset[int]  # addresses with predecessors the disassembly does not show
    uniq_cond: np.ndarray  # per unique dump instruction address (np.unique order): conditional?


_ANNOT_RE = re.compile(r"#\s*([0-9a-f]+)\b")


def _loaded_sections(elf_path: Path | str) -> list[tuple[int, bytes]]:
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        return [(int(sec["sh_addr"]), sec.data()) for sec in elf.iter_sections()
                if sec["sh_flags"] & 0x2 and sec["sh_type"] != "SHT_NOBITS"]  # SHF_ALLOC


def _offset_table(mem: list[tuple[int, bytes]], base: int, insns: Mapping[int, isa.Insn],
                  functions: _FunctionTable, func: int) -> set[int]:
    """Targets of a table of int32 offsets from ``base`` that land in function ``func``."""
    for start, data in mem:
        if start <= base < start + len(data):
            out: set[int] = set()
            p = base - start
            while p + 4 <= len(data) and len(out) < 4096:
                t = base + int.from_bytes(data[p:p + 4], "little", signed=True)
                if t not in insns or int(functions.lookup(np.array([t], dtype=np.uint64))[0]) != func:
                    break
                out.add(t)
                p += 4
            return out
    return set()


def _word_targets(elf_path: Path | str, arm: bool, code: Mapping[int, isa.Insn]) -> set[int]:
    """Instruction addresses that appear as aligned 32-bit words in the ELF's loaded sections."""
    out: set[int] = set()
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            if not sec["sh_flags"] & 0x2 or sec["sh_type"] == "SHT_NOBITS":  # SHF_ALLOC
                continue
            data = sec.data()
            skip = (-int(sec["sh_addr"])) % 4
            n = (len(data) - skip) // 4
            if n <= 0:
                continue
            words = np.frombuffer(data, dtype="<u4", count=n, offset=skip)
            if arm:
                words = words & np.uint32(0xFFFFFFFE)
            out.update(int(w) for w in np.unique(words) if int(w) in code)
    return out


def _table_targets(insns: Mapping[int, isa.Insn], addr: int, half: bool) -> set[int]:
    """Targets of a Thumb tbb/tbh table (the data objdump prints after the instruction)."""
    base = addr + 4
    raw = bytearray()
    a = base
    while (i := insns.get(a)) is not None and i.mnemonic in (".byte", ".short", ".hword", ".word"):
        try:
            raw += int(i.operands.split()[0], 16).to_bytes(i.size, "little")
        except (ValueError, IndexError, OverflowError):
            break
        a += i.size
    step = 2 if half else 1
    return {base + 2 * int.from_bytes(raw[j:j + step], "little") for j in range(0, len(raw) - step + 1, step)}


_BRANCH_CACHE: dict[tuple, tuple[dict, dict, dict, frozenset]] = {}


def _static_branches(insns: Mapping[int, isa.Insn], arch: str, elf: Path | str,
                     functions: _FunctionTable) -> tuple[dict, dict, dict, frozenset]:
    st = Path(elf).stat()
    key = (str(Path(elf).resolve()), st.st_mtime_ns, st.st_size, arch, id(insns))
    hit = _BRANCH_CACHE.get(key)
    if hit is not None:
        return hit
    kind: dict[int, tuple[int, int | None]] = {}
    fall_pred: dict[int, int] = {}
    direct: dict[int, list[int]] = {}
    opaque: set[int] = {int(x) for x in functions.starts}
    with open(elf, "rb") as f:
        opaque.add(int(ELFFile(f).header["e_entry"]) & (~1 if arch == "arm" else ~0))
    for addr, insn in insns.items():
        k, t = branch_kind(insn, arch)
        kind[addr] = (k, t)
        if not insn.mnemonic.startswith("."):
            fall_pred[addr + insn.size] = addr
        if t is not None and k in (_COND, _JUMP, _CALL):
            direct.setdefault(t, []).append(addr)
        if k in (_CALL, _ICALL, _UNKNOWN):
            opaque.add(addr + insn.size)  # return site
        if arch == "arm" and insn.mnemonic.split(".")[0] in ("tbb", "tbh"):
            opaque |= _table_targets(insns, addr, insn.mnemonic.startswith("tbh"))
    opaque |= _word_targets(elf, arch == "arm", insns)
    # Indirect jumps other than returns whose targets are not decoded (RISC-V switch tables hold
    # offsets; an Arm "bx rN"): every address of the function may be entered from them.
    # A RISC-V table of offsets from its base, which an auipc/addi pair just before names
    # ("addi a4,a4,-62 # 80005100"), is decoded; otherwise the whole function is opaque.
    order = sorted(insns)
    fidx = functions.lookup(np.array(order, dtype=np.uint64))
    mem = _loaded_sections(elf)
    jumpy: set[int] = set()
    for i, a in enumerate(order):
        if not _table_jump(insns[a], arch):
            continue
        targets: set[int] = set()
        for j in range(max(0, i - 8), i):
            m = _ANNOT_RE.search(insns[order[j]].operands)
            if arch == "riscv" and m and insns[order[j]].mnemonic.endswith("addi"):
                targets |= _offset_table(mem, int(m.group(1), 16), insns, functions, int(fidx[i]))
        if targets:
            opaque |= targets
        else:
            jumpy.add(int(fidx[i]))
    opaque |= {a for i, a in enumerate(order) if int(fidx[i]) in jumpy}
    out = (kind, fall_pred, direct, frozenset(opaque))
    if len(_BRANCH_CACHE) > 8:
        _BRANCH_CACHE.clear()
    _BRANCH_CACHE[key] = out
    return out


def _branch_info(dump: Dump, insns: Mapping[int, isa.Insn], arch: str, elf: Path | str,
                 functions: _FunctionTable) -> _BranchInfo:
    kind, fall_pred, direct, opaque = _static_branches(insns, arch, elf, functions)
    lens = np.diff(dump.tb_offsets)
    last = np.where(lens > 0, dump.insn_addrs[np.maximum(dump.tb_offsets[1:] - 1, 0)], dump.tb_vaddr)
    ends, tb_end = np.unique(last, return_inverse=True)
    starts, tb_start = np.unique(dump.tb_vaddr, return_inverse=True)
    end_kind = np.empty(len(ends), dtype=np.int64)
    end_target: list[int | None] = []
    end_fall = np.empty(len(ends), dtype=np.uint64)
    for j, e in enumerate(ends.tolist()):
        k, t = kind.get(e, (_UNKNOWN, None))
        end_kind[j] = k
        end_target.append(t)
        i = insns.get(e)
        end_fall[j] = e + (i.size if i is not None else 0)
    uniq = np.unique(dump.insn_addrs)
    uniq_cond = np.array([kind.get(a, (_NONE, None))[0] == _COND for a in uniq.tolist()], dtype=bool)
    return _BranchInfo(tb_end.astype(np.int64), tb_start.astype(np.int64), ends, starts, end_kind,
                       end_target, end_fall, kind, fall_pred, direct, opaque, uniq_cond)


def _derive_splits(b: _BranchInfo, ids: np.ndarray, counts: np.ndarray
                   ) -> tuple[dict[int, int], dict[int, int | None]]:
    """(executions per TB-ending instruction address, taken count or None per conditional one)."""
    exec_e = _weighted_counts(b.tb_end[ids], counts, len(b.ends))
    start_n = _weighted_counts(b.tb_start[ids], counts, len(b.starts))
    execs = {int(b.ends[j]): int(exec_e[j]) for j in np.flatnonzero(exec_e)}
    entered = {int(b.starts[j]): int(start_n[j]) for j in np.flatnonzero(start_n)}
    kind = b.kind
    conds = {e for e in execs if kind.get(e, (_UNKNOWN, None))[0] == _COND}
    taken: dict[int, int | None] = dict.fromkeys(conds)

    def fall_of(e: int) -> int:
        return e + _insn_size(b, e)

    degenerate = {e for e in conds if kind[e][1] == fall_of(e)}
    # One equation per address a conditional branch may go to.
    equations: list[tuple[int, list[tuple[int, int]]]] = []  # (rhs, [(branch, coef)])
    wanted = {fall_of(e) for e in conds} | {kind[e][1] for e in conds if kind[e][1] is not None}
    for a in wanted:
        if a in b.opaque:
            continue
        rhs = entered.get(a, 0)
        terms: list[tuple[int, int]] = []
        ok = True
        p = b.fall_pred.get(a)
        if p is not None and p in execs:
            k = kind.get(p, (_UNKNOWN, None))[0]
            if k == _NONE or p in degenerate:
                rhs -= execs[p]
            elif k == _COND:
                rhs -= execs[p]
                terms.append((p, -1))
            elif k not in (_JUMP, _IJUMP):
                ok = False
        for s in b.direct_preds.get(a, ()):
            if s not in execs or s == p and s in degenerate:
                continue
            k = kind[s][0]
            if k == _COND:
                if s not in degenerate:
                    terms.append((s, 1))
            else:
                rhs -= execs[s]
        if ok and terms:
            equations.append((rhs, terms))
    suspect: set[int] = set()
    changed = True
    while changed:
        changed = False
        rest = []
        for rhs, terms in equations:
            unknown = [(s, c) for s, c in terms if taken.get(s) is None]
            if len(unknown) > 1:
                rest.append((rhs, terms))
                continue
            if not unknown:  # over-determined: a contradiction means an unmodelled transfer
                if sum(c * taken[t] for t, c in terms) != rhs:  # type: ignore[operator]
                    suspect.update(t for t, _ in terms)
                continue
            if len(unknown) == 1:
                s, c = unknown[0]
                known = sum(c2 * taken[t] for t, c2 in terms if t != s)  # type: ignore[operator]
                x = (rhs - known) * c  # c is +1 or -1
                if 0 <= x <= execs[s]:
                    taken[s] = x
                    changed = True
        equations = rest
    for e in degenerate | suspect:
        taken[e] = None
    return execs, taken


def _insn_size(b: _BranchInfo, addr: int) -> int:
    j = int(np.searchsorted(b.ends, addr))
    if j < len(b.ends) and int(b.ends[j]) == addr:
        return int(b.end_fall[j]) - addr
    return 0


def _exact_splits(b: _BranchInfo, dump: Dump, k: int, ids: np.ndarray, counts: np.ndarray
                  ) -> tuple[dict[int, int], dict[int, int | None]]:
    """Like :func:`_derive_splits`, from the plugin's edge counts: a conditional branch was taken
    whenever its block was followed by a block that does not start at its fall-through address. One
    whose target is its fall-through cannot be told either way: unresolved (None)."""
    assert dump.edges is not None
    exec_e = _weighted_counts(b.tb_end[ids], counts, len(b.ends))
    execs = {int(b.ends[j]): int(exec_e[j]) for j in np.flatnonzero(exec_e)}
    src, dst, cnt = dump.edges[k]
    src_end = b.tb_end[src]
    moved = (b.end_kind[src_end] == _COND) & (dump.tb_vaddr[dst] != b.end_fall[src_end])
    taken_e = _weighted_counts(src_end[moved], cnt[moved], len(b.ends))
    taken: dict[int, int | None] = {}
    for e, n in execs.items():
        kd, target = b.kind.get(e, (_UNKNOWN, None))
        if kd == _COND:
            j = int(np.searchsorted(b.ends, e))
            taken[e] = None if target == int(b.end_fall[j]) else min(int(taken_e[j]), n)
    return execs, taken


def _branch_totals(b: _BranchInfo, dump: Dump, k: int, ids: np.ndarray, counts: np.ndarray,
                   end_func: Mapping[int, int]) -> tuple[int, int, int, dict[int, int], dict[int, int]]:
    """(taken, not taken, unresolved) executions of the segment's control transfers, and per function
    (``end_func``: a TB-ending address -> its function index) the taken ones and the unresolved ones.
    Each transfer is counted at its own address, so the per-function split is as exact as the totals."""
    if dump.edges is not None:
        execs, taken = _exact_splits(b, dump, k, ids, counts)
    else:
        execs, taken = _derive_splits(b, ids, counts)
    n_taken = n_not = n_unres = 0
    taken_f: dict[int, int] = {}
    unres_f: dict[int, int] = {}
    for e, n in execs.items():
        kd = b.kind.get(e, (_UNKNOWN, None))[0]
        if kd in _TAKEN_KINDS:
            n_taken += n
            taken_f[end_func[e]] = taken_f.get(end_func[e], 0) + n
        elif kd == _COND:
            t = taken[e]
            if t is None:
                n_unres += n
                unres_f[end_func[e]] = unres_f.get(end_func[e], 0) + n
            else:
                n_taken += t
                n_not += n - t
                taken_f[end_func[e]] = taken_f.get(end_func[e], 0) + t
    return n_taken, n_not, n_unres, taken_f, unres_f


def branch_splits(dump: Dump, elf: Path | str, arch: str, objdump_args: tuple[str, ...] = (), *,
                  exact: bool = False) -> list[dict[int, tuple[int, int, int | None]]]:
    """Per segment: conditional branch address -> (executions, taken, taken or None).

    The middle value is the exact taken count from the edge counts (``exact=True``, needs a
    dump made with edges=on; else None), the last the derived one (None: unresolved).
    """
    a = isa.normalize_arch(arch)
    insns = isa.disassemble(elf, a, objdump_args)
    b = _branch_info(dump, insns, a, elf, _function_table(elf))
    if exact and dump.edges is None:
        raise ProfileError("exact branch counts need a dump made with edges=on")
    out = []
    for k, (ids, counts) in enumerate(dump.segments):
        execs, derived = _derive_splits(b, ids, counts)
        exact_t = _exact_splits(b, dump, k, ids, counts)[1] if exact else {}
        out.append({e: (execs[e], exact_t.get(e), t) for e, t in derived.items()})
    return out
