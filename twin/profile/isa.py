"""Instruction classification on the host, from an ELF's disassembly.

The QEMU plugin only records *addresses*; what each address is (class, size, flags) comes from
``objdump -d`` of the same ELF.  That avoids the plugin's disassembler (capstone 4), which cannot
decode Helium/MVE or low-overhead-loop instructions.

Classes (``CLASSES``):

=======  =====================================================================================
alu      integer data processing: add/sub/logic/shift/move/compare/extend/bit-field, lui, auipc;
         Armv8.1-M csel/csinc/cset ... and the MVE scalar long shifts (lsll, lsrl, asrl, uqshl ...)
load     data loads, including multi-register (ldm, pop), FP loads (vldr, vldm, vpop, flw) and
         Helium/MVE vector loads (vldrb/vldrh/vldrw, the de-interleaving vld2x/vld4x)
store    data stores, including multi-register (stm, push), FP stores (vstr, vpush, fsw) and MVE
         vector stores (vstrb/vstrh/vstrw, vst2x/vst4x);
         RISC-V atomics (amo*, sc) count as stores
mul      scalar multiplies and multiply-accumulates: mul, mla, mls, smull, smlal, umull, umlal,
         umaal, the single 16x16 DSP multiplies smulbb/smlabb/smulwb/smlawb/smlalbb/smmul...,
         RISC-V mul, mulh, mulhsu, mulhu
div      integer division: sdiv, udiv, RISC-V div, divu, rem, remu
branch   b, bl, blx, bx, cbz, cbnz, tbb, tbh, Armv8.1-M le/dls/wls; RISC-V jal, jalr, b<cond>
fp       floating point arithmetic and moves: VFP v*.f32/f64 (vadd, vmul, vfma, vcvt, vcmp, vmov,
         vmrs ...), RISC-V F/D (fadd.s ...), but not:
fdiv     floating point divide and square root: vdiv, vsqrt; RISC-V fdiv, fsqrt (iterative units:
         an order of magnitude slower than the other fp instructions)
simd     Armv7E-M packed DSP/SIMD (sadd16, qadd, smlad, smuad, uxtb16, sxtab, sel, usad8, pkhbt
         ...), and Helium/MVE vector instructions with integer element types (vadd.i8, vmladava.s8
         -- objdump prints vmlava.s8 --, vaddva.s8, vshr.u8 ...), the untyped ones on Q registers
         (vand, vorr, veor, vbic, vmvn), predication (vpst/vpt blocks, vpsel, vctp, vmsr p0) and
         vmov of Q registers; an MVE instruction inside a VPT block (vmlavat.s8, vldrbt.u8) keeps
         its class
other    nop, it, barriers, system and CSR instructions, breakpoints, data in code, lctp
=======  =====================================================================================

Decisions: FP loads and stores stay ``load``/``store`` (they are memory traffic);
``pop {..., pc}`` is a ``load`` flagged as multi-register (its branch effect is not a class);
``it`` blocks are ``other``; the conditional instructions inside them keep their own class.

Flags: ``multi`` for multi-register transfers (ldm/stm/push/pop and FP variants);
``branch`` for every instruction of class branch (a *potential* taken branch).

To extend: add the base mnemonic (without condition code, ``s`` suffix, ``.w``/``.n`` width or
type suffix) to the tables below.  Unknown mnemonics classify as ``other`` and are reported by
:func:`is_known` so a test can catch them.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLASSES: tuple[str, ...] = ("alu", "load", "store", "mul", "div", "branch", "fp", "fdiv", "simd", "other")

# ---------------------------------------------------------------------------------------------
# Arm (Thumb-2, Armv6-M .. Armv8.1-M) base mnemonics -> class
# ---------------------------------------------------------------------------------------------
_ARM_TABLE: dict[str, str] = {}


def _add(table: dict[str, str], cls: str, names: str) -> None:
    for name in names.split():
        table[name] = cls


_add(_ARM_TABLE, "alu", """
    add addw adc sub subw sbc rsb rsc and orr orn eor bic mvn mov movw movt neg
    cmp cmn tst teq lsl lsr asr ror rrx adr
    clz rbit rev rev16 revsh ubfx sbfx bfi bfc sxtb sxth uxtb uxth ssat usat
    cpy
    csel csinc csinv csneg cset csetm cinc cinv cneg
    lsll lsrl asrl uqshl uqshll uqrshl uqrshll sqshl sqshll srshr srshrl sqrshr sqrshrl urshr urshrl
