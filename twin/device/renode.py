"""The Renode backend: the same ELF (and the model image at the model address) in Renode, driven
through pyrenode3, its console UART on a socket the host opens with pyserial, and instruction counts
from Renode's opcode counters cut at the firmware's phase markers.

* **Platform.** The board's Renode platform (``.repl``): the ones Renode ships where it models the
  board (:data:`SHIPPED`: STM32F4 Discovery, nRF52840), otherwise one generated from our platform file
  (:func:`generate_repl`: the code, model and RAM windows, the core and the console UART at its
  ``UART_BASE``) — the MPS2 images and the RISC-V virt machine.
* **Console.** ``emulation CreateServerSocketTerminal PORT "twin-console" false`` and
  ``connector Connect sysbus.uart twin-console``. The host owns the port the Device opens (as with
  QEMU and the RTL harness): a relay thread accepts the host, connects to Renode's terminal, and only
  then starts the emulation, so the firmware's BOOT announcement is never sent to nobody.
* **Counts.** ``cpu EnableOpcodesCounting true`` and one ``InstallOpcodeCounterPattern`` per
  encoding pattern of :func:`opcode_patterns` (Thumb-2 or RV32: every pattern belongs to one class of
  ``twin.profile.isa``; no two patterns match one encoding). A hook at ``twin_mark`` (``cpu AddHook
  ADDR "python"``, run by Renode's own Python) appends a snapshot of every counter to a file, so the
  segments are the QEMU plugin's: boot | phase | io | phase | … | io. :meth:`RenodeProcess.segments`
  gives one :class:`RenodeSegment` per segment with the fields of twin.profile.counts.SegmentProfile
  (``as_profile(SegmentProfile)`` makes one). Renode counts by encoding, not by address: per function
  and per memory region there is no count, and the record says so (``unavailable``) instead of
  inventing one; branches split into unconditional (taken) and conditional (unresolved).
  ``twin run --emulator renode`` (twin.runner.profiled_session) turns that into the report's
  ``unavailable``.

Thumb encodings reach the counters in the canonical form of the Arm ARM: a 16-bit instruction as
``0x0000hhhh``, a 32-bit one as ``first halfword << 16 | second``; so every Arm pattern is 32 bits
wide and a 16-bit one has sixteen leading zeros (a 16-bit pattern would also match the second
halfword of a 32-bit instruction). RV32 patterns are 16 bits (compressed, low bits ≠ 11) or 32.
The backend checks the counters against Renode's own ``ExecutedInstructions`` and says so when they
disagree (e.g. a Renode build that counts no opcodes on the core).
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from twin.device.backend import EmulatorError, Relay
from twin.platforms import Platform

RENODE_HINT = ("the Renode backend needs Renode and pyrenode3: pip install '.[renode]' (or Antmicro's pyrenode3 from "
               "its repository) and set PYRENODE_PKG to "
               "a Renode release package (renode.io; `docker build --build-arg RENODE_DEB=...` installs one)")
CONSOLE = "twin-console"
MARK_SYMBOL = "twin_mark"
COUNTS_HEADER = "# twin renode counts v1:"
CLASSES = ("alu", "load", "store", "mul", "div", "branch", "fp", "fdiv", "simd", "other")   # twin.profile.isa.CLASSES
UNAVAILABLE = {
    "by_function": "Renode's opcode counters count encodings, not addresses: no per-function count",
    "mem": "Renode's opcode counters see no memory accesses: no loads/stores per region",
    "branches_not_taken": "conditional branches are counted, not their outcome (all in branches_unresolved)",
    "caches": "Renode's opcode counters see no addresses: no simulated cache (twin predict assumes hit rates)",
}


class RenodeError(EmulatorError):
    """Renode (or pyrenode3) is missing, refused a command, or had to be stopped."""


# --------------------------------------------------------------------------- opcode patterns


@dataclass(frozen=True)
class Pattern:
    """One opcode counter: ``bits`` is Renode's pattern (``0``/``1``/``x``, most significant first)."""
    name: str
    cls: str
    bits: str
    width: int            # bytes of the instructions it matches (fetch bytes)
    cond: bool = False    # a conditional branch (its outcome unknown)

    @property
    def mask_value(self) -> tuple[int, int]:
        mask = int("".join("0" if b == "x" else "1" for b in self.bits), 2)
        value = int("".join("1" if b == "1" else "0" for b in self.bits), 2)
        return mask, value

    def matches(self, opcode: int) -> bool:
        mask, value = self.mask_value
        return opcode & mask == value


def _bits(text: str) -> str:
    b = text.replace(" ", "").replace("_", "")
    if len(b) not in (16, 32) or set(b) - set("01x"):
        raise ValueError(f"bad opcode pattern {text!r}")
    return b


def _minus(a: str, b: str) -> list[str]:
    """Disjoint patterns matching what ``a`` matches and ``b`` does not."""
    if len(a) != len(b) or any(x != "x" and y != "x" and x != y for x, y in zip(a, b, strict=True)):
        return [a]            # disjoint already (or of another width)
    out, cur = [], list(a)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x == "x" and y != "x":
            out.append("".join(cur[:i] + ["1" if y == "0" else "0"] + cur[i + 1:]))
            cur[i] = y
    return out                # what is left in cur is inside b: dropped


