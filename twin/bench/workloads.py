"""The calibration workload suite, host side: names, ids, what each one exercises, default sizes.

The firmware runs a workload on a WORKLOAD request (docs/protocol.md; firmware/app/workloads.c) and
brackets it with the profiler's markers, so the twin counts exactly that run and a real board's cycle
counter times exactly that run. Two families:

* micro-kernels, each built so that one instruction class dominates its loop body (inline assembly on
  Arm and RISC-V): :func:`target_classes` says which class(es) for a given platform — e.g. ``dsp`` is
  packed SIMD on a core with the DSP extension and plain multiply/ALU code elsewhere, ``fp`` is FPU
  instructions with hardware FP and calls into libgcc's soft-float helpers without;
* the runtime's LLM kernels (``firmware/runtime/kernels.h``) on buffers of host-chosen shape.

``size`` means: bytes walked (loads/stores), ``rows << 16 | cols`` (matvec), ``n_pos << 16 |
head_size`` (attention), ``n`` (vector kernels), and is ignored (0) by the other micro-kernels.
A run costs a constant set-up plus ``iterations`` identical loop bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

from twin.platforms import Platform

MICRO = "micro"
KERNEL = "kernel"


@dataclass(frozen=True)
class Workload:
    name: str
    id: int
    family: str                      # MICRO or KERNEL
    targets: tuple[str, ...]         # classes the loop body is made of (on the full-featured core)
    size_kind: str                   # "none" | "bytes" | "n" | "rows_cols" | "pos_head"
    default_sizes: tuple[int, ...]   # one suite entry per size
    default_iterations: int
    doc: str


def _rc(rows: int, cols: int) -> int:
    return rows << 16 | cols


WORKLOADS: tuple[Workload, ...] = (
    Workload("alu", 0x01, MICRO, ("alu",), "none", (0,), 20000, "add/eor/orr/sub chains"),
    Workload("mul", 0x02, MICRO, ("mul",), "none", (0,), 20000, "32-bit multiply chains"),
    Workload("mac", 0x03, MICRO, ("mul",), "none", (0,), 20000, "multiply-accumulate (mla; RV32: mul + add)"),
    Workload("dsp", 0x04, MICRO, ("simd",), "none", (0,), 20000,
             "packed 16-bit DSP: smlad/sadd16/qadd16 (plain C without the DSP extension)"),
    Workload("load_flash", 0x05, MICRO, ("load",), "bytes", (4096,), 200,
             "word loads from the model partition (flash on a board)"),
    Workload("load_sram", 0x06, MICRO, ("load",), "bytes", (4096,), 200, "word loads from SRAM"),
    Workload("store_sram", 0x07, MICRO, ("store",), "bytes", (4096,), 200, "word stores to SRAM"),
    Workload("branch_taken", 0x08, MICRO, ("branch",), "none", (0,), 20000, "conditional branches, all taken"),
    Workload("branch_not_taken", 0x09, MICRO, ("branch",), "none", (0,), 20000,
             "conditional branches, none taken"),
    Workload("fp", 0x0A, MICRO, ("fp",), "none", (0,), 5000,
             "single-precision add/mul (soft-float: __addsf3/__mulsf3)"),
    Workload("div", 0x0B, MICRO, ("div",), "none", (0,), 5000, "unsigned 32-bit division"),
    Workload("fdiv", 0x0C, MICRO, ("fdiv",), "none", (0,), 2000,
             "single-precision divide and square root (soft-float: __divsf3)"),
    Workload("matvec_q8", 0x100, KERNEL, (), "rows_cols", (_rc(64, 64), _rc(172, 64), _rc(64, 172)), 4,
             "8-bit matrix-vector product"),
    Workload("matvec_q4", 0x101, KERNEL, (), "rows_cols", (_rc(64, 64), _rc(172, 64), _rc(64, 172)), 4,
             "4-bit matrix-vector product"),
    Workload("quantize_act", 0x102, KERNEL, (), "n", (64, 256), 8, "activation quantization (int8, groups of 32)"),
    Workload("rmsnorm", 0x103, KERNEL, (), "n", (64, 256), 8, "RMS normalisation"),
    Workload("softmax", 0x104, KERNEL, (), "n", (64, 512), 4, "softmax (tw_expf)"),
    Workload("attention", 0x105, KERNEL, (), "pos_head", (_rc(16, 8), _rc(64, 8)), 4,
             "one attention head over n_pos positions"),
    Workload("swiglu", 0x106, KERNEL, (), "n", (172,), 8, "SwiGLU gate (tw_expf)"),
)

BY_NAME: dict[str, Workload] = {w.name: w for w in WORKLOADS}
BY_ID: dict[int, Workload] = {w.id: w for w in WORKLOADS}
# The float helpers a soft-float build's fp workload runs in (libgcc's names, Arm's run-time ABI names;
# firmware/softfloat defines both)
SOFT_FLOAT_HELPERS = ("__addsf3", "__mulsf3", "__divsf3", "__aeabi_fadd", "__aeabi_fmul", "__aeabi_fdiv")


def get_workload(name_or_id: str | int) -> Workload:
    table = BY_ID if isinstance(name_or_id, int) else BY_NAME
    try:
        return table[name_or_id]
    except KeyError:
        raise KeyError(f"unknown workload {name_or_id!r}; known: {', '.join(BY_NAME)}") from None


def target_classes(w: Workload, platform: Platform) -> tuple[str, ...]:
    """The class(es) ``w``'s loop body is made of on ``platform`` (empty: a mix, e.g. soft-float)."""
    arm = platform.arch == "arm"
    if w.name == "mac" and not arm:
        return ("mul", "alu")            # RV32IM: mul + add
    if w.name == "dsp" and not (arm and platform.dsp):
        return ("alu", "mul")            # plain C: shifts, extends, multiplies
    if w.name == "fp" and platform.fpu == "none":
        return ()                        # soft-float helper calls: see SOFT_FLOAT_HELPERS
    if w.name == "fdiv" and (platform.fpu == "none" or "-mno-fdiv" in platform.cflags):
        return ()
    return w.targets