""")
_add(_ARM_TABLE, "load", """
    ldr ldrb ldrh ldrsb ldrsh ldrd ldrt ldrbt ldrht ldrsbt ldrsht
    ldrex ldrexb ldrexh ldrexd lda ldab ldah ldaex ldaexb ldaexh
    ldm ldmia ldmib ldmda ldmdb ldmfd ldmea pop pld pli
    vldr vldm vldmia vldmdb vpop
""")
_add(_ARM_TABLE, "store", """
    str strb strh strd strt strbt strht strex strexb strexh strexd stl stlb stlh stlex stlexb stlexh
    stm stmia stmib stmda stmdb stmfd stmea push
    vstr vstm vstmia vstmdb vpush
""")
_add(_ARM_TABLE, "mul", """
    mul mla mls smull smlal umull umlal umaal
    smulbb smulbt smultb smultt smulwb smulwt
    smlabb smlabt smlatb smlatt smlawb smlawt
    smlalbb smlalbt smlaltb smlaltt
    smmul smmulr smmla smmlar smmls smmlsr
""")
_add(_ARM_TABLE, "div", "sdiv udiv")
_add(_ARM_TABLE, "branch", "b bl blx bx cbz cbnz tbb tbh le letp dls dlstp wls wlstp bxns blxns")
_add(_ARM_TABLE, "simd", """
    sadd16 sadd8 ssub16 ssub8 sasx ssax uadd16 uadd8 usub16 usub8 uasx usax
    qadd qsub qdadd qdsub qadd16 qadd8 qsub16 qsub8 qasx qsax
    uqadd16 uqadd8 uqsub16 uqsub8 uqasx uqsax
    shadd16 shadd8 shsub16 shsub8 shasx shsax uhadd16 uhadd8 uhsub16 uhsub8 uhasx uhsax
    smlad smladx smlsd smlsdx smlald smlaldx smlsld smlsldx smuad smuadx smusd smusdx
    sxtab sxtah sxtab16 sxtb16 uxtab uxtah uxtab16 uxtb16
    sel usad8 usada8 pkhbt pkhtb ssat16 usat16
    vand vbic vorr vorn veor vmvn vpst vpsel vpnot vshlc
""")
_add(_ARM_TABLE, "other", """
    nop it dmb dsb isb cpsid cpsie mrs msr svc bkpt wfi wfe sev yield udf
    sg tt tta ttt ttat clrm vscclrm csdb ssbb pssbb lctp
    .word .short .byte .hword .inst