# Rules in priority order: (class, conditional branch?, pattern). An encoding counts for the first rule
# that matches it (Renode's counters take the first match); compiling subtracts every earlier rule from
# each later one, so the installed patterns are disjoint and each belongs to exactly one class.
T16 = "0000000000000000 "          # a 16-bit Thumb instruction in the canonical 32-bit form
_THUMB_RULES: tuple[tuple[str, bool, str], ...] = (
    # ---- 16-bit
    ("mul", False, T16 + "0100001101xxxxxx"),                       # muls
    ("alu", False, T16 + "00xxxxxxxxxxxxxx"),                       # shift imm, add/sub, mov/cmp imm8
    ("alu", False, T16 + "010000xxxxxxxxxx"),                       # data processing (register)
    ("branch", False, T16 + "010001110xxxxxxx"),                    # bx
    ("branch", False, T16 + "010001111xxxxxxx"),                    # blx
    ("other", False, T16 + "0100011011000000"),                     # mov r8, r8: the ARMv6-M nop (0x46c0)
    ("alu", False, T16 + "010001xxxxxxxxxx"),                       # add/cmp/mov high registers
    ("load", False, T16 + "01001xxxxxxxxxxx"),                      # ldr literal
    ("load", False, T16 + "0101011xxxxxxxxx"),                      # ldrsb (register)
    ("store", False, T16 + "01010xxxxxxxxxxx"),                     # str/strh/strb (register)
    ("load", False, T16 + "01011xxxxxxxxxxx"),                      # ldr/ldrh/ldrb/ldrsh (register)
    ("store", False, T16 + "011x0xxxxxxxxxxx"),                     # str/strb imm
    ("load", False, T16 + "011x1xxxxxxxxxxx"),                      # ldr/ldrb imm
    ("store", False, T16 + "10000xxxxxxxxxxx"),                     # strh imm
    ("load", False, T16 + "10001xxxxxxxxxxx"),                      # ldrh imm
    ("store", False, T16 + "10010xxxxxxxxxxx"),                     # str sp-relative
    ("load", False, T16 + "10011xxxxxxxxxxx"),                      # ldr sp-relative
    ("alu", False, T16 + "1010xxxxxxxxxxxx"),                       # adr, add sp
    ("alu", False, T16 + "10110000xxxxxxxx"),                       # add/sub sp, imm
    ("branch", True, T16 + "1011x0x1xxxxxxxx"),                     # cbz, cbnz
    ("alu", False, T16 + "10110010xxxxxxxx"),                       # sxth sxtb uxth uxtb
    ("store", False, T16 + "1011010xxxxxxxxx"),                     # push
    ("other", False, T16 + "10110110011xxxxx"),                     # cps
    ("alu", False, T16 + "10111010xxxxxxxx"),                       # rev rev16 revsh
    ("load", False, T16 + "1011110xxxxxxxxx"),                      # pop
    ("other", False, T16 + "1011111xxxxxxxxx"),                     # bkpt, it, nop and hints
    ("store", False, T16 + "11000xxxxxxxxxxx"),                     # stm
    ("load", False, T16 + "11001xxxxxxxxxxx"),                      # ldm
    ("other", False, T16 + "1101111xxxxxxxxx"),                     # udf, svc
    ("branch", True, T16 + "1101xxxxxxxxxxxx"),                     # b<cond>
    ("branch", False, T16 + "11100xxxxxxxxxxx"),                    # b
    # ---- 32-bit: load/store multiple, dual, exclusive, table branch
    ("other", False, "1110100101111111 1110100101111111"),          # sg (Armv8-M)
    ("other", False, "111010000100xxxx 1111xxxxxx000000"),          # tt, ttt, tta, ttat (Armv8-M)
    ("store", False, "1110100010x0xxxx xxxxxxxxxxxxxxxx"),          # stm(ia)
    ("load", False, "1110100010x1xxxx xxxxxxxxxxxxxxxx"),           # ldm(ia)
    ("store", False, "1110100100x0xxxx xxxxxxxxxxxxxxxx"),          # stmdb, push.w
    ("load", False, "1110100100x1xxxx xxxxxxxxxxxxxxxx"),           # ldmdb
    ("store", False, "111010000100xxxx xxxxxxxxxxxxxxxx"),          # strex
    ("load", False, "111010000101xxxx xxxxxxxxxxxxxxxx"),           # ldrex
    ("store", False, "11101000x110xxxx xxxxxxxxxxxxxxxx"),          # strd post-indexed
    ("load", False, "11101000x111xxxx xxxxxxxxxxxxxxxx"),           # ldrd post-indexed
    ("store", False, "11101001x1x0xxxx xxxxxxxxxxxxxxxx"),          # strd
    ("load", False, "11101001x1x1xxxx xxxxxxxxxxxxxxxx"),           # ldrd
    ("branch", False, "111010001101xxxx 11110000000xxxxx"),         # tbb, tbh
    ("store", False, "111010001100xxxx xxxxxxxx010xxxxx"),          # strexb, strexh
    ("store", False, "111010001100xxxx xxxxxxxx1xxxxxxx"),          # stl*, stlex* (Armv8-M)
    ("load", False, "111010001101xxxx xxxxxxxx010xxxxx"),           # ldrexb, ldrexh
    ("load", False, "111010001101xxxx xxxxxxxx1xxxxxxx"),           # lda*, ldaex* (Armv8-M)
    # ---- 32-bit: data processing (shifted register)
    ("simd", False, "11101010110xxxxx 0xxxxxxxxxxxxxxx"),           # pkhbt, pkhtb
    ("alu", False, "1110101xxxxxxxxx xxxxxxxxxxxxxxxx"),            # and bic orr orn eor add adc sbc sub rsb, mov ...
    # ---- 32-bit: floating point (coprocessors 10, 11)
    ("fp", False, "111011000100xxxx xxxx101xxxxxxxxx"),             # vmov between two core and FP registers
    ("fp", False, "111011000101xxxx xxxx101xxxxxxxxx"),
    ("store", False, "1110110xxxx0xxxx xxxx101xxxxxxxxx"),          # vstr vstm vpush
    ("load", False, "1110110xxxx1xxxx xxxx101xxxxxxxxx"),           # vldr vldm vpop
    ("fdiv", False, "111011101x00xxxx xxxx101xx0x0xxxx"),           # vdiv
    ("fdiv", False, "111011101x110001 xxxx101x11x0xxxx"),           # vsqrt
    ("fp", False, "11101110xxxxxxxx xxxx101xxxxxxxxx"),             # VFP data processing, vmov, vmrs, vmsr
    ("fp", False, "11111110xxxxxxxx xxxx101xxxx0xxxx"),             # vsel vmaxnm vminnm vrint* vcvt{a,n,p,m}
    # ---- 32-bit: branches and miscellaneous control
    ("other", False, "11110x111xxxxxxx 10x0xxxxxxxxxxxx"),          # msr mrs, hints, dsb dmb isb, udf.w
    ("branch", True, "11110xxxxxxxxxxx 10x0xxxxxxxxxxxx"),          # b<cond>.w
    ("branch", False, "11110xxxxxxxxxxx 10x1xxxxxxxxxxxx"),         # b.w
    ("branch", False, "11110xxxxxxxxxxx 11x1xxxxxxxxxxxx"),         # bl
    # ---- 32-bit: data processing (immediate)
    ("simd", False, "111100110010xxxx 0000xxxx00xxxxxx"),           # ssat16
    ("simd", False, "111100111010xxxx 0000xxxx00xxxxxx"),           # usat16
    ("alu", False, "11110xxxxxxxxxxx 0xxxxxxxxxxxxxxx"),            # modified and plain immediates
    # ---- 32-bit: loads and stores of single items
    ("store", False, "11111000xxx0xxxx xxxxxxxxxxxxxxxx"),          # strb strh str (imm and register)
    ("load", False, "1111100xxxx1xxxx xxxxxxxxxxxxxxxx"),           # ldr[s]b ldr[s]h ldr, pld pli
    # ---- 32-bit: data processing (register)
    ("alu", False, "111110100xxxxxxx 1111xxxx0000xxxx"),            # lsl lsr asr ror (register)
    ("alu", False, "111110100x0x1111 1111xxxx1xxxxxxx"),            # sxth uxth sxtb uxtb
    ("simd", False, "111110100xxxxxxx 1111xxxx1xxxxxxx"),           # sxtab16 sxtb16 sxtab sxtah uxt...
    ("simd", False, "111110101xxxxxxx 1111xxxx0xxxxxxx"),           # parallel add/sub (sadd16, qadd8 ...)
    ("simd", False, "1111101010 00xxxx 1111xxxx10xxxxxx"),          # qadd qdadd qsub qdsub
    ("alu", False, "1111101010 01xxxx 1111xxxx10xxxxxx"),           # rev rev16 rbit revsh
    ("simd", False, "1111101010 10xxxx 1111xxxx1000xxxx"),          # sel
    ("alu", False, "1111101010 11xxxx 1111xxxx1000xxxx"),           # clz
    # ---- 32-bit: multiply, multiply-accumulate, absolute difference
    ("simd", False, "111110110010xxxx xxxxxxxx00xxxxxx"),           # smlad smladx smuad smuadx
    ("simd", False, "111110110100xxxx xxxxxxxx00xxxxxx"),           # smlsd smusd
    ("simd", False, "111110110111xxxx xxxxxxxx00xxxxxx"),           # usad8 usada8
    ("mul", False, "111110110xxxxxxx xxxxxxxx00xxxxxx"),            # mul mla mls smulxy smlaxy smulw smmul ...
    # ---- 32-bit: long multiply, long multiply-accumulate, divide
    ("div", False, "1111101110x1xxxx xxxxxxxx1111xxxx"),            # sdiv udiv
    ("mul", False, "1111101110x0xxxx xxxxxxxx0000xxxx"),            # smull umull
    ("mul", False, "1111101111x0xxxx xxxxxxxx0000xxxx"),            # smlal umlal
    ("mul", False, "111110111100xxxx xxxxxxxx10xxxxxx"),            # smlalxy
    ("simd", False, "11111011110xxxxx xxxxxxxx110xxxxx"),           # smlald smlsld
    ("mul", False, "111110111110xxxx xxxxxxxx0110xxxx"),            # umaal
)

