"""A second cycle prior: LLVM's scheduling model of the core (llvm-mca), per executed basic block.

The class prior (``calibration.cycles``) charges every instruction the published cost of its class.
This module asks LLVM's scheduling model instead, block by block::

    cycles(phase) = sum over blocks  executions(block, phase) x mca_cycles(block)
                  + sum over unparsed instructions  executions x class-prior cost of its class

Blocks are the translated blocks (TBs) the QEMU plugin counted (``twin.profile.counts.Dump``: start address,
instruction addresses, executions per segment), merged by their instruction addresses and summed
over the segments of each phase (prefill, decode).  Their instructions come from ``llvm-objdump`` of
the very ELF that ran (LLVM's own syntax, so they assemble back); branch targets become a local label.
All distinct blocks go to **one** ``llvm-mca`` process, one code region each
(``# LLVM-MCA-BEGIN bN`` / ``# LLVM-MCA-END``), with the core's ``-mtriple``/``-mcpu`` from the
``mca:`` entry of ``calibration/cores.yaml``.

``mca_cycles(block)`` is llvm-mca's steady state: total cycles / iterations of the block simulated
``ITERATIONS`` times back to back (loop-carried dependencies included; the pipeline fill and drain
are spread over the iterations).  The block reciprocal throughput is not used: it is a resource
bound only and ignores dependency chains, which on in-order MCU cores are what costs.

An instruction llvm-mca cannot take (its assembler rejects it, it has no scheduling class, or
llvm-objdump did not decode its address) is removed from its block and charged its class's prior
cost (``cores.yaml`` ``mca.class_prior``); how many were so handled is reported, never dropped.

Results are cached per (ELF content hash, triple, cpu, attributes, llvm-mca binary) under
``<cache>/mca`` (``twin.device.build.cache_dir``: ``$TWIN_CACHE``, else ``$XDG_CACHE_HOME/tinyllm-twin``);
a block already in the cache never reaches llvm-mca again.  Per-block execution counts of a run are
cached next to the twin's counts (``<cache>/blocks``, the same key as ``calibration.predict``).

Not modelled here (docs/calibration.md): flash wait states (``calibration.predict`` adds the same
terms ``calibration.cycles`` uses), caches, branch prediction and taken-branch refills, and any
interaction between consecutive blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import yaml

from twin.platforms import get_platform
from twin.profile import isa
from twin.profile.isa import CLASSES

from .cycles import CORES_FILE, FEATURES, CycleModelError, MemorySetup, feature_vector, prior_coefficients

MCA_TOOLS = ("llvm-mca", "llvm-mca-14")
OBJDUMP_TOOLS = ("llvm-objdump", "llvm-objdump-14")
PACKAGE_HINT = "install Debian's llvm package (scripts/setup does it)"
ITERATIONS = 100          # llvm-mca iterations per block: fill and drain add 0.01-0.03 cycles per block
CACHE_VERSION = 1         # of <cache>/mca/*.json; bump when the text sent to llvm-mca changes
BLOCKS_VERSION = 1        # of <cache>/blocks/*.json
TARGET_LABEL = ".Ltwin_target"
MAX_ROUNDS = 32           # llvm-mca re-runs after dropping rejected instructions
STATS = {"mca_runs": 0, "objdump_runs": 0, "emulator_runs": 0}


class McaError(CycleModelError):
    """llvm-mca is missing, or a core or run it cannot model; the message says what to do."""


# ---------------------------------------------------------------------------------------------
# Per-core targets (cores.yaml, mca:)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class McaTarget:
    """What llvm-mca is told about one core, and where that choice comes from."""
    core: str
    triple: str | None
    mcpu: str | None            # None: LLVM has no scheduling model for this core
    mattr: str = ""
    model: str = ""             # the LLVM scheduling model the cpu maps to
    class_prior: str = ""       # core whose class costs charge the instructions llvm-mca cannot take
    source: str = ""
    skip: tuple[str, ...] = ()  # regexes: instructions the model has no scheduling data for (not sent)

    @property
    def available(self) -> bool:
        return self.mcpu is not None

    @property
    def arch(self) -> str:
        return isa.normalize_arch(self.triple or "")

    def key(self) -> str:
        """Names the target in cache files: what changes llvm-mca's answer (triple, cpu, attributes,
        the instructions not sent)."""
        skip = hashlib.sha256("\n".join(self.skip).encode()).hexdigest()[:8] if self.skip else "all"
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{self.triple}-{self.mcpu}-{self.mattr}-{skip}")


@cache
def load_targets(path: Path = CORES_FILE) -> dict[str, McaTarget]:
    """Every core's ``mca:`` entry of ``cores.yaml``: triple, cpu, model and source, or cpu null + why."""
    data = yaml.safe_load(path.read_text())
    out: dict[str, McaTarget] = {}
    for name, c in data.get("cores", {}).items():
        where = f"{path}: cores.{name}.mca"
        m = c.get("mca")
        if not isinstance(m, dict) or not isinstance(m.get("source"), str):
            raise CycleModelError(f"{where}: expected {{triple, mcpu, model, source}} (mcpu: null and a "
                                  f"source when LLVM has no scheduling model), got {m!r}")
        mcpu = m.get("mcpu")
        if mcpu is not None:
            for k in ("triple", "mcpu", "model"):
                if not isinstance(m.get(k), str) or not m[k]:
                    raise CycleModelError(f"{where}.{k}: expected text, got {m.get(k)!r}")
        skip = m.get("skip") or []
        if not isinstance(skip, list) or not all(isinstance(x, str) for x in skip):
            raise CycleModelError(f"{where}.skip: expected a list of regular expressions, got {skip!r}")
        for x in skip:
            try:
                re.compile(x)
            except re.error as exc:
                raise CycleModelError(f"{where}.skip: {x!r} is not a regular expression ({exc})") from None
        out[name] = McaTarget(core=name, triple=m.get("triple"), mcpu=mcpu, mattr=m.get("mattr") or "",
                              model=m.get("model") or "", class_prior=m.get("class_prior") or name,
                              source=m["source"], skip=tuple(skip))
    return out