""")
# Vector (v*) mnemonics whose class depends on the element type: fp for .f16/.f32/.f64 or no type,
# simd for integer element types (MVE).  Those always classed fp, whatever the suffix:
_ARM_FP_ALWAYS = frozenset("vmov vmrs vmsr vcvt vcvtr vcvta vcvtn vcvtp vcvtm vcvtb vcvtt".split())
# VFP divide and square root: class fdiv (Helium has neither).
_ARM_FDIV = frozenset(("vdiv", "vsqrt"))
# Helium (MVE) mnemonics printed without a type suffix (bitwise ops on Q registers, predication).
_ARM_MVE_UNTYPED = frozenset("vand vbic vorr vorn veor vmvn vpst vpsel vpnot vshlc".split())
# A Q register operand: the instruction is Helium (MVE) whatever its mnemonic (vmov q0, q1; vmov.i8 q0, #0).
_ARM_Q_OPERAND_RE = re.compile(r"(?:^|[\s,{\[])q[0-7](?:\[|[\s,}]|$)")
# VFP mnemonics that may appear without a type suffix.
_ARM_VFP_UNTYPED = frozenset("vmov vmrs vmsr vcmp vcmpe vabs vneg vsqrt vsel vmaxnm vminnm".split())
_ARM_VECTOR_LOADSTORE = {
    "vldr": "load", "vldm": "load", "vldmia": "load", "vldmdb": "load", "vpop": "load",
    "vld1": "load", "vld2": "load", "vld4": "load", "vldrb": "load", "vldrh": "load",
    "vldrw": "load", "vldrd": "load",
    "vstr": "store", "vstm": "store", "vstmia": "store", "vstmdb": "store", "vpush": "store",
    "vst1": "store", "vst2": "store", "vst4": "store", "vstrb": "store", "vstrh": "store",
    "vstrw": "store", "vstrd": "store",
    # Helium (MVE) de-interleaving loads and interleaving stores: one instruction per beat pair
    "vld20": "load", "vld21": "load", "vld40": "load", "vld41": "load", "vld42": "load", "vld43": "load",
    "vst20": "store", "vst21": "store", "vst40": "store", "vst41": "store", "vst42": "store", "vst43": "store",
}
_ARM_MULTI = frozenset(
    "ldm ldmia ldmib ldmda ldmdb ldmfd ldmea stm stmia stmib stmda stmdb stmfd stmea push pop "
    "vldm vldmia vldmdb vstm vstmia vstmdb vpush vpop".split()
)
_ARM_CONDS = frozenset("eq ne cs hs cc lo mi pl vs vc hi ls ge lt gt le al".split())
_IT_RE = re.compile(r"^it[te]{0,3}$")
_VPT_RE = re.compile(r"^vp(?:st|t)[te]{0,3}$")    # MVE VPST / VPT blocks (vpst, vpstt, vptete ...)
_FP_TYPE_RE = re.compile(r"^(f16|f32|f64|bf16)$")

# ---------------------------------------------------------------------------------------------
# RISC-V (RV32IMAFDC + Zicsr; names without the "c." prefix, aliases included) -> class
# ---------------------------------------------------------------------------------------------
_RV_TABLE: dict[str, str] = {}
_add(_RV_TABLE, "alu", """
    add addi sub and andi or ori xor xori sll slli srl srli sra srai slt slti sltu sltiu lui auipc
    addi16sp addi4spn li mv neg not seqz snez sltz sgtz
""")
_add(_RV_TABLE, "load", "lb lh lw lbu lhu lwsp flw fld flwsp fldsp lr")
_add(_RV_TABLE, "store", "sb sh sw swsp fsw fsd fswsp fsdsp sc")
_add(_RV_TABLE, "mul", "mul mulh mulhsu mulhu")
_add(_RV_TABLE, "div", "div divu rem remu")
_add(_RV_TABLE, "branch", """
    jal jalr beq bne blt bge bltu bgeu j jr beqz bnez blez bgez bltz bgtz bgt ble bgtu bleu
    call tail ret
""")
_add(_RV_TABLE, "fdiv", "fdiv fsqrt")
_add(_RV_TABLE, "fp", """
    fadd fsub fmul fmin fmax fmadd fmsub fnmadd fnmsub fsgnj fsgnjn fsgnjx
    fcvt fmv feq flt fle fclass fneg fabs frcsr fscsr frrm fsrm frflags fsflags
""")
_add(_RV_TABLE, "other", """
    nop fence ecall ebreak wfi mret sret uret
    csrrw csrrs csrrc csrrwi csrrsi csrrci csrr csrw csrs csrc csrwi csrsi csrci
    unimp .word .short .insn .byte