_RV_RULES: tuple[tuple[str, bool, str], ...] = (
    # ---- compressed (16-bit): quadrant 0
    ("other", False, "0000000000000000"),                               # c.unimp (illegal)
    ("alu", False, "000xxxxxxxxxxx00"),                                 # c.addi4spn
    ("load", False, "001xxxxxxxxxxx00"),                                # c.fld
    ("load", False, "010xxxxxxxxxxx00"),                                # c.lw
    ("load", False, "011xxxxxxxxxxx00"),                                # c.flw
    ("store", False, "101xxxxxxxxxxx00"),                               # c.fsd
    ("store", False, "110xxxxxxxxxxx00"),                               # c.sw
    ("store", False, "111xxxxxxxxxxx00"),                               # c.fsw
    # quadrant 1
    ("alu", False, "000xxxxxxxxxxx01"),                                 # c.addi (c.nop is c.addi x0)
    ("branch", False, "001xxxxxxxxxxx01"),                              # c.jal
    ("alu", False, "01xxxxxxxxxxxx01"),                                 # c.li, c.lui, c.addi16sp
    ("alu", False, "100xxxxxxxxxxx01"),                                 # c.srli c.srai c.andi c.sub c.xor c.or c.and
    ("branch", False, "101xxxxxxxxxxx01"),                              # c.j
    ("branch", True, "11xxxxxxxxxxxx01"),                               # c.beqz, c.bnez
    # quadrant 2
    ("alu", False, "000xxxxxxxxxxx10"),                                 # c.slli
    ("load", False, "001xxxxxxxxxxx10"),                                # c.fldsp
    ("load", False, "010xxxxxxxxxxx10"),                                # c.lwsp
    ("load", False, "011xxxxxxxxxxx10"),                                # c.flwsp
    ("other", False, "1001000000000010"),                               # c.ebreak
    ("branch", False, "100xxxxxx0000010"),                              # c.jr, c.jalr
    ("alu", False, "100xxxxxxxxxxx10"),                                 # c.mv, c.add
    ("store", False, "101xxxxxxxxxxx10"),                               # c.fsdsp
    ("store", False, "110xxxxxxxxxxx10"),                               # c.swsp
    ("store", False, "111xxxxxxxxxxx10"),                               # c.fswsp
    # ---- 32-bit
    ("alu", False, "xxxxxxxxxxxxxxxxxxxxxxxxx0110111"),                 # lui
    ("alu", False, "xxxxxxxxxxxxxxxxxxxxxxxxx0010111"),                 # auipc
    ("branch", False, "xxxxxxxxxxxxxxxxxxxxxxxxx1101111"),              # jal
    ("branch", False, "xxxxxxxxxxxxxxxxx000xxxxx1100111"),              # jalr
    ("branch", True, "xxxxxxxxxxxxxxxxxxxxxxxxx1100011"),               # beq bne blt bge bltu bgeu
    ("load", False, "xxxxxxxxxxxxxxxxxxxxxxxxx0000011"),                # lb lh lw lbu lhu
    ("store", False, "xxxxxxxxxxxxxxxxxxxxxxxxx0100011"),               # sb sh sw
    ("alu", False, "xxxxxxxxxxxxxxxxxxxxxxxxx0010011"),                 # addi slti sltiu xori ori andi slli srli srai
    ("mul", False, "0000001xxxxxxxxxx0xxxxxxx0110011"),                 # mul mulh mulhsu mulhu
    ("div", False, "0000001xxxxxxxxxx1xxxxxxx0110011"),                 # div divu rem remu
    ("alu", False, "0x00000xxxxxxxxxxxxxxxxxx0110011"),                 # add sub sll slt sltu xor srl sra or and
    ("other", False, "xxxxxxxxxxxxxxxxxxxxxxxxx0001111"),               # fence, fence.i
    ("other", False, "xxxxxxxxxxxxxxxxxxxxxxxxx1110011"),               # ecall ebreak mret wfi csr*
    ("load", False, "xxxxxxxxxxxxxxxxxxxxxxxxx0000111"),                # flw fld
    ("store", False, "xxxxxxxxxxxxxxxxxxxxxxxxx0100111"),               # fsw fsd
    ("fdiv", False, "000110xxxxxxxxxxxxxxxxxxx1010011"),                # fdiv.s fdiv.d
    ("fdiv", False, "010110x00000xxxxxxxxxxxxx1010011"),                # fsqrt.s fsqrt.d
    ("fp", False, "xxxxxxxxxxxxxxxxxxxxxxxxx1010011"),                  # OP-FP
    ("fp", False, "xxxxxxxxxxxxxxxxxxxxxxxxx100xx11"),                  # fmadd fmsub fnmsub fnmadd
    ("load", False, "00010xxxxxxxxxxxxxxxxxxxx0101111"),                # lr
    ("store", False, "xxxxxxxxxxxxxxxxxxxxxxxxx0101111"),               # sc, amo*
)