def size_label(w: Workload, size: int) -> str:
    """A short human label of a size: '4096B', '64x172', '256', ''."""
    hi, lo = size >> 16, size & 0xFFFF
    return {"none": "", "bytes": f"{size}B", "n": str(size), "rows_cols": f"{hi}x{lo}",
            "pos_head": f"{hi}x{lo}"}[w.size_kind]


def parse_size(w: Workload, text: str) -> int:
    """Inverse of :func:`size_label` (also accepts a plain integer)."""
    t = text.strip().rstrip("B")
    if "x" in t:
        hi, lo = (int(x) for x in t.split("x", 1))
        if not (0 < hi < 1 << 16 and 0 < lo < 1 << 16):
            raise ValueError(f"{w.name}: both dimensions of {text!r} must be in 1..65535")
        return hi << 16 | lo
    return int(t, 0)


@dataclass(frozen=True)
class SuiteItem:
    workload: Workload
    size: int
    iterations: int

    @property
    def label(self) -> str:
        """Unique name of this run in a dataset: 'alu', 'matvec_q8@64x172'."""
        s = size_label(self.workload, self.size)
        return f"{self.workload.name}@{s}" if s and self.workload.family == KERNEL else self.workload.name


def default_suite(scale: float = 1.0, names: tuple[str, ...] | None = None) -> list[SuiteItem]:
    """Every workload at its default sizes; ``scale`` multiplies the iteration counts (a real board
    whose power monitor samples slowly wants longer runs). ``names``: workload names (all their
    sizes) or suite labels ('matvec_q8@64x172': that size only), in the order given."""
    items: list[SuiteItem] = []
    for entry in names or [w.name for w in WORKLOADS]:
        name, at, size_text = entry.partition("@")
        w = get_workload(name)
        sizes = w.default_sizes
        if at:
            labels = {size_label(w, s): s for s in w.default_sizes}
            if w.family != KERNEL:             # its label carries no size (alu, load_sram)
                raise ValueError(f"workload {entry!r}: {w.name} has one size in the suite; give it as {w.name}")
            try:
                size = parse_size(w, size_text)
            except ValueError:
                size = None
            if size not in w.default_sizes:
                raise ValueError(f"workload {entry!r}: {w.name}'s suite sizes are "
                                 f"{', '.join(f'{w.name}@{k}' for k in labels)}")
            sizes = (size,)
        items += [SuiteItem(w, size, max(1, round(w.default_iterations * scale))) for size in sizes]
    return list({item.label: item for item in items}.values())   # each label once, where it came first