""")


@dataclass(frozen=True)
class Insn:
    """One decoded instruction of the ELF."""

    mnemonic: str  # as printed by objdump (e.g. "ldr.w", "c.addi", "vadd.f32")
    size: int  # bytes
    cls: str  # one of CLASSES
    known: bool  # False when the mnemonic was not in the tables (then cls == "other")
    multi: bool = False  # multi-register transfer (ldm/stm/push/pop and FP variants)
    operands: str = ""  # as printed by objdump, comments after '@' or '#' kept (branch targets)

    @property
    def is_branch(self) -> bool:
        return self.cls == "branch"


def normalize_arch(arch: str) -> str:
    """'arm'/'thumb'/'armv7m'... -> 'arm'; 'riscv'/'riscv32'/'rv32' -> 'riscv'."""
    a = arch.lower()
    if a.startswith(("arm", "thumb", "cortex")):
        return "arm"
    if a.startswith(("riscv", "rv")):
        return "riscv"
    raise ValueError(f"unknown architecture {arch!r} (want 'arm' or 'riscv')")


def _arm_base_candidates(name: str) -> list[str]:
    """Possible base mnemonics: as is, without condition code, without 's', without both."""
    out = [name]
    if len(name) > 2 and name[-2:] in _ARM_CONDS:
        out.append(name[:-2])
    if name.endswith("s"):
        out.append(name[:-1])
    if len(name) > 3 and name[-2:] in _ARM_CONDS and name[-3] == "s":
        out.append(name[:-3])
    return out


def _classify_arm(mnemonic: str) -> tuple[str, bool, bool]:
    """Return (class, known, multi) for an Arm/Thumb mnemonic."""
    m = mnemonic.lower()
    if m.startswith("."):
        return "other", m in _ARM_TABLE, False
    parts = m.split(".")
    name = parts[0]
    types = [p for p in parts[1:] if p not in ("w", "n")]
    if _IT_RE.match(name):
        return "other", True, False
    if _VPT_RE.match(name):
        return "simd", True, False
    candidates = _arm_base_candidates(name)
    if name.startswith("v") and name[-1] in "te" and len(name) > 3:
        candidates.append(name[:-1])    # an MVE instruction in a VPT block: vmlavat.s8, vldrbt.u8, vandt
    for base in candidates:
        if base in _ARM_VECTOR_LOADSTORE:
            return _ARM_VECTOR_LOADSTORE[base], True, base in _ARM_MULTI
    for base in candidates:
        if base in _ARM_MVE_UNTYPED and not types:
            return "simd", True, False
        if base.startswith("v") and (base in _ARM_FP_ALWAYS or types or base in _ARM_VFP_UNTYPED):
            if base in _ARM_FP_ALWAYS or not types or any(_FP_TYPE_RE.match(t) for t in types):
                return ("fdiv" if base in _ARM_FDIV else "fp"), True, False
            return "simd", True, False
        if base in _ARM_TABLE:
            return _ARM_TABLE[base], True, base in _ARM_MULTI
    return "other", False, False



def _classify_riscv(mnemonic: str) -> tuple[str, bool, bool]:
    """Return (class, known, multi) for a RISC-V mnemonic (with or without aliases)."""
    m = mnemonic.lower()
    if m.startswith("."):
        return "other", m in _RV_TABLE, False
    if m.startswith("c."):
        m = m[2:]
    base = m.split(".")[0]
    if base in _RV_TABLE:
        return _RV_TABLE[base], True, False
    if base.startswith("amo"):
        return "store", True, False
    return "other", False, False


def classify(mnemonic: str, arch: str) -> str:
    """Class of one mnemonic (as objdump prints it); unknown mnemonics -> 'other'."""
    return classify_full(mnemonic, arch)[0]


def is_known(mnemonic: str, arch: str) -> bool:
    """True when the mnemonic is in the tables (including the documented 'other' ones)."""
    return classify_full(mnemonic, arch)[1]


@functools.lru_cache(maxsize=4096)
def classify_full(mnemonic: str, arch: str) -> tuple[str, bool, bool]:
    """(class, known, multi) for one mnemonic."""
    if normalize_arch(arch) == "arm":
        return _classify_arm(mnemonic)
    return _classify_riscv(mnemonic)


# ---------------------------------------------------------------------------------------------
# objdump
# ---------------------------------------------------------------------------------------------
OBJDUMP = {"arm": "arm-none-eabi-objdump", "riscv": "riscv64-unknown-elf-objdump"}

# "   54:	680b      	ldr	r3, [r1, #0]"  /  "80000044:	02528333          	mul	t1,t0,t0"
_LINE_RE = re.compile(r"^\s*([0-9a-f]+):\t([0-9a-f]{2,8}(?: [0-9a-f]{2,8})*)\s*\t(\S+)(?:[ \t]+(.*))?")


def objdump_command(elf: Path, arch: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The objdump command we parse.  RISC-V uses -M no-aliases: real mnemonics only."""
    a = normalize_arch(arch)
    cmd = [OBJDUMP[a], "-d"]
    if a == "riscv":
        cmd += ["-M", "no-aliases"]
    return cmd + list(extra) + [str(elf)]