def _compile(rules: tuple[tuple[str, bool, str], ...], arch: str) -> tuple[Pattern, ...]:
    done: list[str] = []
    out: list[Pattern] = []
    counts: dict[str, int] = {}
    for cls, cond, text in rules:
        if cls not in CLASSES:
            raise ValueError(f"opcode rule {text!r}: unknown class {cls!r}")
        pieces = [_bits(text)]
        for earlier in done:
            pieces = [q for p in pieces for q in _minus(p, earlier)]
        done.append(_bits(text))
        for bits in pieces:
            if arch == "arm":
                width = 2 if bits.startswith("0" * 16) else 4
            else:
                width = len(bits) // 8
            key = f"{cls}.cond" if cond else cls
            n = counts.get(key, 0)
            counts[key] = n + 1
            out.append(Pattern(f"{key}.{n}", cls, bits, width, cond))
    return tuple(out)


_PATTERNS: dict[str, tuple[Pattern, ...]] = {}


def opcode_patterns(arch: str) -> tuple[Pattern, ...]:
    """The disjoint opcode counter patterns for ``arch`` ("arm": Thumb-2, "riscv": RV32IMAFC)."""
    if arch not in ("arm", "riscv"):
        raise RenodeError(f"no opcode patterns for architecture {arch!r}")
    if arch not in _PATTERNS:
        _PATTERNS[arch] = _compile(_THUMB_RULES if arch == "arm" else _RV_RULES, arch)
    return _PATTERNS[arch]


