"""Build the firmware for a platform, cached by the content hash of everything that goes into it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from twin.atomic import write_text
from twin.platforms import ROOT, Platform

FIRMWARE = ROOT / "firmware"
KERNELS = FIRMWARE / "kernels"        # kernel sets: ref (the truth) and optimized ones (README.md)
SOFTFLOAT = FIRMWARE / "softfloat" / "softfloat.c"   # exact binary32 helpers, soft-float RV32IM/ARMv6-M (README.md)

COMMON_CFLAGS = (
    "-O2", "-g", "-std=c11", "-ffreestanding", "-fno-common", "-ffunction-sections", "-fdata-sections",
    "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra", "-Werror=implicit-function-declaration",
)
KEEP_BUILDS = 3   # firmware builds kept per platform in the cache (least recently used go first)
PRUNE_GRACE_S = 3600.0   # ... but none built or reused within this long: a parallel job may be running it
LDFLAGS = ("-nostdlib", "-nostartfiles", "-Wl,--gc-sections", "-Wl,--no-warn-rwx-segments")


class BuildError(RuntimeError):
    """The firmware (or a tool it needs) could not be built."""


@dataclass(frozen=True)
class Firmware:
    platform: Platform
    elf: Path
    build_id: str
    compiler: str = ""       # the compiler's version line
    cflags: str = ""         # the flags that shape the generated code (cycle counts depend on them)


def cache_dir() -> Path:
    base = os.environ.get("TWIN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tinyllm-twin")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"{name} not found: install the Debian package {package} "
                         f"(scripts/setup does it: sudo scripts/setup)")
    return path


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def kernel_sources(kernels: str = "ref") -> list[Path]:
    """The kernel files a build compiles: every file of ``kernels/ref``, each replaced by the chosen
    set's file of the same name (firmware/kernels/README.md). A set may only replace ref files."""
    chosen = KERNELS / kernels
    if not chosen.is_dir():
        raise BuildError(f"kernel set {kernels!r}: no directory {_shown(chosen)} "
                         f"(sets: {', '.join(sorted(p.name for p in KERNELS.iterdir() if p.is_dir()))})")
    files = {p.name: p for p in (KERNELS / "ref").glob("*.c")}
    for path in chosen.glob("*.c"):
        if path.name not in files:
            raise BuildError(f"kernel set {kernels!r}: {_shown(path)} replaces no file of "
                             "firmware/kernels/ref (a set may only replace reference kernels)")
        files[path.name] = path
    return sorted(files.values())


def runtime_sources(kernels: str = "ref") -> list[Path]:
    """The model runtime's C files (firmware/runtime) with the kernel set ``kernels``."""
    return sorted([*(FIRMWARE / "runtime").glob("*.c"), *kernel_sources(kernels)])


def _flag(cflags: tuple[str, ...] | list[str], name: str) -> str:
    """The value of the last ``-<name>=`` flag ('' without one): the compiler takes the last."""
    values = [f.split("=", 1)[1] for f in cflags if f.startswith(f"-{name}=")]
    return values[-1] if values else ""


def riscv_soft_float(platform: Platform) -> bool:
    """True when the build's own flags leave float arithmetic to library calls on RV32IM: ``-march``
    with M (the product's mulhu) but without F, D, Q, G or Zfinx/Zdinx, and ``-mabi`` ilp32/ilp32e.
    Decided from the flags the compiler gets, never from a board id."""
    march, mabi = _flag(platform.cflags, "march").lower(), _flag(platform.cflags, "mabi").lower()
    if platform.arch != "riscv" or not march.startswith("rv32") or mabi not in ("ilp32", "ilp32e"):
        return False
    base, *multi = march[4:].split("_")
    letters = re.match(r"[^zsx]*", base).group()      # single-letter extensions (g = imafd)
    multi.append(base[len(letters):])                 # a multi-letter one right after them
    hard = bool(set(letters) & set("fdqg")) or any(x.startswith(("zfinx", "zdinx", "zhinx")) for x in multi)
    return "m" in letters and not hard


ARMV6M_CPUS = ("cortex-m0", "cortex-m0plus", "cortex-m1")   # GCC's ARMv6-M cores (also as .small-multiply)
ARMV6M_ARCHS = ("armv6-m", "armv6s-m")