def parse_objdump(text: str, arch: str) -> dict[int, Insn]:
    """Parse ``objdump -d`` output into address -> Insn."""
    out: dict[int, Insn] = {}
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if not m:
            continue
        addr = int(m.group(1), 16)
        raw = m.group(2)
        # Thumb prints "f441 0170" (two halfwords), RISC-V "02528333", data ".word" "e000ed88".
        size = sum(len(h) for h in raw.split()) // 2
        mnemonic = m.group(3)
        operands = (m.group(4) or "").strip()
        cls, known, multi = classify_full(mnemonic, arch)
        if cls == "fp" and mnemonic.startswith("vmov") and _ARM_Q_OPERAND_RE.search(operands.split("@")[0]):
            cls = "simd"          # an MVE vector move (vmov q0, q1 / vmov.i32 q0, #0 / lane moves)
        elif cls == "fp" and mnemonic.startswith(("vmsr", "vmrs")) and re.search(r"\b(?:p0|vpr)\b", operands):
            cls = "simd"          # the MVE predicate register P0 (set before VPST), not the FPSCR
        out[addr] = Insn(mnemonic, size, cls, known, multi, operands)
    return out


@functools.lru_cache(maxsize=16)
def _disassemble_cached(elf: str, mtime_ns: int, size: int, arch: str,
                        extra: tuple[str, ...]) -> dict[int, Insn]:
    cmd = objdump_command(Path(elf), arch, extra)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise RuntimeError(f"{cmd[0]} not found: install the cross binutils for {arch}") from e
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return parse_objdump(proc.stdout, arch)


_TAG_CPU_ARCH_V8_1M_MAIN = 21     # Arm build attribute Tag_CPU_arch: Armv8.1-M Mainline (Cortex-M55, M85)


@functools.lru_cache(maxsize=64)
def _arm_machine_args(elf: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """objdump's ``-m armv8.1-m.main`` for an ELF built for Armv8.1-M (its Tag_CPU_arch build attribute):
    without it objdump prints Helium/MVE instructions as coprocessor ones (ldc, cdp, mrc ...) and misses
    the low-overhead-loop forms.  Other Arm ELFs disassemble as before (no option)."""
    from elftools.elf.elffile import ELFFile

    try:
        with open(elf, "rb") as f:
            sec = ELFFile(f).get_section_by_name(".ARM.attributes")
            if sec is None:
                return ()
            for sub in sec.iter_subsections():
                for subsub in sub.iter_subsubsections():
                    for attr in subsub.iter_attributes():
                        if attr.tag == "TAG_CPU_ARCH" and int(attr.value) == _TAG_CPU_ARCH_V8_1M_MAIN:
                            return ("-m", "armv8.1-m.main")
    except Exception:       # not an ELF pyelftools reads, or attributes it cannot parse: objdump decides
        return ()
    return ()


def disassemble(elf: Path | str, arch: str, extra: tuple[str, ...] = ()) -> dict[int, Insn]:
    """Address -> Insn for every instruction objdump finds in the ELF (cached per file version).

    ``extra`` passes options to objdump, e.g. ``("-m", "armv8.1-m.main")`` for Helium code; an Arm ELF
    whose build attributes say Armv8.1-M gets that option by default (:func:`_arm_machine_args`).
    """
    p = Path(elf)
    st = p.stat()
    a = normalize_arch(arch)
    if a == "arm" and "-m" not in extra and not any(str(x).startswith("--architecture") for x in extra):
        extra = (*_arm_machine_args(str(p.resolve()), st.st_mtime_ns, st.st_size), *extra)
    return _disassemble_cached(str(p.resolve()), st.st_mtime_ns, st.st_size, a, tuple(extra))