def classify_opcode(opcode: int, arch: str) -> Pattern | None:
    """The pattern Renode counts ``opcode`` under (canonical form, see the module doc), or None."""
    for p in opcode_patterns(arch):
        if p.matches(opcode):
            return p
    return None


# --------------------------------------------------------------------------- platforms and scripts


@dataclass(frozen=True)
class RenodePlatform:
    """Where the platform comes from: a ``repl`` Renode ships (path inside Renode), or generated text."""
    repl: str | None           # e.g. platforms/boards/stm32f4_discovery-kit.repl; None: generated
    uart: str                  # the console, e.g. sysbus.usart2
    cpu: str = "sysbus.cpu"
    text: str = ""             # the generated description


SHIPPED: dict[str, tuple[str, str]] = {
    # platform id -> (Renode's platform file, its console UART)
    "stm32f4-disco": ("platforms/boards/stm32f4_discovery-kit.repl", "sysbus.usart2"),
    "nrf52840-dk": ("platforms/cpus/nrf52840.repl", "sysbus.uart0"),
}
_CORTEX_M = {"cortex-m0": "cortex-m0", "cortex-m0+": "cortex-m0+", "cortex-m3": "cortex-m3",
             "cortex-m4": "cortex-m4", "cortex-m4f": "cortex-m4f", "cortex-m7": "cortex-m7",
             "cortex-m23": "cortex-m23", "cortex-m33": "cortex-m33", "cortex-m55": "cortex-m55"}


def _uart_base(platform: Platform) -> int:
    base = platform.defines.get("UART_BASE")
    if not isinstance(base, int):
        raise RenodeError(f"platform {platform.id}: no integer defines.UART_BASE: cannot place the console UART")
    return base


def generate_repl(platform: Platform) -> str:
    """A Renode platform description from our platform file: the firmware's three memory windows, the
    core, and the console UART at its UART_BASE (the MPS2 images: CMSDK APB UART; RISC-V virt: NS16550)."""
    if not platform.has_firmware:
        raise RenodeError(f"platform {platform.id} has no firmware build: nothing to run in Renode")
    lines = [f"// generated by tinyllm-twin from {platform.source.name if platform.source else platform.id}: "
             "the firmware's memory windows, its core and its console UART", ""]
    for name, region in (("code", platform.flash), ("model", platform.model), ("ram", platform.ram)):
        lines += [f"{name}: Memory.MappedMemory @ sysbus {region.origin:#x}", f"    size: {region.size:#x}", ""]
    uart = _uart_base(platform)
    if platform.arch == "arm":
        core = _CORTEX_M.get(platform.core)
        if core is None:
            raise RenodeError(f"platform {platform.id}: core {platform.core!r} has no Renode CortexM cpuType")
        lines += ["nvic: IRQControllers.NVIC @ sysbus 0xE000E000", f"    systickFrequency: {platform.clock_hz}",
                  "    IRQ -> cpu@0", "",
                  "cpu: CPU.CortexM @ sysbus", f'    cpuType: "{core}"', "    nvic: nvic", "",
                  f"uart: UART.CMSDK_APB_UART @ sysbus {uart:#x}", ""]
    elif platform.arch == "riscv":
        lines += ["cpu: CPU.RiscV32 @ sysbus", f'    cpuType: "{platform.isa}"',
                  "    privilegedArchitecture: PrivilegedArchitecture.Priv1_10", "    timeProvider: clint", "",
                  "clint: IRQControllers.CoreLevelInterruptor @ sysbus 0x02000000", "    [0,1] -> cpu@[3,7]",
                  f"    frequency: {platform.clock_hz}", "",
                  f"uart: UART.NS16550 @ sysbus {uart:#x}", ""]
    else:
        raise RenodeError(f"platform {platform.id}: no Renode description for architecture {platform.arch!r}")
    return "\n".join(lines)


