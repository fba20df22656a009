"""Profile your own firmware (`twin count`): any bare-metal ELF in a platform's QEMU machine under the
profiling plugin, phases cut at the entries of named functions, its UART output captured.

The ELF is loaded as QEMU's ``-kernel`` on the platform's machine (``platforms/<id>.yaml`` emulator
section); its console UART is the host end of a socket (``QemuProcess``), read as plain bytes (no
framed protocol); ``--load ADDR=FILE`` puts raw files in guest memory before the reset. The run ends
when the firmware exits: semihosting ``SYS_EXIT`` (enabled on every machine), the machine's exit device
(Arm: an AIRCR system reset with ``-no-reboot``; RISC-V virt: the SiFive test device), or a timeout.

Phases: every ``--phase SYMBOL`` becomes an *entry cut* of the plugin (``entry=`` in
firmware/plugin/twin_plugin.c): each call of the function closes the segment just before its first
instruction, so a phase instance runs from one entry of SYMBOL to the next cut (the entry of any
phase symbol) or the end of the run; what runs before the first cut is the phase ``start``.

The report (:func:`count`, ``twin count --json``) has the records of ``twin run``: ``instructions``
(``total``, ``by_class``, ``by_phase``, ``by_phase_class``, ``branches``, ``by_phase_branches``,
``by_phase_fetch_bytes``, ``by_phase_icache``: the catalog's instruction caches of its ISA as simulated,
plus ``by_phase_entries``: one total per entry), ``functions``,
``memory_traffic`` (loads/stores per memory region and phase), ``memory`` (from the ELF), ``uart``,
``exit``. ``calibration.predict.counts_from_count_file`` turns it into counts for ``twin predict``.
"""

from __future__ import annotations

import hashlib
import select
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from twin.device.qemu import EmulatorError, QemuConfig, QemuProcess
from twin.platforms import Platform, get_platform
from twin.profile.counts import (
    DATA_CACHE_KINDS,
    ProfileError,
    analyze,
    catalog_caches,
    parse_dump,
    plugin_args,
    sum_profiles,
)

FORMAT = "tinyllm-twin-count"
VERSION = 1
START_PHASE = "start"
SEMIHOSTING = ("-semihosting-config", "enable=on,target=native")
# The machines' memory-mapped I/O windows (as twin.runner.PERIPHERAL_WINDOWS; the profile stage may
# not import the runner).
PERIPHERAL_WINDOWS = {"arm": (("peripherals", 0x4000_0000, 0x6000_0000), ("system", 0xE000_0000, 0xE010_0000)),
                      "riscv": (("peripherals", 0x0000_0000, 0x8000_0000),)}
_EM = {"arm": "EM_ARM", "riscv": "EM_RISCV"}
_ARM_ARCH = {1: "armv4", 2: "armv4t", 3: "armv5t", 4: "armv5te", 5: "armv5tej", 6: "armv6", 7: "armv6kz",
             8: "armv6t2", 9: "armv6k", 10: "armv7", 11: "armv6-m", 12: "armv6-m", 13: "armv7e-m",
             14: "armv8-a", 16: "armv8-m.base", 17: "armv8-m.main", 21: "armv8.1-m.main"}


class CountError(RuntimeError):
    """The firmware could not be counted: a bad ELF or argument, a fault, a hang, a phase never
    reached. The message is one line and says which."""


@dataclass(frozen=True)
class CountSpec:
    elf: Path
    platform: str
    phases: tuple[str, ...] = ()
    loads: tuple[tuple[int, Path], ...] = ()     # (guest address, raw file)
    timeout: float = 60.0
    mem_traffic: bool = True


def parse_load(text: str) -> tuple[int, Path]:
    """``ADDR=FILE`` (ADDR hex with 0x, or decimal) -> (address, path); CountError when malformed."""
    addr, sep, file = text.partition("=")
    try:
        value = int(addr, 0)
    except ValueError:
        value = -1
    if not sep or not file or value < 0:
        raise CountError(f"--load {text!r}: want ADDR=FILE, e.g. 0x20010000=weights.bin")
    return value, Path(file)


