"""Exact execution profiles from the QEMU plugin (firmware/plugin/twin_plugin.c).

Flow: :func:`build_plugin` compiles the plugin once per source version; :func:`plugin_args` gives
the ``-plugin`` option for one run (the mark address comes from the ELF's ``twin_mark`` symbol);
at exit the plugin writes a dump that :func:`parse_dump` reads; :func:`analyze` expands the
per-translation-block counts to instructions and attributes them to classes (``twin.isa``) and
functions (ELF symbol table), one :class:`SegmentProfile` per interval between marks.
"""

from __future__ import annotations

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

from twin import isa
from twin.build import cache_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC_DIR = REPO_ROOT / "firmware" / "plugin"
PLUGIN_SOURCES = ("twin_plugin.c", "qemu_plugin_api.h")
PLUGIN_CFLAGS = ("-O2", "-g", "-Wall", "-Wextra", "-std=gnu11", "-fPIC", "-shared",
                 "-fvisibility=hidden")
MARK_SYMBOL = "twin_mark"
MAX_REGIONS = 8
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
) -> list[str]:
    """``["-plugin", "<so>,out=...,mark=0x...[,mem=on,region=NAME:0xSTART:0xEND...]"]``.

    ``mem_regions`` maps a region name to ``(start, end)`` (end exclusive) and turns on the
    (costly) memory-traffic mode; accesses outside every region are counted under ``"?"``.
    ``plugin`` defaults to :func:`build_plugin` ``()``.  Without a ``twin_mark`` symbol the
    whole run is one segment.
    """
    so = Path(plugin) if plugin is not None else build_plugin()
    opts = [_qemu_escape(str(so)), "out=" + _qemu_escape(str(out_path))]
    mark = mark_address(elf)
    if mark is not None:
        opts.append(f"mark={mark:#x}")
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
    return ["-plugin", ",".join(opts)]


# ---------------------------------------------------------------------------------------------
# The dump
# ---------------------------------------------------------------------------------------------
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
            elif tag == "mem":
                k = int(parts[1])
                if k != len(mem_rows) or len(parts) != 2 + 2 * (len(regions) + 1):
                    raise _err(p, lineno, f"mem record {k} out of order or of wrong length")
                mem_rows.append([int(x) for x in parts[2:]])
            elif tag == "region":
                idx, name, start, stop = int(parts[1]), parts[2], int(parts[3], 16), int(parts[4], 16)
                if idx != len(regions) or len(parts) != 5:
                    raise _err(p, lineno, "region record out of order")
                regions.append((name, start, stop))
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
    )


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentProfile:
    """What ran in one segment (between two marks).

    ``by_class`` has every class of ``twin.isa.CLASSES``; ``by_function`` only functions that
    ran ("?" for addresses outside every function symbol); ``mem`` maps region name (and "?"
    for the rest) to ``{"loads": n, "stores": n}``, or is None when memory mode was off.
    """

    total: int
    by_class: dict[str, int]
    by_function: dict[str, int]
    mem: dict[str, dict[str, int]] | None = None
    # Instructions whose address objdump did not decode (counted as "other" in by_class).
    undecoded: int = field(default=0)


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
    """Function symbols of the ELF; a symbol without size extends to the next one."""
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

    ``arch`` is "arm" or "riscv" (aliases as in :func:`twin.isa.normalize_arch`);
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

    flat_class = uniq_class[flat_to_uniq]
    flat_func = uniq_func[flat_to_uniq]
    flat_undecoded = (~decoded[flat_to_uniq]).astype(np.int64)
    tb_len = np.diff(dump.tb_offsets)

    profiles = []
    for k, (ids, counts) in enumerate(dump.segments):
        lens = tb_len[ids]
        # Flat instruction indices of the executed TBs, and the execution count of each.
        flat_idx = np.repeat(dump.tb_offsets[ids] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
        weights = np.repeat(counts, lens)
        by_class = _weighted_counts(flat_class[flat_idx], weights, len(isa.CLASSES))
        by_func = _weighted_counts(flat_func[flat_idx], weights, len(func_names))
        undecoded = int((flat_undecoded[flat_idx] * weights).sum())
        profiles.append(SegmentProfile(
            total=int((counts * lens).sum()),
            by_class={c: int(by_class[i]) for i, c in enumerate(isa.CLASSES)},
            by_function={func_names[i]: int(n) for i, n in enumerate(by_func) if n},
            mem=_segment_mem(dump, k),
            undecoded=undecoded,
        ))
    return profiles


def _segment_mem(dump: Dump, k: int) -> dict[str, dict[str, int]] | None:
    if dump.mem is None:
        return None
    names = [r[0] for r in dump.regions] + [OUTSIDE_REGIONS]
    return {n: {"loads": int(dump.mem[k, i, 0]), "stores": int(dump.mem[k, i, 1])}
            for i, n in enumerate(names)}


def sum_profiles(profiles: Iterable[SegmentProfile]) -> SegmentProfile:
    """Add segment profiles (e.g. all segments of one token, or a whole run)."""
    total = 0
    undecoded = 0
    by_class = dict.fromkeys(isa.CLASSES, 0)
    by_function: dict[str, int] = {}
    mem: dict[str, dict[str, int]] | None = None
    for p in profiles:
        total += p.total
        undecoded += p.undecoded
        for c, n in p.by_class.items():
            by_class[c] = by_class.get(c, 0) + n
        for f, n in p.by_function.items():
            by_function[f] = by_function.get(f, 0) + n
        if p.mem is not None:
            mem = mem if mem is not None else {}
            for r, d in p.mem.items():
                acc = mem.setdefault(r, {"loads": 0, "stores": 0})
                acc["loads"] += d["loads"]
                acc["stores"] += d["stores"]
    return SegmentProfile(total, by_class, by_function, mem, undecoded)