def renode_platform(platform: Platform) -> RenodePlatform:
    if platform.vector == "mve":
        raise RenodeError(f"{platform.id}: the Renode opcode patterns do not cover Helium (MVE) or the Armv8.1-M "
                          "low-overhead loops, so its counts would be wrong; profile it with QEMU "
                          f"(`twin run --platform {platform.id}`)")
    if platform.id in SHIPPED:
        repl, uart = SHIPPED[platform.id]
        return RenodePlatform(repl, uart)
    return RenodePlatform(None, "sysbus.uart", text=generate_repl(platform))


def mark_address(elf: Path) -> int | None:
    """The first instruction of ``twin_mark`` (Thumb bit cleared), from the ELF's symbol table."""
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        e = ELFFile(f)
        symtab = e.get_section_by_name(".symtab")
        syms = symtab.get_symbol_by_name(MARK_SYMBOL) if symtab is not None else None
        if not syms:
            return None
        addr = int(syms[0]["st_value"])
        return addr & ~1 if e.header["e_machine"] == "EM_ARM" else addr


def hook_script(patterns: tuple[Pattern, ...], counts: Path | str) -> str:
    """The Python (run by Renode at each ``twin_mark``) that appends one snapshot line to ``counts``:
    ExecutedInstructions, then every counter in ``patterns`` order."""
    names = ",".join(f"'{p.name}'" for p in patterns)
    return (f"f = open(r'{counts}', 'a'); "
            f"f.write(' '.join([str(self.ExecutedInstructions)] + [str(self.GetOpcodeCounter(n)) for n in [{names}]]) "
            "+ '\\n'); f.close()")


def _quote(text: str) -> str:
    if '"' in text:
        raise RenodeError(f"cannot quote {text!r} for the Renode monitor (it contains a double quote)")
    return f'"{text}"'


def machine_commands(platform: Platform, elf: Path | str, image: Path | str | None, *, repl_file: Path | str | None,
                     counts: Path | str | None, port: int | str = 3456, counting: bool = True) -> list[str]:
    """Monitor commands that set up one run (the backend's and the .resc's): machine, platform, ELF, model
    image, console terminal, opcode counters and the mark hook. ``repl_file``: where a generated platform
    description was written (None: load it from a string)."""
    rp = renode_platform(platform)
    cmds = ["using sysbus", f"mach create {_quote(platform.id)}"]
    if rp.repl is not None:
        cmds.append(f"machine LoadPlatformDescription @{rp.repl}")
    elif repl_file is not None:
        cmds.append(f"machine LoadPlatformDescription @{repl_file}")
    else:
        cmds.append(f'machine LoadPlatformDescriptionFromString """\n{rp.text}"""')
    cmds.append(f"sysbus LoadELF @{elf}")
    if image is not None:
        cmds.append(f"sysbus LoadBinary @{image} {platform.model.origin:#x}")
    cmds += [f"emulation CreateServerSocketTerminal {port} {_quote(CONSOLE)} false",
             f"connector Connect {rp.uart} {CONSOLE}"]
    if counting:
        patterns = opcode_patterns(platform.arch)
        cmds.append(f"{rp.cpu} EnableOpcodesCounting true")
        cmds += [f"{rp.cpu} InstallOpcodeCounterPattern {_quote(p.name)} {_quote(p.bits)}" for p in patterns]
        mark = mark_address(Path(elf)) if Path(elf).exists() else None
        if mark is not None and counts is not None:
            cmds.append(f"{rp.cpu} AddHook {mark:#x} {_quote(hook_script(patterns, counts))}")
    return cmds


def renode_script(platform: Platform, elf: Path | str, image: Path | str | None, *, port: int = 3456,
                  counts: str = "twin-counts.txt") -> str:
    """A ``.resc`` for users who drive Renode by hand: ``renode twin.resc``, then open the console with
    ``socket://127.0.0.1:PORT`` (e.g. ``twin bench --port socket://127.0.0.1:PORT``). The mark hook appends
    counter snapshots to ``counts`` (first line: the counter names)."""
    patterns = opcode_patterns(platform.arch)
    head = [f":name: tinyllm-twin on {platform.id}",
            f":description: generated by `twin renode-script --platform {platform.id}`: the firmware ELF, the model "
            f"image at {platform.model.origin:#x}, the console on socket port {port}, opcode counters per class "
            f"(snapshots at each twin_mark appended to {counts})", "",
            f"# counters in the order of each snapshot line (after ExecutedInstructions): "
            f"{' '.join(p.name for p in patterns)}", ""]
    body = machine_commands(platform, elf, image, repl_file=None, counts=counts, port=port)
    return "\n".join(head + body + ["", "start", ""])


# --------------------------------------------------------------------------- counts


@dataclass(frozen=True)
class RenodeSegment:
    """What ran between two marks, as Renode's counters saw it: the fields of SegmentProfile, and what
    Renode cannot give (``unavailable``: field -> why) instead of an invented figure."""
    total: int
    by_class: dict[str, int]
    by_function: dict[str, int] = field(default_factory=dict)
    mem: dict[str, dict[str, int]] | None = None
    undecoded: int = 0               # executed instructions no pattern matched (counted as "other")
    branches_taken: int = 0          # unconditional branches, calls, returns (always taken)
    branches_not_taken: int = 0
    branches_unresolved: int = 0     # conditional branches: counted, outcome unknown
    fetch_bytes: int = 0             # Σ counts × pattern width (undecoded ones not included)
    unavailable: dict[str, str] = field(default_factory=lambda: dict(UNAVAILABLE))

    def as_profile(self, record_type):
        """The same counts as ``record_type`` (twin.profile.counts.SegmentProfile)."""
        names = {f.name for f in fields(record_type)}
        return record_type(**{f.name: getattr(self, f.name) for f in fields(self) if f.name in names})