def _float_abi(cflags: tuple[str, ...] | list[str]) -> str:
    """Arm's float ABI as the compiler takes it: the last of -mfloat-abi=, -msoft-float, -mhard-float
    (arm-none-eabi-gcc's default: soft)."""
    abi = "soft"
    for f in cflags:
        if f.startswith("-mfloat-abi="):
            abi = f.split("=", 1)[1].lower()
        elif f in ("-msoft-float", "-mhard-float"):
            abi = f[2:6]
    return abi


def arm_soft_float(platform: Platform) -> bool:
    """True when the build's own flags make an ARMv6-M build (Cortex-M0/M0+/M1: no FPU, and no 32x32->64
    multiply, firmware/softfloat's TW_SF_MUL16), where every float operation is a call of an ``__aeabi_``
    helper: ``-march=armv6-m``/``armv6s-m``, or without ``-march`` an ARMv6-M ``-mcpu``, and a float ABI
    other than hard (soft, GCC's default; softfp is the same without an FPU). Other soft-float Arm builds
    keep libgcc's: ARMv7-M's are hand-written Thumb-2 (an M3, an M4 at -mfloat-abi=soft), ARMv8-M
    Baseline's (M23) are not measured against ours. Decided from the flags the compiler gets, never
    from a board id."""
    if platform.arch != "arm" or _float_abi(platform.cflags) == "hard":
        return False
    march = _flag(platform.cflags, "march").lower().split("+")[0]
    if march:                                          # -march wins over -mcpu's architecture
        return march in ARMV6M_ARCHS
    mcpu = _flag(platform.cflags, "mcpu").lower().split("+")[0]
    return mcpu.removesuffix(".small-multiply") in ARMV6M_CPUS


def soft_float_build(platform: Platform) -> bool:
    """True when firmware/softfloat/softfloat.c serves the build's float helpers: a soft-float RV32IM
    build (``riscv_soft_float``) or an ARMv6-M one (``arm_soft_float``)."""
    return riscv_soft_float(platform) or arm_soft_float(platform)


def softfloat_sources(platform: Platform, softfloat: bool = True) -> list[Path]:
    """firmware/softfloat/softfloat.c for a soft-float RV32IM or ARMv6-M build (``soft_float_build``), else
    nothing; ``softfloat=False`` leaves libgcc's soft-fp helpers in (to measure against them)."""
    return [SOFTFLOAT] if softfloat and soft_float_build(platform) else []


def firmware_sources(platform: Platform, softfloat: bool = True) -> list[Path]:
    board = FIRMWARE / "boards" / f"{platform.board}.c"
    if not board.exists():
        raise BuildError(f"platform {platform.id}: no board support file {board.relative_to(ROOT)} "
                         f"for board family '{platform.board}'")
    arch_dir = FIRMWARE / "boards" / "arch" / platform.arch
    try:
        runtime = runtime_sources(platform.kernels)
    except BuildError as exc:
        raise BuildError(f"platform {platform.id}: {exc}") from None
    return sorted([
        *runtime,
        *(FIRMWARE / "app").glob("*.c"),
        FIRMWARE / "boards" / "crt.c",
        board,
        *arch_dir.glob("*.c"),
        *arch_dir.glob("*.S"),
        *softfloat_sources(platform, softfloat),
    ])


def memory_script(platform: Platform) -> str:
    f, m, r = platform.flash, platform.model, platform.ram
    return (
        f"/* generated from {platform.id}.yaml */\n"
        "MEMORY\n{\n"
        f"    FLASH (rx)  : ORIGIN = {f.origin:#x}, LENGTH = {f.size:#x}\n"
        f"    MODEL (r)   : ORIGIN = {m.origin:#x}, LENGTH = {m.size:#x}\n"
        f"    RAM   (rwx) : ORIGIN = {r.origin:#x}, LENGTH = {r.size:#x}\n"
        "}\n"
        f"STACK_SIZE = {platform.stack_size:#x};\n"
    )


def compile_flags(platform: Platform, build_id: str) -> list[str]:
    defines = {
        "BOARD_ID": f'"{platform.id}"',
        "BOARD_CORE": f'"{platform.core}"',
        "BOARD_CLOCK_HZ": f"{platform.clock_hz}u",
        "BUILD_ID": f'"{build_id}"',
        f"CYCLE_COUNTER_{platform.cycle_counter.upper()}": "1",
        **{k: (f"{v:#x}u" if isinstance(v, int) else str(v)) for k, v in platform.defines.items()},
    }
    return [*platform.cflags, *COMMON_CFLAGS, *(f"-D{k}={v}" for k, v in defines.items()),
            f"-I{FIRMWARE / 'boards'}", f"-I{FIRMWARE / 'runtime'}", f"-I{FIRMWARE / 'app'}"]