# ---------------------------------------------------------------------------------------------
# The ELF
# ---------------------------------------------------------------------------------------------
def _open_elf(path: Path, platform: Platform) -> dict:
    """Entry facts of the ELF: function symbols, loaded sections, ISA attributes; CountError if it is
    not a 32-bit ELF for the platform's architecture."""
    if not path.is_file():
        raise CountError(f"ELF {path} not found")
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if elf.header["e_machine"] != _EM.get(platform.arch) or elf.elfclass != 32:
                raise CountError(f"{path} is a {elf.elfclass}-bit {elf.header['e_machine']} ELF; platform "
                                 f"{platform.id} runs 32-bit {platform.arch} code")
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                raise CountError(f"{path} has no symbol table (stripped?): functions and phases need it")
            arm = platform.arch == "arm"
            functions: dict[str, int] = {}
            for sym in symtab.iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC" and sym.name:
                    functions.setdefault(sym.name, int(sym["st_value"]) & (~1 if arm else ~0))
            flash = ram = 0
            for sec in elf.iter_sections():
                if not sec["sh_flags"] & 0x2:          # SHF_ALLOC
                    continue
                size = int(sec["sh_size"])
                if sec["sh_type"] == "SHT_NOBITS":
                    ram += size
                else:
                    flash += size
                    if sec["sh_flags"] & 0x1:          # SHF_WRITE: .data, copied to RAM
                        ram += size
            return {"functions": functions, "flash_bytes": flash, "ram_static_bytes": ram,
                    "isa": _elf_isa(elf)}
    except ELFError as exc:
        raise CountError(f"{path} is not an ELF file ({exc})") from None


def _elf_isa(elf: ELFFile) -> str | None:
    """The ISA the compiler recorded (Arm Tag_CPU_arch + profile, RISC-V Tag_RISCV_arch), or None."""
    for name in (".ARM.attributes", ".riscv.attributes"):
        sec = elf.get_section_by_name(name)
        if sec is None:
            continue
        try:
            for sub in sec.iter_subsections():
                for subsub in sub.iter_subsubsections():
                    for attr in subsub.iter_attributes():
                        if attr.tag == "TAG_CPU_ARCH":
                            return _ARM_ARCH.get(int(attr.value))
                        if attr.tag == "TAG_ARCH":
                            return _rv_isa(str(attr.value))
        except Exception:       # an attribute section pyelftools cannot read: the ISA stays unknown
            return None
    return None


def _rv_isa(arch: str) -> str:
    """'rv32i2p1_m2p0_a2p1_c2p0_zicsr2p0' -> 'rv32imac_zicsr' (versions dropped)."""
    import re

    parts = arch.lower().split("_")
    base = re.sub(r"\d+p\d+", "", parts[0])
    rest = [re.sub(r"\d+p\d+$", "", x) for x in parts[1:]]
    single = "".join(x for x in rest if len(x) == 1)
    multi = [x for x in rest if len(x) > 1]
    return "_".join([base + single, *multi])