def _delta(a: int, b: int) -> int:
    d = b - a
    return d if d >= 0 else d + (1 << 32)      # a 32-bit counter (older tlib) that wrapped


def segments_from_snapshots(patterns: tuple[Pattern, ...], snapshots: list[list[int]]) -> list[RenodeSegment]:
    """Segments between consecutive snapshots (each: ExecutedInstructions, then one count per pattern);
    the first segment starts from zero."""
    out = []
    prev = [0] * (len(patterns) + 1)
    for snap in snapshots:
        if len(snap) != len(patterns) + 1:
            raise RenodeError(f"a counter snapshot has {len(snap)} values, {len(patterns) + 1} expected")
        d = [_delta(a, b) for a, b in zip(prev, snap, strict=True)]
        prev = snap
        executed, counts = d[0], d[1:]
        by_class = dict.fromkeys(CLASSES, 0)
        taken = unresolved = fetch = 0
        for p, n in zip(patterns, counts, strict=True):
            by_class[p.cls] += n
            fetch += n * p.width
            if p.cls == "branch":
                if p.cond:
                    unresolved += n
                else:
                    taken += n
        matched = sum(counts)
        undecoded = max(0, executed - matched)
        by_class["other"] += undecoded
        out.append(RenodeSegment(total=matched + undecoded, by_class=by_class, undecoded=undecoded,
                                 branches_taken=taken, branches_unresolved=unresolved, fetch_bytes=fetch))
    return out