def _content_key(platform: Platform, sources: list[Path], version: str) -> str:
    h = hashlib.sha256()
    h.update(version.encode())
    h.update(repr((platform.cflags, sorted(platform.defines.items()), platform.id, platform.core,
                   platform.clock_hz, platform.cycle_counter, platform.kernels, COMMON_CFLAGS,
                   LDFLAGS)).encode())
    h.update(memory_script(platform).encode())
    for path in [*sources, FIRMWARE / "link.ld", *sorted(FIRMWARE.rglob("*.h"))]:
        h.update(str(path.relative_to(FIRMWARE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def build_firmware(platform: Platform, force: bool = False, softfloat: bool = True) -> Firmware:
    """Compile and link the firmware for ``platform``; reuse the cached ELF when nothing changed.
    ``softfloat=False``: a soft-float build (RV32IM, ARMv6-M: ``soft_float_build``) with libgcc's float
    helpers instead of firmware/softfloat (for measurements; the build id differs)."""
    if not platform.has_firmware:
        raise BuildError(f"platform {platform.id} has no firmware build yet (its file has no 'board:' "
                         f"section); predict it through its proxy: twin predict --platform {platform.id}")
    compiler = require_tool(platform.toolchain + "gcc", platform.toolchain_package)
    sources = firmware_sources(platform, softfloat)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = _content_key(platform, sources, version)
    build_id = key[:12]
    out = cache_dir() / "firmware" / f"{platform.id}-{build_id}.elf"
    firmware = Firmware(platform, out, build_id, compiler=version.splitlines()[0] if version else "",
                        cflags=" ".join((*platform.cflags, *COMMON_CFLAGS)))
    digest_file = out.with_name(out.name + ".sha256")
    if not force and _elf_intact(out, digest_file):
        _touch(out)   # recently used: the last to be pruned
        return firmware
    # missing, or not the bytes this build wrote (a torn copy, a flipped bit): build it again
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="twin-build-") as tmp:
        (Path(tmp) / "memory.ld").write_text(memory_script(platform))
        elf = Path(tmp) / "firmware.elf"
        cmd = [compiler, *compile_flags(platform, build_id), *LDFLAGS,
               f"-L{tmp}", "-T", str(FIRMWARE / "link.ld"), "-o", str(elf), *map(str, sources), "-lgcc"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"firmware build for {platform.id} failed:\n{proc.stderr.strip()}")
        staging = out.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(elf, staging)
        digest = hashlib.sha256(staging.read_bytes()).hexdigest()
        os.replace(staging, out)   # atomic: parallel builds of the same key never see half a file
        write_text(digest_file, digest + "\n")   # checked on every reuse (_elf_intact)
    _prune(out.parent, f"{platform.id}-*.elf", keep=KEEP_BUILDS)
    for orphan in out.parent.glob(f"{platform.id}-*.elf.sha256"):   # digests of pruned builds
        if not orphan.with_suffix("").exists():
            orphan.unlink(missing_ok=True)
    return firmware


def _elf_intact(elf: Path, digest_file: Path) -> bool:
    """The cached ELF is the one its build wrote: its SHA-256 matches the digest stored beside it."""
    try:
        return hashlib.sha256(elf.read_bytes()).hexdigest() == digest_file.read_text().strip()
    except OSError:
        return False


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:                   # a read-only cache: pruning order is all that is lost
        pass


def _prune(directory: Path, pattern: str, keep: int, grace_s: float = PRUNE_GRACE_S) -> None:
    """Delete all but the ``keep`` most recently used files matching ``pattern`` (builds of older
    sources), never one used within ``grace_s`` seconds: another job may have just built or reused it."""
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:     # pruned by a parallel build meanwhile
            return 0.0

    now = time.time()
    for path in sorted(directory.glob(pattern), key=mtime, reverse=True)[keep:]:
        if now - mtime(path) >= grace_s:
            path.unlink(missing_ok=True)