def mca_target(core: str) -> McaTarget:
    """The llvm-mca target of ``core``; a clear McaError when LLVM has no scheduling model for it."""
    targets = load_targets()
    if core not in targets:
        raise McaError(f"no mca entry for core {core!r} in {CORES_FILE.name}; known cores: "
                       f"{', '.join(targets)}")
    t = targets[core]
    if not t.available:
        raise McaError(f"no LLVM scheduling model for core {core}: {t.source}")
    return t


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
def find_tool(names: Sequence[str] = MCA_TOOLS) -> str:
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    raise McaError(f"{names[0]} not found: {PACKAGE_HINT}")


def _tool_fingerprint(path: str) -> str:
    """Identifies the llvm-mca binary without running it (a cache hit must spawn nothing)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return hashlib.sha256(f"{real}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Disassembly in LLVM's syntax
# ---------------------------------------------------------------------------------------------
# "    2238:      \tpush.w\t{r4, lr}"  /  "80000ea:      \tjal\t0x800000a4 <twin_mark>"
_LINE_RE = re.compile(r"^\s*([0-9a-f]+):[ \t]+(\S[^\t]*?)(?:\t(.*))?$")
_COMMENT_RE = {"arm": re.compile(r"\s*@.*$"), "riscv": re.compile(r"\s+#.*$")}
_TARGET_RE = re.compile(r"\b0x[0-9a-f]+(?:\s*<[^>]*>)?")
_ARM_CONDS = frozenset("eq ne cs hs cc lo mi pl vs vc hi ls ge lt gt le al".split())


def _as_jump(mnemonic: str, ops: str, arch: str) -> tuple[str, str]:
    """A call as the jump to the same place: llvm-mca charges any call a flat 100-cycle latency
    ("call instructions are not correctly modeled"), which would swamp a block that ends in one."""
    m = mnemonic.lower()
    if arch == "arm":
        base = m.partition(".")[0]
        cond = base[-2:] if len(base) in (4, 5) and base[-2:] in _ARM_CONDS else ""
        stem = base[:-2] if cond else base
        if stem == "bl":
            return f"b{cond}.w", ops
        if stem == "blx" and not ops.startswith(TARGET_LABEL):
            return f"bx{cond}", ops
        return mnemonic, ops
    parts = [p.strip() for p in ops.split(",")] if ops else []
    if m == "jal":
        if len(parts) == 1:
            return "j", parts[0]
        if len(parts) == 2 and parts[0] not in ("zero", "x0"):
            return "j", parts[1]
    if m == "jalr":
        if len(parts) == 1 and "(" not in parts[0]:
            return "jr", parts[0]
        if len(parts) == 1:
            return "jalr", f"zero, {parts[0]}"
        if parts[0] not in ("zero", "x0"):
            return "jalr", ", ".join(["zero", *parts[1:]])
    return mnemonic, ops


_IT_RE = re.compile(r"^it([te]{0,3})\b")


def _unpredicate(line: str) -> str:
    """``addlt r4, #1`` -> ``add r4, #1``: an instruction of an IT block whose IT is not sent (it would
    not assemble predicated outside one); the schedule of a predicated instruction is its own."""
    mnemonic, sep, rest = line.partition("\t")
    base, dot, suffix = mnemonic.partition(".")
    if len(base) > 2 and base[-2:] in _ARM_CONDS:
        base = base[:-2]
    return f"{base}{dot}{suffix}{sep}{rest}"


def asm_line(mnemonic: str, operands: str, arch: str) -> str:
    """One instruction as llvm-mca's assembler takes it: comments dropped, an absolute branch target
    (``0x234c <matvec_q4+0x114>``) replaced by a local label (the schedule does not depend on it),
    a call written as a jump (see ``_as_jump``)."""
    ops = _COMMENT_RE[arch].sub("", operands or "").strip()
    ops = _TARGET_RE.sub(TARGET_LABEL, ops)
    mnemonic, ops = _as_jump(mnemonic, ops, arch)
    return f"{mnemonic}\t{ops}" if ops else mnemonic


@lru_cache(maxsize=8)
def _llvm_disassemble(elf: str, mtime_ns: int, size: int, triple: str, mcpu: str,
                      mattr: str) -> dict[int, str]:
    tool = find_tool(OBJDUMP_TOOLS)
    cmd = [tool, "-d", "--no-show-raw-insn", f"--triple={triple}", f"--mcpu={mcpu}"]
    if mattr:
        cmd.append(f"--mattr={mattr}")
    STATS["objdump_runs"] += 1
    proc = subprocess.run([*cmd, elf], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise McaError(f"{' '.join(cmd)} {elf} failed: {proc.stderr.strip()[:500]}")
    arch = isa.normalize_arch(triple)
    out: dict[int, str] = {}
    for line in proc.stdout.splitlines():
        m = _LINE_RE.match(line)
        if not m:
            continue
        mnemonic = m.group(2).strip()
        if mnemonic.startswith(("<", ".")):      # <unknown>, data (.word ...): not an instruction
            continue
        out[int(m.group(1), 16)] = asm_line(mnemonic, m.group(3) or "", arch)
    return out


def llvm_disassemble(elf: Path | str, target: McaTarget) -> dict[int, str]:
    """Address -> instruction text (llvm-objdump with the target's triple and cpu), cached per file version."""
    p = Path(elf)
    st = p.stat()
    return _llvm_disassemble(str(p.resolve()), st.st_mtime_ns, st.st_size, target.triple or "",
                             target.mcpu or "", target.mattr)


# ---------------------------------------------------------------------------------------------
# llvm-mca over many blocks in one process
# ---------------------------------------------------------------------------------------------
_DIAG_RE = re.compile(r"^(?P<file>[^\n]*?):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>.*)$", re.M)
_UNSUPPORTED_RE = re.compile(r"unsupported instruction.*?\n\s*note: instruction:\s*(?P<insn>[^\n]*)", re.S)
_REG_RE = re.compile(r"\b([a-z]+)\d+\b")
_IMM_RE = re.compile(r"#?-?\b(?:0x[0-9a-f]+|\d+)\b")


def _shape(text: str) -> str:
    """An instruction with registers and immediates abstracted: ``vcmp.f32 s13, #0`` -> ``vcmp.f32 s, #N``."""
    mnemonic, _, ops = " ".join(text.lower().replace(",", ", ").split()).partition(" ")
    return mnemonic + " " + _REG_RE.sub(r"\1", _IMM_RE.sub("#N", ops))


def mca_regions(regions: Mapping[str, Sequence[str]], target: McaTarget, *,
                iterations: int = ITERATIONS) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Run llvm-mca once over named regions of instruction text.

    Returns (cycles per iteration of each region that kept instructions, indices of the lines of each
    region that llvm-mca rejected).  llvm-mca's assembler skips a line it cannot parse, says so on
    stderr and simulates the rest: those lines are reported as rejected.  An instruction without
    scheduling data stops llvm-mca (it prints the instruction): every line of that shape is removed
    and llvm-mca runs again, so an unsupported opcode costs one more process, not the estimate.
    Every instruction sent is accounted for: modelled, or rejected.
    """
    tool = find_tool(MCA_TOOLS)
    dropped: dict[str, set[int]] = {n: set() for n in regions}
    for _ in range(MAX_ROUNDS):
        text, where = _region_file(regions, dropped)
        if not where:
            return {}, {n: sorted(d) for n, d in dropped.items() if d}
        with tempfile.TemporaryDirectory(prefix="twin-mca-") as tmp:
            src = Path(tmp) / "blocks.s"
            src.write_text(text)
            cmd = [tool, f"-mtriple={target.triple}", f"-mcpu={target.mcpu}", f"-iterations={iterations}",
                   "--json"]
            if target.mattr:
                cmd.append(f"-mattr={target.mattr}")
            STATS["mca_runs"] += 1
            proc = subprocess.run([*cmd, str(src)], capture_output=True, text=True, check=False)
        err = proc.stderr
        rejected = [where[int(m.group("line"))] for m in _DIAG_RE.finditer(err)
                    if int(m.group("line")) in where]
        for n, i in rejected:
            dropped[n].add(i)
        if proc.returncode == 0:
            sent = {n: 0 for n, _ in where.values()}
            for n, i in where.values():
                sent[n] += i not in dropped[n]
            return (_parse_mca_json(proc.stdout, {n: k for n, k in sent.items() if k}),
                    {n: sorted(d) for n, d in dropped.items() if d})
        hit = bool(rejected)
        if not hit:
            # No scheduling data for an opcode (llvm-mca stops at the first one and prints it): drop
            # every line of the same shape (mnemonic and operand kinds: the same opcode), which would
            # stop the next run otherwise.
            m = _UNSUPPORTED_RE.search(err)
            if m:
                want = _shape(m.group("insn"))
                for n, lines in regions.items():
                    for i, line in enumerate(lines):
                        if i not in dropped[n] and _shape(line) == want:
                            dropped[n].add(i)
                            hit = True
        if not hit:
            what = ("cannot model" if any(x in err for x in ("scheduling information", "not a recognized",
                                                            "unable to get target")) else "failed on")
            raise McaError(f"llvm-mca {what} -mtriple={target.triple} -mcpu={target.mcpu}: "
                           f"{_first_error(err)}")
    raise McaError(f"llvm-mca still rejects instructions after {MAX_ROUNDS} rounds of removing them")


def _first_error(err: str) -> str:
    lines = list(dict.fromkeys(ln.strip() for ln in err.splitlines() if ln.strip()))
    picked = [ln for ln in lines if "error" in ln or "note" in ln][:3] or lines[:3]
    return " | ".join(picked)[:600] or "no message"


def _region_file(regions: Mapping[str, Sequence[str]], dropped: Mapping[str, set[int]]
                 ) -> tuple[str, dict[int, tuple[str, int]]]:
    """The assembly file and, per line number, (region, index of its line)."""
    out: list[str] = []
    where: dict[int, tuple[str, int]] = {}
    for name, lines in regions.items():
        keep = [(i, ln) for i, ln in enumerate(lines) if i not in dropped[name]]
        if not keep:
            continue
        out.append(f"# LLVM-MCA-BEGIN {name}")
        for i, ln in keep:
            out.append(ln)
            where[len(out)] = (name, i)
        out.append("# LLVM-MCA-END")
    return "\n".join(out) + "\n", where


def _parse_mca_json(text: str, sent: Mapping[str, int]) -> dict[str, float]:
    """Cycles per iteration (total cycles / iterations) of each region; every region sent must be
    there with as many instructions as it was sent with (nothing dropped unseen)."""
    try:
        data = json.loads(text)
        out = {}
        for r in data["CodeRegions"]:
            s = r["SummaryView"]
            out[r["Name"]] = (float(s["TotalCycles"]) / float(s["Iterations"]), len(r["Instructions"]))
    except (json.JSONDecodeError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise McaError(f"unexpected llvm-mca output ({exc}): {text[:200]!r}") from None
    for n, k in sent.items():
        if n not in out:
            raise McaError(f"llvm-mca reported nothing for code region {n} ({k} instructions sent)")
        if out[n][1] != k:
            raise McaError(f"llvm-mca modelled {out[n][1]} instructions of code region {n}, {k} were sent "
                           "and none rejected")
    return {n: out[n][0] for n in sent}


# ---------------------------------------------------------------------------------------------
# Cycles per block, cached per ELF content
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockCost:
    """llvm-mca's steady-state cycles of a block's parsed instructions, and the rest's addresses."""
    cycles: float
    unparsed: tuple[int, ...] = ()


def block_key(addrs: Sequence[int]) -> str:
    return f"{addrs[0]:x}-{addrs[-1]:x}-{len(addrs)}"


def _sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mca_cache_dir() -> Path:
    """``<cache>/mca``: llvm-mca's cycles per block, one file per (ELF content, target, llvm-mca)."""
    from twin.device.build import cache_dir

    d = cache_dir() / "mca"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _mca_cache_path(elf_sha: str, target: McaTarget, tool: str) -> Path:
    return mca_cache_dir() / (f"{elf_sha[:20]}-{target.key()}-{_tool_fingerprint(tool)}-i{ITERATIONS}"
                              f"-v{CACHE_VERSION}.json")


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.{time.time_ns()}.tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")))
    tmp.replace(path)


def block_costs(elf: Path | str, blocks: Sequence[Sequence[int]], target: McaTarget
                ) -> list[BlockCost]:
    """llvm-mca's cycles for each block (instruction addresses) of ``elf``; cached per ELF content
    hash and target, so blocks already seen never reach llvm-mca again (no process at all when
    every block is cached)."""
    tool = find_tool(MCA_TOOLS)
    path = _mca_cache_path(_sha256_file(elf), target, tool)
    cached: dict[str, list] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("version") == CACHE_VERSION:
                cached = data["blocks"]
        except (json.JSONDecodeError, KeyError, TypeError):
            cached = {}
    keys = [block_key(b) for b in blocks]
    missing = {k: b for k, b in zip(keys, blocks, strict=True) if k not in cached}
    if missing:
        cached.update(_measure_blocks(elf, missing, target))
        _write_json(path, {"version": CACHE_VERSION, "elf": str(elf), "triple": target.triple,
                           "mcpu": target.mcpu, "mattr": target.mattr, "iterations": ITERATIONS,
                           "blocks": cached})
    return [BlockCost(float(cached[k][0]), tuple(cached[k][1])) for k in keys]


def _measure_blocks(elf: Path | str, blocks: Mapping[str, Sequence[int]], target: McaTarget
                    ) -> dict[str, list]:
    text = llvm_disassemble(elf, target)
    regions: dict[str, list[str]] = {}
    addrs_of: dict[str, list[int]] = {}
    unparsed: dict[str, list[int]] = {}
    names = {}
    skip = [re.compile(x) for x in target.skip]
    for j, (key, addrs) in enumerate(blocks.items()):
        name = f"b{j}"
        names[key] = name
        lines: list[str] = []
        kept: list[int] = []
        bad: list[int] = []
        in_it = 0        # instructions left in an IT block whose IT is not sent
        for a in addrs:
            t = text.get(a)
            if t is None or any(r.search(t) for r in skip):   # not decoded, or the model lacks it
                bad.append(a)
                it = _IT_RE.match(t or "")
                in_it = 1 + len(it.group(1)) if it else max(in_it - 1, 0)
                continue
            if in_it:
                t = _unpredicate(t)
                in_it -= 1
            lines.append(t)
            kept.append(a)
        regions[name], addrs_of[name], unparsed[key] = lines, kept, bad
    cycles, rejected = mca_regions(regions, target)
    out: dict[str, list] = {}
    for key, name in names.items():
        bad = [addrs_of[name][i] for i in rejected.get(name, [])]
        out[key] = [cycles.get(name, 0.0), sorted(unparsed[key] + bad)]
    return out


# ---------------------------------------------------------------------------------------------
# Executed blocks per phase, from a profiled run
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhaseBlocks:
    """The distinct blocks one generation executed and their executions per phase."""
    platform: str
    arch: str
    elf: str
    build_id: str
    blocks: tuple[tuple[int, ...], ...]                     # instruction addresses of each block
    phases: dict[str, dict[int, int]] = field(hash=False)   # phase -> block index -> executions
    decode_tokens: int = 1

    def executed(self, phase: str) -> int:
        return sum(n * len(self.blocks[b]) for b, n in self.phases[phase].items())

    def to_json(self) -> dict:
        return {"version": BLOCKS_VERSION, "platform": self.platform, "arch": self.arch, "elf": self.elf,
                "build_id": self.build_id, "decode_tokens": self.decode_tokens,
                "blocks": [list(b) for b in self.blocks],
                "phases": {p: [[b, n] for b, n in sorted(d.items())] for p, d in self.phases.items()}}

    @classmethod
    def from_json(cls, d: dict) -> PhaseBlocks:
        if d.get("version") != BLOCKS_VERSION:
            raise ValueError(f"block counts version {d.get('version')!r}, want {BLOCKS_VERSION}")
        return cls(d["platform"], d["arch"], d["elf"], d["build_id"],
                   tuple(tuple(int(a) for a in b) for b in d["blocks"]),
                   {p: {int(b): int(n) for b, n in rows} for p, rows in d["phases"].items()},
                   int(d["decode_tokens"]))


def blocks_from_dump(dump, phase_segments: Mapping[str, Sequence[int]]) -> tuple[
        tuple[tuple[int, ...], ...], dict[str, dict[int, int]]]:
    """Distinct blocks (merged by instruction addresses: QEMU may translate a block more than once)
    and executions per phase, summed over the phase's segments of a ``twin.profile.counts.Dump``."""
    index: dict[tuple[int, ...], int] = {}
    blocks: list[tuple[int, ...]] = []
    phases: dict[str, dict[int, int]] = {}
    offsets = dump.tb_offsets
    for phase, segs in phase_segments.items():
        acc: dict[int, int] = {}
        for k in segs:
            ids, counts = dump.segments[k]
            for tb, n in zip(ids.tolist(), counts.tolist(), strict=True):
                addrs = tuple(int(a) for a in dump.insn_addrs[offsets[tb]:offsets[tb + 1]])
                if not addrs:
                    continue
                j = index.get(addrs)
                if j is None:
                    j = index[addrs] = len(blocks)
                    blocks.append(addrs)
                acc[j] = acc.get(j, 0) + int(n)
        phases[phase] = acc
    return tuple(blocks), phases


def _segment_totals(dump) -> np.ndarray:
    lens = np.diff(dump.tb_offsets)
    return np.array([int((counts * lens[ids]).sum()) for ids, counts in dump.segments], dtype=np.int64)


def run_recording_blocks(spec, on_phase: Callable | None = None, *, strict: bool = False
                         ) -> tuple[dict, PhaseBlocks | None]:
    """``twin.runner.run(spec)``, also returning the executed blocks per phase: one emulator run gives
    both. When the blocks cannot be had (the dump's segments do not match the phases) they are None,
    or with ``strict`` an McaError says why."""
    from twin.runner import run_with_dump

    phases: list = []

    def seen(ph):
        phases.append(ph)
        if on_phase is not None:
            on_phase(ph)

    report, dump = run_with_dump(spec, on_phase=seen)
    STATS["emulator_runs"] += 1
    try:
        return report, _phase_blocks_of_run(report, dump, phases)
    except McaError:
        if strict:
            raise
        return report, None


def _phase_blocks_of_run(report: dict, dump, phases: Sequence) -> PhaseBlocks:
    from twin.device.protocol import PhaseKind

    # segments: boot | phase | io | phase | ... ; the boot phases (validate) come before the run's
    n_boot = (dump.n_segments - 1) // 2 - len(phases)
    segs: dict[str, list[int]] = {"prefill": [], "decode": []}
    for j, ph in enumerate(phases):
        kind = {PhaseKind.PREFILL: "prefill", PhaseKind.DECODE: "decode"}.get(ph.kind)
        if kind is not None:
            segs[kind].append(2 * (n_boot + j) + 1)
    by_phase = report["instructions"]["by_phase"]
    totals = _segment_totals(dump) if n_boot >= 0 else None
    if totals is None or int(totals[segs["prefill"]].sum()) != by_phase["prefill"] \
            or [int(totals[k]) for k in segs["decode"]] != list(by_phase["decode"]):
        raise McaError("the plugin dump's segments do not match the run's phases: cannot attribute "
                       "blocks to prefill and decode")
    blocks, per_phase = blocks_from_dump(dump, segs)
    return PhaseBlocks(report["platform"], get_platform(report["platform"]).arch, report["firmware"]["elf"],
                       report["firmware"]["build_id"], blocks, per_phase, max(len(segs["decode"]), 1))


def _blocks_cache_dir() -> Path:
    from twin.device.build import cache_dir

    d = cache_dir() / "blocks"
    d.mkdir(parents=True, exist_ok=True)
    return d


def save_phase_blocks(key: str, blocks: PhaseBlocks) -> None:
    _write_json(_blocks_cache_dir() / f"{key}.json", blocks.to_json())


def phase_blocks(platform: str, *, model: str = "builtin", bits: int = 4, tokens: int | None = None,
                 prompt: str | None = None) -> PhaseBlocks:
    """Executed blocks per phase of one generation on the emulated ``platform``, cached on disk under
    the same key as ``calibration.predict.twin_counts`` (a predict run records them too)."""
    from . import predict

    key, spec, _, _ = predict.counts_key(platform, model=model, bits=bits,
                                   tokens=predict.DEFAULT_TOKENS if tokens is None else tokens, prompt=prompt)
    path = _blocks_cache_dir() / f"{key}.json"
    pb = _load_phase_blocks(path)
    if pb is None:        # the counts' run records the blocks: one emulator run gives both
        predict.twin_counts(platform, model=model, bits=bits,
                            tokens=predict.DEFAULT_TOKENS if tokens is None else tokens, prompt=prompt)
        pb = _load_phase_blocks(path)
    if pb is None:        # the counts came from their cache: run for the blocks
        _, pb = run_recording_blocks(spec, strict=True)
        assert pb is not None
        save_phase_blocks(key, pb)
    return pb


def _load_phase_blocks(path: Path) -> PhaseBlocks | None:
    if not path.exists():
        return None
    try:
        pb = PhaseBlocks.from_json(json.loads(path.read_text()))
        if Path(pb.elf).exists():
            return pb
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        pass
    path.unlink(missing_ok=True)     # stale, torn, or its ELF was pruned from the cache
    return None


# ---------------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class McaEstimate:
    """llvm-mca's cycles for one generation, per phase, at zero wait states."""
    core: str
    triple: str
    mcpu: str
    model: str
    platform: str                # the emulated platform whose blocks were modelled
    prefill_cycles: float        # whole prefill
    token_cycles: float          # per decoded token (mean)
    blocks: int                  # distinct blocks executed in prefill + decode
    unparsed_instructions: int   # distinct instructions charged at the class prior's cost
    unparsed_executed: int       # their executions, prefill + all decoded tokens
    executed: int                # all instructions executed, prefill + all decoded tokens
    unparsed_cycles: float       # cycles those were charged, prefill + all decoded tokens
    iterations: int = ITERATIONS

    @property
    def unparsed_fraction(self) -> float:
        return self.unparsed_executed / self.executed if self.executed else 0.0

    def to_json(self) -> dict:
        return {"core": self.core, "triple": self.triple, "mcpu": self.mcpu, "llvm_model": self.model,
                "platform": self.platform, "prefill_cycles": self.prefill_cycles,
                "token_cycles": self.token_cycles, "blocks": self.blocks,
                "unparsed_instructions": self.unparsed_instructions,
                "unparsed_executed": self.unparsed_executed,
                "unparsed_fraction": self.unparsed_fraction, "iterations": self.iterations}


def estimate(blocks: PhaseBlocks, core: str | None = None) -> McaEstimate:
    """Sum executions x llvm-mca cycles over the blocks of each phase, for ``core`` (default: the
    core of the platform that ran).  The core must share the ISA of the ELF (same-core or proxy)."""
    core = core or get_platform(blocks.platform).core
    target = mca_target(core)
    if target.arch != isa.normalize_arch(blocks.arch):
        raise McaError(f"{core} ({target.triple}) cannot run the {blocks.arch} code of {blocks.platform}: "
                       "llvm-mca models only the ISA that ran (a cross-core prediction has no mca figure)")
    used = sorted({b for d in blocks.phases.values() for b in d})
    costs = dict(zip(used, block_costs(blocks.elf, [blocks.blocks[b] for b in used], target), strict=True))
    unparsed = sorted({a for c in costs.values() for a in c.unparsed})
    extra: dict[int, float] = {}
    if unparsed:
        coef = prior_coefficients(target.class_prior)
        gnu = isa.disassemble(blocks.elf, blocks.arch)
        for a in unparsed:
            cls = gnu[a].cls if a in gnu else "other"
            extra[a] = float(coef[CLASSES.index(cls)])
    per_phase: dict[str, float] = {}
    n_unparsed = 0
    unparsed_cycles = 0.0
    executed = 0
    for phase, d in blocks.phases.items():
        total = 0.0
        for b, n in d.items():
            c = costs[b]
            add = sum(extra[a] for a in c.unparsed)
            total += n * (c.cycles + add)
            n_unparsed += n * len(c.unparsed)
            unparsed_cycles += n * add
            executed += n * len(blocks.blocks[b])
        per_phase[phase] = total
    return McaEstimate(core=core, triple=target.triple or "", mcpu=target.mcpu or "", model=target.model,
                       platform=blocks.platform, prefill_cycles=per_phase.get("prefill", 0.0),
                       token_cycles=per_phase.get("decode", 0.0) / max(blocks.decode_tokens, 1),
                       blocks=len(used), unparsed_instructions=len(unparsed), unparsed_executed=n_unparsed,
                       executed=executed, unparsed_cycles=unparsed_cycles)


def mca_estimate(platform: str, *, core: str | None = None, model: str = "builtin", bits: int = 4,
                 tokens: int | None = None, prompt: str | None = None) -> McaEstimate:
    """llvm-mca's cycles for one generation of ``model`` on the emulated ``platform`` (its own core,
    or ``core`` of the same ISA), at zero wait states."""
    return estimate(phase_blocks(platform, model=model, bits=bits, tokens=tokens, prompt=prompt), core)


def wait_state_cycles(by_class: Mapping[str, float], memory: MemorySetup, *, loads_flash: float | None
                      ) -> float:
    """The flash wait-state terms of ``calibration.cycles`` (instruction fetch + weight loads from
    flash, times the miss fractions of the board's accelerators), which llvm-mca does not model."""
    x = feature_vector(by_class, wait_states=memory.wait_states, loads_flash=loads_flash,
                       fetch_miss=memory.fetch_miss, load_miss=memory.load_miss)
    return float(x[FEATURES.index("fetch_wait")]) + float(x[FEATURES.index("flash_load_wait")])