def memory_regions(platform: Platform) -> dict[str, tuple[int, int]]:
    """The regions whose loads and stores are counted: the machine's code, model and RAM windows of
    the platform file and its architecture's peripheral windows (elsewhere: "?")."""
    regions = {name: (r.origin, r.end) for name, r in
               (("code", platform.flash), ("model", platform.model), ("ram", platform.ram)) if r.size}
    for name, start, end in PERIPHERAL_WINDOWS.get(platform.arch, ()):
        if all(end <= a or start >= b for a, b in regions.values()):
            regions[name] = (start, end)
    return regions


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _read_uart(qemu: QemuProcess) -> tuple[bytes, bool]:
    """Everything the guest writes to its console until QEMU exits (True) or the deadline (False)."""
    out = bytearray()
    try:
        conn = socket.create_connection(("127.0.0.1", qemu.port), timeout=max(qemu.remaining(), 0.1))
    except OSError as exc:
        raise EmulatorError(f"cannot connect to QEMU's console: {exc}. {qemu.stderr()}") from None
    with conn:
        conn.setblocking(False)
        open_ = True
        while True:
            if not qemu.alive():
                if open_:
                    try:                      # what is left in the socket after the exit
                        while chunk := conn.recv(65536):
                            out += chunk
                    except OSError:
                        pass
                return bytes(out), True
            if qemu.remaining() <= 0:
                return bytes(out), False
            if not open_:
                time.sleep(0.02)
                continue
            ready, _, _ = select.select([conn], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                out += chunk
            else:
                open_ = False                 # QEMU closed the console: it is ending


def _stop(qemu: QemuProcess) -> None:
    """End a hung QEMU with SIGTERM (it exits cleanly, the plugin writes its dump), else kill it."""
    if qemu.proc is None or qemu.proc.poll() is not None:
        return
    qemu.proc.send_signal(signal.SIGTERM)
    try:
        qemu.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        qemu.kill()


def _where(dump_path: Path, elf: Path, arch: str) -> str:
    """Where a hung firmware spent the end of its run: the top function of the last segment."""
    try:
        prof = analyze(parse_dump(dump_path), elf, arch)[-1]
    except ProfileError:
        return ""
    if not prof.by_function:
        return ""
    name, n = max(prof.by_function.items(), key=lambda kv: kv[1])
    return f"; it was running {name} ({100 * n / max(prof.total, 1):.0f}% of its last instructions)"


def count(spec: CountSpec) -> dict:
    """Run ``spec.elf`` on ``spec.platform``'s QEMU machine under the plugin; the count report."""
    started = time.perf_counter()
    platform = get_platform(spec.platform)
    if platform.emulator is None or platform.emulator.kind != "qemu":
        raise CountError(f"platform {platform.id} has no QEMU machine; emulated platforms: "
                         "see `twin platforms` (mode exact)")
    if not spec.timeout > 0:
        raise CountError(f"--timeout must be positive, got {spec.timeout}")
    elf = Path(spec.elf)
    info = _open_elf(elf, platform)
    phases = list(dict.fromkeys(spec.phases))
    if START_PHASE in phases:
        raise CountError(f"'{START_PHASE}' names what runs before the first phase: choose other symbols")
    missing = [p for p in phases if p not in info["functions"]]
    if missing:
        raise CountError(f"no function symbol {missing[0]!r} in {elf}: --phase takes function names of the "
                         "ELF's symbol table")
    entries = {info["functions"][p]: p for p in phases}
    if len(entries) != len(phases):
        raise CountError("two --phase symbols are the same function (one address): name it once")
    loads = []
    for addr, file in spec.loads:
        if not Path(file).is_file():
            raise CountError(f"--load {addr:#x}={file}: no such file")
        loads += ["-device", f"loader,file={file},addr={addr:#x},force-raw=on"]
    regions = memory_regions(platform) if spec.mem_traffic else None

    with tempfile.TemporaryDirectory(prefix="twin-count-") as tmp:
        dump_path = Path(tmp) / "profile.dump"
        try:
            extra = (*SEMIHOSTING, *loads, *plugin_args(
                elf, dump_path, regions, entries=list(entries), mark=False, icaches=catalog_caches(platform), edges=True,
                dcaches=catalog_caches(platform, DATA_CACHE_KINDS) if regions else ()))
        except ValueError as exc:
            raise CountError(str(exc)) from None
        cfg = QemuConfig(elf=elf, image=None, extra_args=tuple(extra), timeout=spec.timeout)
        with QemuProcess(platform, cfg) as qemu:
            uart, exited = _read_uart(qemu)
            if not exited:
                _stop(qemu)
                raise CountError(f"the firmware did not exit within {spec.timeout:g} s (hung?): QEMU was "
                                 f"stopped{_where(dump_path, elf, platform.arch)}")
            status = qemu.proc.returncode
            err = qemu.stderr()
        if status != 0:
            raise CountError(_failure(status, err, info["functions"]))
        try:
            dump = parse_dump(dump_path)
            segments = analyze(dump, elf, platform.arch)
        except ProfileError as exc:
            raise CountError(str(exc)) from None

    cuts = dump.cuts or (None,) * len(segments)
    labels = [START_PHASE] + [entries.get(c[0], "?") if c else "?" for c in cuts[:-1]]
    never = [p for p in phases if p not in labels]
    if never:
        raise CountError(f"phase {never[0]!r}: the firmware never entered {never[0]} "
                         f"(at {info['functions'][never[0]]:#x}) before it exited")
    inexact = sorted({entries.get(c[0], "?") for c in cuts[:-1] if c and not c[1]})
    order = [START_PHASE, *phases]
    per = {p: [s for s, lab in zip(segments, labels, strict=True) if lab == p] for p in order}
    sums = {p: sum_profiles(v) for p, v in per.items() if v}
    whole = sum_profiles(segments)
    ranked = sorted(whole.by_function.items(), key=lambda kv: (-kv[1], kv[0]))
    loaded = sum(Path(f).stat().st_size for _, f in spec.loads)
    return {
        "format": FORMAT,
        "version": VERSION,
        "platform": platform.id,
        "isa": platform.isa,
        "elf_isa": info["isa"],
        "arch": platform.arch,
        "elf": str(elf),
        "elf_sha256": hashlib.sha256(elf.read_bytes()).hexdigest(),
        "phases": [p for p in order if p in sums],
        "instructions": {
            "total": whole.total,
            "by_class": whole.by_class,
            "by_phase": {p: s.total for p, s in sums.items()},
            "by_phase_class": {p: s.by_class for p, s in sums.items()},
            "by_phase_entries": {p: [s.total for s in per[p]] for p in sums},
            "branches": _branches(whole),
            "by_phase_branches": {p: _branches(s) for p, s in sums.items()},
            "by_phase_fetch_bytes": {p: s.fetch_bytes for p, s in sums.items()},
            "by_phase_icache": {p: s.icache for p, s in sums.items()},
            "by_phase_dcache": {p: s.dcache for p, s in sums.items()},
            "undecoded": whole.undecoded,
        },
        "sequence": [{"phase": lab, "instructions": s.total} for s, lab in zip(segments, labels, strict=True)],
        "functions": [{"name": k, "instructions": v} for k, v in ranked if v > 0],
        "by_phase_functions": {p: s.by_function for p, s in sums.items()},
        "memory_traffic": {p: s.mem for p, s in sums.items()} if spec.mem_traffic else None,
        "memory": {"flash_bytes": info["flash_bytes"], "ram_static_bytes": info["ram_static_bytes"],
                   "loaded_bytes": loaded},
        "loads": [{"addr": a, "file": str(f)} for a, f in spec.loads],
        "uart": uart.decode("utf-8", errors="replace"),
        "exit": {"status": 0},
        "notes": ([f"phase cut at block granularity (code falls through into the symbol): {', '.join(inexact)}"]
                  if inexact else []),
        "wall_seconds": round(time.perf_counter() - started, 3),
    }


def _failure(status: int, err: str, functions: dict[str, int]) -> str:
    """One line for a firmware that ended badly: a fault (QEMU's fatal message, where) or its status."""
    import re

    lines = err.splitlines()
    fatal = next((x.strip() for x in lines if "fatal" in x.lower()), "")
    pc = re.search(r"\b(?:R15|pc)\s*=?\s*([0-9a-fA-F]{8})\b", err)
    where = ""
    if pc:
        addr = int(pc.group(1), 16)
        below = [(a, n) for n, a in functions.items() if a <= addr]
        where = f" at pc {addr:#x}" + (f" ({max(below)[1]})" if below else "")
    if fatal or status < 0:
        what = fatal or f"QEMU died of signal {-status}"
        return f"the firmware faulted{where}: {what}"
    tail = f": {lines[-1].strip()}" if lines else ""
    return (f"the firmware ended with exit status {status} (semihosting SYS_EXIT or the machine's exit "
            f"device){tail}")


def _branches(p) -> dict:
    return {"taken": p.branches_taken, "not_taken": p.branches_not_taken,
            "unresolved": p.branches_unresolved}