def read_counts(path: Path) -> tuple[list[str], list[list[int]]]:
    """The counter names (header) and the snapshot lines of a counts file."""
    names: list[str] = []
    snaps: list[list[int]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith(COUNTS_HEADER):
            names = line[len(COUNTS_HEADER):].split()
        elif line.strip():
            try:
                snaps.append([int(x) for x in line.split()])
            except ValueError:
                raise RenodeError(f"{path}, line {lineno}: not a counter snapshot: {line[:60]!r}") from None
    return names, snaps


# --------------------------------------------------------------------------- the backend


def _pyrenode3():
    try:
        return importlib.import_module("pyrenode3.wrappers")
    except ImportError:
        raise RenodeError(RENODE_HINT) from None
    except Exception as exc:          # pyrenode3 found no Renode (PYRENODE_PKG unset, no mono/dotnet ...)
        raise RenodeError(f"pyrenode3 could not load Renode ({type(exc).__name__}: {exc}); {RENODE_HINT}") from None


class _Status:
    """``proc``-like status of an in-process Renode emulation: poll() is None while it runs."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self._done = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired("renode", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def end(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._done.set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RenodeProcess:
    """One Renode emulation of ``platform`` with ``elf`` (and the model ``image`` at the model address),
    the same interface as QemuProcess / RtlProcess: ``url`` is what pyserial opens."""

    name = "Renode"

    def __init__(self, platform: Platform, elf: Path, image: Path | None = None, *, timeout: float = 120.0,
                 counting: bool = True):
        self.platform = platform
        self.elf = Path(elf)
        self.image = Path(image) if image is not None else None
        self.timeout = timeout
        self.counting = counting
        self.port = 0                       # ours: the host connects here
        self.terminal_port = 0              # Renode's server-socket terminal
        self.proc = _Status()
        self.deadline = 0.0
        self.notes: list[str] = []          # what went wrong or was refused (stderr())
        self.commands: list[str] = []       # what was said to the monitor, in order
        self._monitor = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._relay: Relay | None = None
        self._snapshots: list[list[int]] | None = None
        self.counts_file: Path | None = None

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    # -- monitor

    def execute(self, command: str) -> str:
        """One monitor command; Renode's error output becomes a RenodeError naming the command."""
        self.commands.append(command)
        out, err = self._monitor.execute(command)
        if err and str(err).strip():
            shown = command if len(command) < 120 else command[:117] + "..."
            raise RenodeError(f"Renode refused `{shown}`: {str(err).strip()}")
        return str(out or "")

    def _number(self, command: str) -> int:
        out = self.execute(command).strip()
        m = re.search(r"(0x[0-9a-fA-F]+|\d+)\s*$", out)
        if not m:
            raise RenodeError(f"Renode answered `{command}` with {out!r}, not a number")
        return int(m[1], 0)

    # -- life cycle

    def start(self) -> RenodeProcess:
        wrappers = _pyrenode3()
        self._tmp = tempfile.TemporaryDirectory(prefix="twin-renode-")
        tmp = Path(self._tmp.name)
        rp = renode_platform(self.platform)
        repl_file = None
        if rp.repl is None:
            repl_file = tmp / f"{self.platform.id}.repl"
            repl_file.write_text(rp.text)
        patterns = opcode_patterns(self.platform.arch) if self.counting else ()
        if self.counting:
            self.counts_file = tmp / "counts.txt"
            self.counts_file.write_text(f"{COUNTS_HEADER} {' '.join(p.name for p in patterns)}\n")
        try:
            self._monitor = wrappers.Monitor()
            self.terminal_port = _free_port()
            for cmd in machine_commands(self.platform, self.elf, self.image, repl_file=repl_file,
                                        counts=self.counts_file, port=self.terminal_port, counting=self.counting):
                self.execute(cmd)
        except RenodeError:
            self._clear()
            raise
        except Exception as exc:          # pythonnet / Renode exceptions
            self._clear()
            raise RenodeError(f"Renode failed while setting up {self.platform.id}: {type(exc).__name__}: {exc}") from None
        # The host connects to our port; the relay connects it to Renode's terminal and then starts the
        # emulation (nothing the firmware says is sent before the host listens).
        self.deadline = time.monotonic() + self.timeout
        self._relay = Relay(self._serve, "twin-renode-relay", self.timeout)
        self.port = self._relay.port
        return self

    def _serve(self, host: socket.socket) -> None:
        try:
            renode = socket.create_connection(("127.0.0.1", self.terminal_port), timeout=10)
        except OSError as exc:
            self.notes.append(f"could not connect to Renode's console terminal on port {self.terminal_port}: {exc}")
            host.close()
            self.proc.end(1)
            return
        try:
            self.execute("start")
        except RenodeError as exc:
            self.notes.append(str(exc))
            host.close()
            renode.close()
            self.proc.end(1)
            return
        _pump(host, renode)

    def alive(self) -> bool:
        return self._monitor is not None and self.proc.poll() is None

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def wait_exit(self, timeout: float = 10.0) -> int:
        """The firmware has said BYE (its exit resets or spins: Renode does not end by itself): pause
        the emulation, take the last counter snapshot, and end it."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        try:
            self.execute("pause")
            if self.counting:
                self._snapshots = self._read_snapshots(final=True)
        except RenodeError as exc:
            self.notes.append(str(exc))
            self.kill()
            raise
        self._clear()
        self.proc.end(0)
        return 0

    def kill(self) -> None:
        if self._monitor is not None and self.proc.poll() is None:
            try:
                self.execute("pause")
            except Exception as exc:     # noqa: BLE001 - ending it regardless
                self.notes.append(f"pause failed: {exc}")
            self._clear()
            self.proc.end(-9)

    def _clear(self) -> None:
        if self._monitor is not None:
            try:
                self.execute("emulation Clear")
            except Exception as exc:     # noqa: BLE001
                self.notes.append(f"emulation Clear failed: {exc}")
        if self._relay is not None:
            self._relay.close()

    def stderr(self) -> str:
        return "\n".join(self.notes).strip()

    def __enter__(self) -> RenodeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
        if self._relay is not None:
            self._relay.join(5)
        if self._tmp is not None:
            if self.counting and self._snapshots is None and self.counts_file and self.counts_file.exists():
                try:
                    self._snapshots = read_counts(self.counts_file)[1]
                except RenodeError:
                    pass
            self._tmp.cleanup()
            self._tmp = None

    # -- counts

    def _read_snapshots(self, final: bool) -> list[list[int]]:
        assert self.counts_file is not None
        names, snaps = read_counts(self.counts_file)
        patterns = opcode_patterns(self.platform.arch)
        if names != [p.name for p in patterns]:
            raise RenodeError(f"{self.counts_file}: its counters are not this backend's patterns")
        if final:
            cpu = renode_platform(self.platform).cpu
            snaps.append([self._number(f"{cpu} ExecutedInstructions"),
                          *(self._number(f'{cpu} GetOpcodeCounter "{p.name}"') for p in patterns)])
        return snaps

    def segments(self) -> list[RenodeSegment]:
        """One record per segment (boot | phase | io | … | io), once the run has ended."""
        if not self.counting:
            raise RenodeError("this Renode run did not count opcodes (counting=False)")
        if self._snapshots is None:
            raise RenodeError("no counts: the Renode run did not end normally (wait_exit) — "
                              f"{self.stderr() or 'no detail'}")
        segs = segments_from_snapshots(opcode_patterns(self.platform.arch), self._snapshots)
        matched = sum(s.total - s.undecoded for s in segs)
        executed = sum(s.total for s in segs)
        if executed and not matched:
            why = ("Renode executed instructions but no opcode counter counted any: this Renode build does not "
                   "count opcodes on this core; the class counts are all 'other'")
            self.notes.append(why)
            segs = [replace(seg, unavailable={**seg.unavailable, "by_class": why}) for seg in segs]
        return segs


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    t = threading.Thread(target=copy, args=(b, a), daemon=True)
    t.start()
    copy(a, b)
    t.join(timeout=5)
    a.close()
    b.close()


def available() -> str | None:
    """None when pyrenode3 and Renode load; else the one line that says how to get them."""
    if os.environ.get("TWIN_NO_RENODE"):
        return RENODE_HINT
    try:
        _pyrenode3()
    except RenodeError as exc:
        return str(exc)
    return None
